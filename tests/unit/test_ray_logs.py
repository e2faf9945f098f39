"""Where Ray's own log lines go (pipelines.ray_logs) and what stage runs are called in MLflow."""

from __future__ import annotations

import importlib
import logging

import yaml

from pipelines import ray_logs
from pipelines.tracking import stage_run_name


def test_ray_data_config_is_rays_default_with_a_warning_console(monkeypatch):
    """Our file differs from Ray Data's built-in config only in the console level, and Ray Data
    builds its loggers from it: progress blocks (INFO) reach ray-data.log, not the console."""
    from ray.data._internal import logging as data_logging

    ours = yaml.safe_load(ray_logs.RAY_DATA_LOGGING.read_text())
    default = data_logging.DEFAULT_CONFIG
    assert ours["loggers"] == default["loggers"]
    for name, handler in ours["handlers"].items():
        expected = dict(default["handlers"][name])
        if name == "console":
            assert handler.pop("level") == "WARNING" and expected.pop("level") == "INFO"
        assert handler == expected
    monkeypatch.setenv(*next(iter(ray_logs.driver_env().items())))
    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    data_logging.configure_logging()
    try:
        levels = {h.name: h.level for h in logging.getLogger("ray.data").handlers}
        assert levels["console"] == logging.WARNING and levels["file"] == logging.NOTSET
    finally:
        monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG")
        data_logging.configure_logging()  # back to Ray's default for later tests


def test_route_ray_logger_keeps_errors_on_console_and_everything_in_the_file(tmp_path, capsys):
    logger = logging.getLogger("ray")
    console = logging.StreamHandler()  # stands where ray/__init__ puts its stderr handler
    saved = logger.handlers[:], logger.level
    logger.handlers[:] = [console]
    logger.setLevel(logging.INFO)
    try:
        log_file = tmp_path / "logs" / ray_logs.DRIVER_LOG
        ray_logs.route_ray_logger(log_file)
        ray_logs.route_ray_logger(log_file)  # idempotent: one file handler
        logger.info("started a local Ray instance")
        logger.warning("token authentication is enabled")
        logger.error("worker died")
        err = capsys.readouterr().err
        assert "worker died" in err and "token" not in err and "started" not in err
        assert sum(isinstance(h, logging.FileHandler) for h in logger.handlers) == 1
        for h in logger.handlers:
            h.flush()
        text = log_file.read_text()
        assert all(m in text for m in ("started a local", "token auth", "worker died"))
    finally:
        for h in logger.handlers:
            if isinstance(h, logging.FileHandler):
                h.close()
        logger.handlers[:], _ = saved
        logger.setLevel(saved[1])
    module, name = ray_logs.WORKER_HOOK.rsplit(".", 1)  # what Ray imports in each worker
    assert getattr(importlib.import_module(module), name) is ray_logs.quiet_worker


def test_stage_run_names_say_what_ran():
    class Train:
        method = "sseg"

    assert stage_run_name("train", Train()) == "train (sseg)"
    assert stage_run_name("train", Train(), "skipped") == "train (sseg, skipped)"
    assert stage_run_name("evaluate", object()) == "evaluate"
    assert stage_run_name("pairs", None, "skipped") == "pairs (skipped)"


def test_pin_ray_address_points_a_worker_at_its_own_ray(ray_local, monkeypatch):
    """A worker's state-API lookups (Ray Train's PlacementGroupCleaner) must not depend on how
    many other Rays run on the machine: the setup hook pins ``RAY_ADDRESS`` to the worker's own."""
    import ray

    @ray.remote
    def pinned() -> tuple[str | None, str | None]:
        import os

        before = os.environ.pop("RAY_ADDRESS", None)
        ray_logs.pin_ray_address()
        return before, os.environ.get("RAY_ADDRESS")

    _, after = ray.get(pinned.remote())
    assert after == ray.get_runtime_context().gcs_address
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a user's choice is kept
    ray_logs.pin_ray_address()
    assert ray_logs.os.environ["RAY_ADDRESS"] == "10.0.0.1:6379"
    assert ray_logs.local_worker_env() == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def test_quiet_train_reports_reaches_ray_trains_per_report_logger():
    """The logger Ray Train's per-report INFO line goes through is the one quieted."""
    from ray.train.v2._internal.execution import context

    logger = logging.getLogger(context.__file__)
    saved = logger.level
    try:
        ray_logs.quiet_train_reports()
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
        assert context.logger is logger  # the module logs through this very logger
    finally:
        logger.setLevel(saved)
