"""The pipeline driver shared by every entry point in ``pipelines/``.

``main()`` parses ``[--config FILE] [--force] [key.sub=value ...]``, validates the config
before anything is written, checks that the workdir is writable and MLflow reachable, joins or
starts Ray, opens one MLflow parent run and runs the requested stages in dependency order, each
in a nested run. Stages whose manifest exists are skipped (recorded as such, linked to the run
that made them) unless ``--force``.

Exit codes: 0 done; 2 the config or a precondition is wrong (nothing was run, one line on
stderr: unknown keys, wrong types, a URL list, benchmark root or checkpoint file that is
missing or unreadable, a workdir that cannot be written, MLflow or ``ray.address`` out of
reach, more CPUs/GPUs than the Ray cluster has; or, found by a running stage, whose run ends
FAILED: a damaged shard, a training batch that does not fit in memory); 3 a stage stopped on purpose before finishing (:class:`ovs.stage.StageIncomplete`,
e.g. ``train.time_limit_s``): its directory stays a resumable partial output without
``_SUCCESS.json``, later stages did not run, and rerunning the same command continues it.
Its MLflow run ends ``KILLED`` with tag ``ovs.status=incomplete`` and the stage's metrics so
far (e.g. ``steps_done``); the parent run likewise, with ``ovs.incomplete_stage``.

Every run (parent and stages) is tagged with the code version (``ovs.git_commit``,
``ovs.git_dirty``, ``ovs.code_hash``; :mod:`ovs.provenance`), which every manifest also holds
under ``"code"``. An output made by other code is reused with a warning naming both
versions, refused before anything runs (exit 2) or deleted and recomputed, as
``pipeline.reuse_other_code`` says (:func:`other_code`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovs import provenance
from ovs.config import Config, ConfigError, flatten, to_dict, to_yaml
from ovs.data import url_lists
from ovs.data.shards import ShardError
from ovs.eval.config import BenchmarkMissing, check_benchmarks
from ovs.stage import (
    Progress,
    Stage,
    StageContext,
    StageIncomplete,
    order,
    read_manifest,
    resolve,
    retract_manifest,
    write_manifest,
)
from pipelines import ray_logs
from pipelines.tracking import (
    EXPERIMENT_KIND,
    TAG_INCOMPLETE_STAGE,
    TAG_MACHINE,
    TAG_OUTPUT,
    TAG_SOURCE_RUN,
    TAG_STAGE,
    TAG_STATUS,
    MlflowTracker,
    code_tags,
    default_tracking_uri,
    machine,
    stage_run_name,
)

if TYPE_CHECKING:
    from pipelines.graph import ExperimentConfig  # the root type, assembled at runtime

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "conf" / "default.yaml"
EXIT_CONFIG = 2  # bad config or failed precondition; nothing ran
EXIT_INCOMPLETE = 3  # a stage stopped early on purpose; rerun to continue
log = logging.getLogger("ovs")


class PipelineError(RuntimeError):
    """A precondition failed before any stage work started (printed as one line)."""


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)"
    )
    p.add_argument(
        "--force", action="store_true", help="recompute stages even if their output exists"
    )
    p.add_argument(
        "overrides", nargs="*", help="key.sub=value config overrides, e.g. train.steps=10"
    )
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- preflight


def check_workdir(cfg: Config) -> Path:
    """The absolute workdir, checked writable without creating it (the driver creates it
    once every check has passed): an existing one by writing and removing a probe file, a
    new one by its nearest existing parent."""
    workdir = cfg.workdir_path.resolve()
    parent = workdir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a directory")
        if parent == workdir:
            probe = workdir / f".write-probe-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        elif not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot create it in {parent}")
    except OSError as e:
        raise PipelineError(f"workdir {workdir} is not writable: {e.strerror or e}") from None
    return workdir


def connect_mlflow(experiment: str):
    """Return ``(client, experiment_id, uri)``; one clear error if the server is unreachable."""
    from mlflow.tracking import MlflowClient

    uri = default_tracking_uri(REPO_ROOT)
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        if uri.startswith("sqlite:///"):
            db_dir = Path(uri[len("sqlite:///") :]).parent
            if not db_dir.is_dir() or not os.access(db_dir, os.W_OK):
                raise PipelineError(
                    f"MLflow tracking URI {uri}: directory {db_dir} is not writable"
                )
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            exp_id = exp.experiment_id
        else:  # keep artifacts next to a sqlite DB instead of in whatever the cwd is
            artifacts = (
                (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
                if uri.startswith("sqlite:///")
                else None
            )
            exp_id = client.create_experiment(experiment, artifact_location=artifacts)
        for key, value in EXPERIMENT_KIND.items():  # the UI opens on the runs table
            client.set_experiment_tag(exp_id, key, value)
    except PipelineError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(f"MLflow tracking server {uri} is unreachable: {first}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return client, exp_id, uri


def init_ray(cfg: ExperimentConfig) -> None:
    """Join ``cfg.ray.address`` / ``$RAY_ADDRESS`` or start a local Ray, with Ray's own log
    lines sent to its log files (:mod:`pipelines.ray_logs`); ovs's lines stay on the console."""
    os.environ.update(ray_logs.driver_env())  # read when Ray Data is first imported
    # The driver's arrow allocations on the system allocator: with pyarrow's default mimalloc
    # pool the download driver's peak grew with the URL list (img2dataset writes each list
    # file's shards from 32 fresh threads): 25 -> 30 MB from 5k to 25k URLs, 15 -> 14 MB with
    # this pool (python -m tools.bench memory's setting). Its arrow work is light; Ray workers
    # keep the default pool.
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    import ray  # sets up the ``ray`` logger's console handler, which this then quiets

    ray_logs.route_ray_logger(cfg.workdir_path.resolve() / ray_logs.DRIVER_LOG)

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    store = cfg.ray.object_store_memory_mb
    ray.init(
        num_cpus=cfg.ray.num_cpus,
        object_store_memory=store * 2**20 if store else None,
        include_dashboard=False,
        runtime_env={
            "env_vars": {
                "PYTHONPATH": pythonpath,
                **ray_logs.driver_env(),
                **ray_logs.local_worker_env(),
            },
            "worker_process_setup_hook": ray_logs.WORKER_HOOK,
        },
        log_to_driver=True,
    )
    log.info(
        "started a local Ray: %s (its logs: %s)",
        ray.cluster_resources(),
        ray_logs.session_log_dir(),
    )


