"""The stage table and the root config assembled from it: the one place the stage list lives.

Adding a stage is one line in ``STAGES`` (its ``Stage`` names its config section type); the
root config then has a section of that type named like the stage, and ``pipeline.stages``
runs it by default. The root type is built here, not in ``ovs/``: library code takes sections,
and :mod:`ovs.stage` only needs the keys of :class:`ovs.config.Config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovs.config import Config, check_choice, load
from ovs.stage import Stage
from pipelines import (
    download,
    entities,
    evaluate,
    pairs,
    pseudo_masks,
    self_train,
    train,
    world,
)

REUSE_POLICIES = ("warn", "refuse", "redo")  # pipeline.reuse_other_code
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        world.STAGE,
        download.STAGE,
        entities.STAGE,
        pseudo_masks.STAGE,
        train.STAGE,
        evaluate.STAGE,
        self_train.STAGE,
        pairs.STAGE,
    )
}


@dataclass
class PipelineConfig:
    """Which stages ``pipelines/full.py`` runs (in dependency order); default: every stage of
    ``STAGES``, in table order. A config names a subset only to run less (``conf/cc12m.yaml``)."""

    stages: list[str] = field(default_factory=lambda: list(STAGES))
    # An existing stage output whose manifest records other code than the running one
    # (ovs.provenance.differs: another commit or source hash): "warn" reuses it and logs the
    # difference (and tags the skipped run ovs.source_code_differs); "refuse" stops before
    # anything runs, naming the output and both versions; "redo" deletes it and recomputes.
    # "warn" by default: the code hash moves with every edit of ovs/, pipelines/ or conf/
    # (comments included) while the stage hash already covers every setting of the result, so
    # recomputing (or refusing) by default would redo hours of download and training after a
    # docstring fix; --force or "redo" recompute when the code change matters.
    reuse_other_code: str = "warn"

    def validate(self) -> None:
        check_choice("pipeline.reuse_other_code", self.reuse_other_code, REUSE_POLICIES)


@dataclass
class RayConfig:
    """How entry points reach Ray. Empty ``address``: join ``RAY_ADDRESS`` if set (``ray job
    submit`` sets it), else start a local Ray for this process."""

    address: str = ""
    num_cpus: int | None = None  # local Ray only; None = all cores
    object_store_memory_mb: int | None = 1024  # local Ray only
    # The joined cluster grows on demand (Ray autoscaler): requests beyond its current CPUs /
    # GPUs are queued for new nodes instead of refused before the stages start.
    autoscaling: bool = False


def _section(name: str, tp: type) -> tuple[str, type, Any]:
    return name, tp, field(default_factory=tp)


def _experiment_config() -> type[Config]:
    """The root type: :class:`ovs.config.Config`'s keys, ``pipeline``, ``ray``, then one
    section per stage that has one, in table order."""
    sections = [_section("pipeline", PipelineConfig), _section("ray", RayConfig)]
    sections += [_section(n, s.section) for n, s in STAGES.items() if s.section is not None]
    return dataclasses.make_dataclass(
        "ExperimentConfig",
        sections,
        bases=(Config,),
        namespace={
            "__module__": __name__,
            "__doc__": "The whole experiment: the root keys and one section per stage.",
        },
    )


# Typed ``Any`` on purpose: the class is assembled at runtime from ``STAGES``, so a static
# checker cannot see its sections. Stage code annotates the root as ``ExperimentConfig``
# (imported under ``TYPE_CHECKING``) instead of :class:`ovs.config.Config`, whose fields are
# only the root keys; a second, static class listing every section would duplicate the table.
ExperimentConfig: Any = _experiment_config()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """The experiment config of ``path`` (None: the defaults) with ``key.sub=value`` overrides,
    every section validated; :class:`ovs.config.ConfigError` names the key and file."""
    return load(ExperimentConfig, path, overrides)
