"""Where Ray's own log lines go, so the console shows ovs's progress lines, warnings and errors.

Ray's internal chatter stays in Ray's log files under the session directory
(``/tmp/ray/session_latest/logs/`` on a local Ray): Ray Data's progress blocks and execution
plans in ``ray-data.log``, Ray Train's controller and worker lines in ``ray-train-*.log``, the
Python ``ray`` loggers of every worker in ``ray-python-<pid>.log`` (e.g. the Train
``PlacementGroupCleaner``'s "Failed to query Ray Train Controller actor state", which it logs
every second while the state API has no dashboard to ask), and the driver's own ``ray`` logger
(token-auth notice, "Started a local Ray instance") in ``<workdir>/ray-driver.log``. Errors
still reach the console, and so does everything ovs prints or logs in its workers
(``log_to_driver`` stays on).

Only Ray's knobs are used: Ray Data's logging config file (``RAY_DATA_LOGGING_CONFIG``), Ray
Train's ``RunConfig(logging_config=...)`` level, and a ``worker_process_setup_hook`` that sets
the level of the ``ray`` logger's console handler in each worker. Nothing here runs at import.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
CONSOLE_LEVEL = logging.ERROR  # Ray's own lines at or above this still reach the console
TRAIN_CONSOLE_LEVEL = "ERROR"  # Ray Train console level: its warnings under load are chatter too
WORKER_HOOK = "pipelines.ray_logs.quiet_worker"
DRIVER_LOG = "ray-driver.log"  # under the workdir: the driver's own ``ray`` logger records


def driver_env() -> dict[str, str]:
    """Environment variables the driver sets before it imports Ray Data (and that local Ray
    workers inherit): Ray Data's logging config with the console handler at WARNING."""
    return {"RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING)}


def local_worker_env() -> dict[str, str]:
    """Extra environment of a local (single-machine) Ray's workers: no Ray Train preemption
    watcher. It only reports node drains, which a local Ray never has, and costs each training
    job one more actor start and an error-level core-worker line on the console about its
    constructor arguments. A cluster (``ray.address`` / ``RAY_ADDRESS``) keeps it."""
    return {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def route_ray_logger(log_file: Path | None, level: int = CONSOLE_LEVEL) -> None:
    """Ray's ``ray`` logger in this process: console handlers only at ``level`` and above,
    every record (INFO and up) appended to ``log_file`` when given."""
    logger = logging.getLogger("ray")
    for h in logger.handlers:
        if not isinstance(h, logging.FileHandler):
            h.setLevel(level)
    if log_file is not None and not any(
        isinstance(h, logging.FileHandler) and h.baseFilename == str(log_file)
        for h in logger.handlers
    ):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
        fh.setLevel(logging.INFO)
        logger.addHandler(fh)


def session_log_dir() -> Path | None:
    """The log directory of the Ray session this process is connected to (None if none)."""
    try:
        import ray

        node = ray._private.worker.global_worker.node  # no public accessor for the log dir
        return Path(node.get_logs_dir_path())
    except Exception:  # noqa: BLE001 - not connected, or a Ray without this attribute
        return None


def pin_ray_address() -> None:
    """Point this worker's ``RAY_ADDRESS`` at the Ray it runs in, unless already set.

    Ray Train's ``PlacementGroupCleaner`` asks the state API about the controller without an
    address; on a box where a second Ray runs (another user's pipeline, a test) that lookup
    raises "Found multiple active Ray instances" every second, a traceback on the console."""
    if os.environ.get("RAY_ADDRESS"):
        return
    try:
        import ray

        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - not connected: nothing to pin
        return


def quiet_train_reports() -> None:
    """Ray Train (v2) logs "Reporting training result N: TrainingReport(...)" at INFO on every
    rank for every ``ray.train.report``, under a logger named by its source file's path (outside
    the ``ray`` hierarchy, so :func:`route_ray_logger` does not reach it): two console lines per
    checkpoint. Called in each training worker; warnings and errors still show."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: its lines stay as they are
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def quiet_worker() -> None:
    """``worker_process_setup_hook`` of local Ray workers: the ``ray`` logger's records go to
    ``ray-python-<pid>.log`` in the session's log directory; only errors reach the worker's
    stderr (which ``log_to_driver`` forwards to the console). The worker's ``RAY_ADDRESS`` is
    pinned to its own Ray (:func:`pin_ray_address`)."""
    pin_ray_address()
    log_dir = session_log_dir()
    route_ray_logger(log_dir / f"ray-python-{os.getpid()}.log" if log_dir else None)