# ----------------------------------------------------------------------------- running


def _skip(
    client,
    exp_id,
    parent_id,
    stage: Stage,
    cfg: Config,
    out_dir: Path,
    manifest: dict,
    code: dict,
) -> None:
    """Record a reused output: a finished ``(skipped)`` run with the source run's metrics."""
    other = provenance.differs(manifest.get("code"), code)
    run = client.create_run(
        exp_id,
        run_name=stage_run_name(stage.name, getattr(cfg, stage.name, None), "skipped"),
        tags={
            "mlflow.parentRunId": parent_id,
            TAG_STAGE: stage.name,
            TAG_STATUS: "skipped",
            TAG_SOURCE_RUN: manifest.get("mlflow_run_id", ""),
            TAG_OUTPUT: str(out_dir),
            **code_tags(code),
            **({"ovs.source_code_differs": other} if other else {}),
            "mlflow.note.content": (
                f"Skipped: output {out_dir} already exists. Made by run "
                f"[{manifest.get('mlflow_run_id', '?')}](#/experiments/{manifest.get('mlflow_experiment_id', exp_id)}"
                f"/runs/{manifest.get('mlflow_run_id', '')})."
            ),
        },
    )
    MlflowTracker(client, run.info.run_id).log_metrics(manifest.get("metrics", {}))
    client.set_terminated(run.info.run_id, "FINISHED")


def other_code(name: str, out_dir: Path, manifest: dict, policy: str) -> bool:
    """Whether the finished output ``out_dir`` of stage ``name`` may be reused, given that its
    ``manifest`` may record other code than the running one, under ``policy``
    (``pipeline.reuse_other_code``): made by this code, or ``warn`` (logs the difference) ->
    True; ``redo`` -> False (the caller deletes and recomputes it); ``refuse`` ->
    :class:`PipelineError` naming the output, both versions and the ways on."""
    other = provenance.differs(manifest.get("code"), provenance.current())
    if not other:
        return True
    if policy == "refuse":
        raise PipelineError(
            f"stage {name!r}: output {out_dir} was made by other code: {other}; "
            "pipeline.reuse_other_code=refuse: rerun with --force or "
            "pipeline.reuse_other_code=redo to recompute it, or =warn to reuse it"
        )
    if policy == "redo":
        log.warning("[%s] redoing %s, made by other code: %s", name, out_dir, other)
        return False
    log.warning(
        "[%s] reusing %s, made by other code: %s; --force or pipeline.reuse_other_code=redo "
        "recomputes it",
        name,
        out_dir,
        other,
    )
    return True


