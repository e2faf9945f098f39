"""Ray Train plumbing of the training loop (``pipelines/loop.py``), which both training stages
(``train``, ``self_train``) run.

:func:`fit_and_export` runs a ``TorchTrainer`` (DDP on gloo, or nccl with GPUs; worker-group
restarts from the last checkpoint via ``FailureConfig``; checkpoints kept under the stage's
output so a whole-job rerun resumes) and copies the final checkpoint's inference model to
``<out>/model/latest.pt`` atomically. Inside a worker's loop: :func:`resume_state` loads the
last checkpoint's state (``weights_only``), :func:`prepare` moves the model to its device before
building and restoring the optimiser and schedule, :func:`report` reports metrics (rank 0 with a
checkpoint holding every rank's data and RNG state, so a resume continues exactly),
:func:`rank0_tracker` reopens the stage's MLflow run (:class:`RunRef`), :func:`any_rank` agrees
on a flag across ranks, :class:`Window` accumulates logged metrics on the device between log
steps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovs.train.loop_config import LoopConfig
from pipelines import ray_logs

MODEL = "model.pt"  # inference checkpoint file inside a Ray checkpoint directory
STATE = "state.pt"  # full training state inside a Ray checkpoint directory


def load_state(path: Path) -> dict:
    """A training state file, loaded on the CPU with ``weights_only=True``: a checkpoint on
    shared storage can hold tensors, plain containers and primitives, never code."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def resume_state() -> dict | None:
    """The worker's Ray checkpoint's training state (:func:`load_state`), or None."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_state(Path(d) / STATE)


def prepare(
    model: Any,
    device: Any,
    make_optimizer: Callable[[], Any],
    make_schedule: Callable[[Any], Any],
    state: dict | None,
) -> tuple[Any, Any, int]:
    """Move ``model`` to ``device``, *then* build its optimiser (``make_optimizer()``, over the
    model's parameters) and schedule (``make_schedule(opt)``) and load ``state`` into all
    three: optimiser state follows the parameters' device, so the first step after a resume on
    a GPU never mixes devices. Returns ``(opt, sched, step to continue from)``."""
    model.to(device)
    opt = make_optimizer()
    sched = make_schedule(opt)
    if state is None:
        return opt, sched, 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    return opt, sched, int(state["step"])


def rng_state(device: Any) -> dict:
    """This process's torch RNG states (CPU and, on CUDA, the device's) as tensors."""
    import torch

    state = {"cpu": torch.get_rng_state()}
    if getattr(device, "type", "cpu") == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: Any) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and getattr(device, "type", "cpu") == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def rank_state(state: dict | None, rank: int, world: int) -> dict | None:
    """Rank ``rank``'s data/RNG state saved in a training state, or None (no state, or one
    saved by a different number of ranks, whose shard split differs)."""
    if state is None:
        return None
    ranks = state.get("ranks") or []
    if len(ranks) != world:
        if ranks:
            warnings.warn(
                f"resume state was saved by {len(ranks)} ranks, this run has {world}: data "
                "order and augmentation restart from the seed (the run differs from an "
                "uninterrupted one)",
                stacklevel=2,
            )
        return None
    return ranks[rank]


def report(
    metrics: dict,
    rank: int,
    world: int,
    model: Any,
    opt: Any,
    sched: Any,
    step: int,
    save_model: Callable[[Path, dict], Any],
    own_state: dict,
) -> None:
    """``ray.train.report`` from every rank; rank 0 attaches a checkpoint holding the full
    training state (``STATE``: model, optimiser, schedule, step and every rank's ``own_state``,
    e.g. its data position and RNG states) and the inference model
    (``save_model(path, extra)``, which writes ``model``'s). All ranks must call it at the same steps."""
    import ray.train
    import torch

    ranks = [own_state]
    if world > 1:
        ranks = [{} for _ in range(world)]
        torch.distributed.all_gather_object(ranks, own_state)
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        state = {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "step": step,
            "ranks": ranks,
        }
        torch.save(state, Path(d) / STATE)
        save_model(Path(d) / MODEL, {"step": step})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


@dataclass(frozen=True)
class RunRef:
    """The stage's MLflow run, as a worker reopens it: tracking URI and run id."""

    uri: str
    run_id: str


def rank0_tracker(run: RunRef | None, rank: int) -> Any:
    """An ``MlflowTracker`` on ``run`` for rank 0, else (other ranks, no run) None."""
    if rank != 0 or run is None:
        return None
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import MlflowTracker

    return MlflowTracker(MlflowClient(run.uri), run.run_id)


def any_rank(flag: bool, device: Any, world: int) -> bool:
    """True on every rank if ``flag`` is true on any (all ranks must call it: with DDP a rank
    that stops alone would deadlock the others). A host sync: call it at log steps only."""
    if world <= 1:
        return flag
    import torch

    t = torch.tensor(float(flag), device=device)
    torch.distributed.all_reduce(t)
    return bool(t.item() > 0)


def latest_checkpoint(storage: Path) -> Path | None:
    """Newest Ray checkpoint directory under ``storage`` that holds an inference model."""
    found = sorted(storage.glob("*/checkpoint_*"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if (p / MODEL).is_file()]
    return found[-1] if found else None


def fit_and_export(
    train_worker: Callable[[], None], cfg: LoopConfig, name: str, out_dir: Path
) -> tuple[Path, dict]:
    """Run ``train_worker`` on ``cfg.num_workers`` Ray Train workers; returns
    ``(out_dir/model/latest.pt, rank 0's last reported metrics)`` (the loop reports ``step``:
    fewer than the configured steps means it stopped early, e.g. at its time limit).

    ``cfg`` gives the workers' resources, ``max_failures`` and ``keep_checkpoints``;
    checkpoints go to ``out_dir/ray_train/<name>``.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = (out_dir / "ray_train").resolve()
    trainer = TorchTrainer(
        train_worker,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]  # mypy sees Train v1's
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            # Ray Train's INFO lines go to its ray-train-*.log files only (pipelines.ray_logs)
            logging_config=ray.train.LoggingConfig(log_level=ray_logs.TRAIN_CONSOLE_LEVEL),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:
        user = user_error(e)
        if user is None:
            raise
        from pipelines.common import PipelineError

        raise PipelineError(f"{name}: {str(user).strip().splitlines()[0]}") from None
    final = out_dir / "model" / "latest.pt"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(".tmp")
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            shutil.copyfile(Path(d) / MODEL, tmp)
    else:
        latest = latest_checkpoint(storage)
        if latest is None:
            raise RuntimeError(f"training produced no checkpoint under {storage}")
        shutil.copyfile(latest / MODEL, tmp)
    os.replace(tmp, final)
    return final, dict(result.metrics or {})


def user_error(e: BaseException) -> BaseException | None:
    """The error of the user's making that a failed ``trainer.fit()`` carries from a worker (a
    batch that does not fit, :class:`ovs.train.memory.BatchTooLarge`; a damaged shard,
    :class:`ovs.data.shards.ShardError`), found through Ray Train's wrappers (``__cause__``,
    ``worker_failures``, the wrapped ``_base_exc`` / ``cause``), or None."""
    from ovs.data.shards import ShardError
    from ovs.train.memory import BatchTooLarge

    todo, seen = [e], set()
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, (BatchTooLarge, ShardError)):  # a RayTaskError(ShardError) is one too
            inner = getattr(x, "cause", None)
            return inner if isinstance(inner, (BatchTooLarge, ShardError)) else x
        failures = getattr(x, "worker_failures", None)
        todo += list(failures.values()) if isinstance(failures, dict) else []
        for attr in ("__cause__", "__context__", "_base_exc", "cause"):
            value = getattr(x, attr, None)
            if isinstance(value, BaseException):
                todo.append(value)
    return None


class Window:
    """Logged metrics summed over a log window as device tensors (float64, the same sums a
    Python float loop gives), read back only in :meth:`means`: no host sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.n = 0
        self.images = 0
        self.data_wait_s = 0.0  # seconds the loop waited for its next batch

    def add(self, values: dict[str, Any], images: int) -> None:
        import torch

        for k, v in values.items():
            v = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(v)
            v = v.to(torch.float64)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += 1
        self.images += images

    def means(self) -> dict[str, float]:
        return {k: float(v) / max(self.n, 1) for k, v in self.sums.items()}


def check_complete(steps_done: int, steps: int, section: str, time_limit_s: float | None) -> None:
    """Raise :class:`ovs.stage.StageIncomplete` (no manifest: the output stays resumable)
    when a loop stopped before ``steps``, saying how far it got and how to continue."""
    from ovs.stage import StageIncomplete

    if steps_done >= steps:
        return
    raise StageIncomplete(
        f"{section} stopped at step {steps_done} of {steps}: {section}.time_limit_s="
        f"{time_limit_s} was reached. The last checkpoint is kept; rerun the same command to "
        f"resume from step {steps_done}, or raise or unset {section}.time_limit_s (it is not "
        "part of the stage hash, so the rerun continues the same output).",
        {"steps_done": float(steps_done), "steps": float(steps)},
    )
