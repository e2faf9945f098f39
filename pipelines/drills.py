"""Failure drills: test-only switches that are never part of a config a user writes, a stage
hash or MLflow params.

``with fail_worker_at("train", 3): run_stage(...)`` arms the next training loops of that section
(``LoopConfig.SECTION``: ``train``, ``self_train``) started from this driver process: their last
rank raises once at step 3 (once per output directory: a ``.injected_failure`` marker there
remembers it fired), so a test sees Ray Train restart the worker group from its last checkpoint
(``max_failures`` > 0) or the stage fail and a rerun resume. :func:`pipelines.loop.run_loop`
reads the armed step when it builds the job it ships to the workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_ARMED: dict[str, int] = {}


@contextmanager
def fail_worker_at(section: str, step: int) -> Iterator[None]:
    """Arm the failure drill of ``section``'s loops at ``step`` (>= 1) inside the block."""
    if step < 1:
        raise ValueError(f"a failure drill needs a step >= 1, got {step}")
    _ARMED[section] = step
    try:
        yield
    finally:
        _ARMED.pop(section, None)


def armed_step(section: str) -> int:
    """The step the drill of ``section`` fails at, or -1 when none is armed."""
    return _ARMED.get(section, -1)