def check_reuse(
    stages: dict[str, Stage], cfg: ExperimentConfig, names: list[str], force: bool
) -> None:
    """With ``pipeline.reuse_other_code=refuse``: refuse, before anything is written, a finished
    output of a stage in ``names`` (of table ``stages``) which other code made
    (:func:`other_code`)."""
    if force or cfg.pipeline.reuse_other_code != "refuse":
        return
    for name in names:
        out_dir = resolve(stages, name, cfg).out_dir
        manifest = read_manifest(out_dir)
        if manifest is not None:
            other_code(name, out_dir, manifest, "refuse")


def _incomplete(tracker: MlflowTracker, e: StageIncomplete, seconds: float) -> None:
    """Record a stage that stopped early on purpose: its metrics so far, status incomplete,
    the message; the run ends KILLED (not FINISHED: its output is not complete)."""
    tracker.log_metrics({**e.metrics, "stage_seconds": seconds})
    tracker.set_tags({TAG_STATUS: "incomplete", "mlflow.note.content": str(e)})
    tracker.log_text(f"{e}\n", "incomplete.txt")
    tracker.client.set_terminated(tracker.run_id, "KILLED")


def run_stage(
    stages: dict[str, Stage],
    name: str,
    cfg: Config,
    force: bool,
    client,
    exp_id: str,
    parent_id: str,
    config_yaml: str,
) -> dict:
    """Run (or skip) one stage; returns its manifest.

    Raises :class:`StageIncomplete` (after recording it, and without a manifest) when the
    stage stopped early on purpose; any other error marks the run FAILED and propagates.
    """
    res = resolve(stages, name, cfg)
    stage, out_dir = res.stage, res.out_dir
    code = provenance.current()
    manifest = read_manifest(out_dir)
    if manifest is not None and not force:
        reason = stage.stale(cfg, manifest) if stage.stale is not None else None
        if not reason:
            policy = getattr(getattr(cfg, "pipeline", None), "reuse_other_code", "warn")
            if other_code(name, out_dir, manifest, policy):
                log.info("[%s] skipped: %s already complete", name, out_dir)
                _skip(client, exp_id, parent_id, stage, cfg, out_dir, manifest, code)
                return manifest
            force = True  # redo: per-item outputs of the other code must not be resumed
        else:
            log.info("[%s] rerunning in %s: %s", name, out_dir, reason)
            retract_manifest(out_dir)
    inputs, manifests = {}, {}
    for inp, h in res.inputs.items():
        in_dir = cfg.workdir_path / inp / h
        m = read_manifest(in_dir)
        if m is None:
            raise PipelineError(
                f"stage {name!r} needs the output of stage {inp!r} ({in_dir}), which does not exist "
                f"for this config: run pipelines/{inp}.py (or pipelines/full.py) first"
            )
        inputs[inp], manifests[inp] = in_dir, m
    if force and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = client.create_run(
        exp_id,
        run_name=stage_run_name(name, getattr(cfg, name, None)),
        tags={
            "mlflow.parentRunId": parent_id,
            TAG_STAGE: name,
            TAG_STATUS: "running",
            TAG_OUTPUT: str(out_dir),
            **code_tags(code),
        },
    )
    tracker = MlflowTracker(client, run.info.run_id)
    section = getattr(cfg, name, None)
    for sec in (name, *stage.sections):
        value = getattr(cfg, sec, None)
        if value is not None and hasattr(value, "__dataclass_fields__"):
            tracker.log_params(flatten(to_dict(value), f"{sec}."))
    tracker.log_text(config_yaml, "config.yaml")
    ctx = StageContext(name, cfg, out_dir, inputs, manifests, tracker, Progress(name))
    log.info("[%s] running -> %s", name, out_dir)
    started = time.time()
    try:
        result = stage.run(ctx) or {}
    except StageIncomplete as e:
        _incomplete(tracker, e, time.time() - started)
        log.warning("[%s] incomplete, output kept for resuming: %s", name, out_dir)
        raise
    except BaseException:
        tracker.set_tags({TAG_STATUS: "failed"})
        tracker.log_text(traceback.format_exc(), "error.txt")
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    finished = time.time()
    manifest = {
        "stage": name,
        "hash": res.hash,
        "inputs": res.inputs,
        "counts": result.get("counts", {}),
        "metrics": result.get("metrics", {}),
        "timings": {"started": started, "finished": finished, "seconds": finished - started},
        "config": to_dict(section) if hasattr(section, "__dataclass_fields__") else None,
        "code": dict(code),
        "mlflow_run_id": run.info.run_id,
        "mlflow_experiment_id": exp_id,
    }
    tracker.log_metrics({**manifest["metrics"], "stage_seconds": finished - started})
    tracker.log_metrics({f"count.{k}": v for k, v in manifest["counts"].items()})
    write_manifest(out_dir, manifest)
    tracker.log_artifact(out_dir / "_SUCCESS.json")
    tracker.set_tags({TAG_STATUS: "ran"})
    client.set_terminated(run.info.run_id, "FINISHED")
    log.info("[%s] done in %.1fs: %s", name, finished - started, manifest["counts"])
    return manifest


