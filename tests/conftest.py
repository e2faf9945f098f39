import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 shared cores: 1 thread per process is fastest
# Ray Train (v2) per job: the controller polls its workers every 2 s by default (a 2-step test
# job waits up to that long for each report and for its end), and starts a preemption-watcher
# actor (one more process start on 2 cores) that only logs node drains, which no test does.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# On a loaded box (CI runners are shared) the raylet's wait for its dashboard/runtime-env agents
# (~15 s) can run out before they start, and the raylet aborts: give them 90 s.
os.environ.setdefault("RAY_agent_register_timeout_ms", "90000")


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=300 * 2**20,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
            log_to_driver=False,
        )
    yield ray


@pytest.fixture(scope="session", autouse=True)
def _upstream_cache():
    """Remove the session's shared upstream outputs (``tests/upstream.py``) at the end."""
    yield
    import sys

    shared = sys.modules.get("tests.upstream")
    if shared is not None:
        shared.cleanup()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the test box has 2 cores shared by several jobs; two OpenMP threads fighting for them run
    ~10x slower than one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