def log_report(client, pid: str, workdir: Path) -> Path | None:
    """Write the run's HTML report (:mod:`tools.report`) to ``<workdir>/report.html`` and log it
    to the parent run as ``report.html``; a report that cannot be built is a warning only."""
    from tools.report import write_report

    try:
        path = write_report(client, pid, workdir / "report.html", status="FINISHED")
        client.log_artifact(pid, str(path))
    except Exception as e:  # noqa: BLE001 - the stages' outputs are done; say why, go on
        log.warning("no report.html: %s: %s", type(e).__name__, e)
        return None
    return path


def _walk(obj: Any, key: str) -> Iterator[tuple[str, Any, Any]]:
    """``(key, dataclass, field value)`` for every field below ``obj`` (lists included)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        sub = f"{key}.{f.name}"
        yield sub, obj, value
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                yield from _walk(item, f"{sub}[{i}]")
        else:
            yield from _walk(value, sub)


def check_checkpoints(cfg: ExperimentConfig, names: list[str]) -> None:
    """Every ``checkpoint`` (a local weight or checkpoint file) a stage that will run names
    exists and is readable."""
    for name in names:
        for key, _, value in _walk(getattr(cfg, name, None), name):
            if key.rsplit(".", 1)[-1] != "checkpoint" or not value:
                continue
            path = Path(str(value)).expanduser()
            if not path.is_file():
                what = "is a directory, not a file" if path.is_dir() else "no such file"
                raise PipelineError(f"{key}: {path}: {what}")
            if not os.access(path, os.R_OK):
                raise PipelineError(f"{key}: {path}: not readable")


def check_ray_address(cfg: ExperimentConfig) -> None:
    """A configured ``ray.address`` (``host:port`` or ``ray://host:port``) accepts a TCP
    connection within 3 s; ``auto`` / ``local`` and ``RAY_ADDRESS`` are left to ``ray.init``."""
    address = cfg.ray.address
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise PipelineError(f"ray.address: {address!r} is not host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        raise PipelineError(
            f"ray.address: cannot reach the Ray cluster at {address}: {e.strerror or e}"
        ) from None


def requested_resources(cfg: ExperimentConfig, names: list[str]) -> list[tuple[str, float, float]]:
    """``(key, CPUs, GPUs)`` each stage's largest request must get at once: a Ray Data actor
    pool (``num_actors`` x ``num_cpus`` / ``num_gpus``) or a Ray Train job (``num_workers`` x
    ``cpus_per_worker``, one GPU each with ``use_gpu``)."""
    out = []
    for name in names:
        section = getattr(cfg, name, None)
        nodes: list[tuple[str, Any]] = [(name, section)] + [
            (k, v) for k, _, v in _walk(section, name) if dataclasses.is_dataclass(v)
        ]
        for key, obj in nodes:
            if obj is None:  # a stage without a section
                continue
            if hasattr(obj, "num_actors") and hasattr(obj, "num_cpus") and obj.num_actors > 0:
                out.append(
                    (
                        f"{key}.num_actors",
                        obj.num_actors * float(obj.num_cpus),
                        obj.num_actors * float(getattr(obj, "num_gpus", 0.0)),
                    )
                )
            if hasattr(obj, "num_workers") and hasattr(obj, "use_gpu"):
                n = obj.num_workers
                out.append((f"{key}.num_workers", n * float(obj.cpus_per_worker), n * obj.use_gpu))
    return out


def check_resources(cfg: ExperimentConfig, names: list[str], available: dict) -> None:
    """Refuse requests the Ray cluster can never grant (they would wait forever), unless
    ``ray.autoscaling`` says the cluster grows on demand."""
    if cfg.ray.autoscaling:
        return
    cpus, gpus = float(available.get("CPU", 0)), float(available.get("GPU", 0))
    for key, need_cpu, need_gpu in requested_resources(cfg, names):
        if need_gpu > gpus:
            raise PipelineError(
                f"{key}: asks for {need_gpu:g} GPUs at once, the Ray cluster has {gpus:g}; "
                "lower it, set the stage's GPU request to 0, or join a larger cluster "
                "(ray.autoscaling=true if it grows on demand)"
            )
        if need_cpu > cpus:
            raise PipelineError(
                f"{key}: asks for {need_cpu:g} CPUs at once, the Ray cluster has {cpus:g}; "
                "lower it or join a larger cluster (ray.autoscaling=true if it grows on demand)"
            )


def preflight(cfg: ExperimentConfig, names: list[str]) -> None:
    """Checks of the config against the world, before anything is written: every configured
    benchmark of an ``evaluate`` that will run has its data (unless ``optional: true``), the
    URL lists of a ``download`` that will run are readable with the configured columns
    (:func:`ovs.data.url_lists.check`; lists under ``world.export_dir`` are made by a
    ``world`` stage that runs first in the same invocation), every ``checkpoint`` file exists and ``ray.address`` is
    reachable."""
    if "evaluate" in names:
        check_benchmarks(cfg.evaluate, world_stage="world" in cfg.pipeline.stages)
    if "download" in names and cfg.download.url_list:
        # lists the world stage of this invocation exports do not exist yet
        produced = (cfg.world.export_dir,) if "world" in names and cfg.world.export_dir else ()
        url_lists.check(cfg.download, produced)
    check_checkpoints(cfg, names)
    check_ray_address(cfg)


def main(only: str | None = None, argv: list[str] | None = None) -> int:
    """Entry point: ``only`` = a single stage name, or None for ``cfg.pipeline.stages``."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stdout,
        force=True,
    )
    from pipelines.graph import STAGES, load_config  # the stage table and its root config

    args = parse_args(argv, f"Run the ovs {'stage ' + only if only else 'pipeline'}.")
    try:
        cfg = load_config(args.config, args.overrides)
        names = [only] if only else order(STAGES, list(cfg.pipeline.stages), cfg)
        for n in names:
            resolve(STAGES, n, cfg)  # validates stage names before anything is written
        preflight(cfg, names)
        check_reuse(STAGES, cfg, names, args.force)
        workdir = check_workdir(cfg)
        client, exp_id, uri = connect_mlflow(cfg.experiment)
    except (ConfigError, PipelineError, BenchmarkMissing, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        init_ray(cfg)
        import ray

        if ray.is_initialized():  # init_ray joined or started a cluster: check against it
            check_resources(cfg, names, ray.cluster_resources())
    except (PipelineError, ConnectionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        return EXIT_CONFIG
    workdir.mkdir(parents=True, exist_ok=True)
    config_yaml = to_yaml(cfg)
    parent = client.create_run(
        exp_id,
        run_name=f"{only or 'pipeline'}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            "ovs.kind": "pipeline",
            "ovs.stages": ",".join(names),
            "mlflow.source.name": only or "full",
            TAG_MACHINE: machine(),
            **code_tags(provenance.current()),
        },
    )
    pid = parent.info.run_id
    ptracker = MlflowTracker(client, pid)
    ptracker.log_params(flatten(to_dict(cfg)))
    ptracker.log_text(config_yaml, "config.yaml")
    started = time.time()
    n = ""
    try:
        for n in names:
            m = run_stage(STAGES, n, cfg, args.force, client, exp_id, pid, config_yaml)
            ptracker.log_metrics({f"{n}.{k}": v for k, v in m.get("metrics", {}).items()})
    except StageIncomplete as e:
        ptracker.log_metrics({f"{n}.{k}": v for k, v in e.metrics.items()})
        ptracker.set_tags({TAG_STATUS: "incomplete", TAG_INCOMPLETE_STAGE: n})
        client.set_terminated(pid, "KILLED")
        message = " ".join(str(e).split())
        print(f"incomplete: stage {n!r}: {message}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except (PipelineError, ShardError) as e:  # found running: a damaged shard, a batch too large
        client.set_terminated(pid, "FAILED")
        print(f"error: stage {n!r}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except BaseException:
        client.set_terminated(pid, "FAILED")
        raise
    ptracker.log_metrics({"pipeline_seconds": time.time() - started})
    report = log_report(client, pid, workdir)
    client.set_terminated(pid, "FINISHED")
    print(f"\nDone in {time.time() - started:.1f}s. Stage outputs: {workdir}")
    print(f"MLflow run {pid} in experiment {cfg.experiment!r} at {uri}")
    if report is not None:
        print(f"Report:       {report}   (also the run's report.html artifact)")
    print(
        f"Open the UI:  .venv/bin/mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)"
    )
    print("Compare runs: .venv/bin/python -m tools.runs compare --experiment " + cfg.experiment)
    return 0
