"""Ray Train plumbing shared by the stages that train a model (``train``, ``self_train``).

:func:`fit_and_export` runs a ``TorchTrainer`` (DDP on gloo, or nccl with GPUs; worker-group
restarts from the last checkpoint via ``FailureConfig``; checkpoints kept under the stage's
output so a whole-job rerun resumes) and copies the final checkpoint's inference model to
``<out>/model/latest.pt`` atomically. Inside a worker's loop: :func:`resume_state` restores the
last checkpoint, :func:`report` reports metrics (rank 0 with a checkpoint), :func:`rank0_tracker`
reopens the stage's MLflow run, :func:`any_rank` agrees on a flag across ranks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "model.pt"  # inference checkpoint file inside a Ray checkpoint directory
STATE = "state.pt"  # full training state inside a Ray checkpoint directory


def resume_state(model: Any, opt: Any, sched: Any) -> int:
    """Load the worker's Ray checkpoint (if any) into model, optimiser and schedule; returns
    the step to continue from (0 without a checkpoint)."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    return int(state["step"])


def report(
    metrics: dict,
    rank: int,
    model: Any,
    opt: Any,
    sched: Any,
    step: int,
    save_model: Callable[[Any, Path, dict], Any],
) -> None:
    """``ray.train.report`` from every rank; rank 0 attaches a checkpoint holding the full
    training state (``STATE``) and the inference model (``save_model(model, path, extra)``)."""
    import ray.train
    import torch

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        state = {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "step": step,
        }
        torch.save(state, Path(d) / STATE)
        save_model(model, Path(d) / MODEL, {"step": step})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def rank0_tracker(config: dict, rank: int) -> Any:
    """The stage's MLflow run (``config["mlflow"]``: uri, run_id) on rank 0, else None."""
    if rank != 0 or not config.get("mlflow"):
        return None
    from mlflow.tracking import MlflowClient

    from ovs.tracking import MlflowTracker

    return MlflowTracker(MlflowClient(config["mlflow"]["uri"]), config["mlflow"]["run_id"])


def any_rank(flag: bool, device: Any, world: int) -> bool:
    """True on every rank if ``flag`` is true on any (all ranks must call it: with DDP a rank
    that stops alone would deadlock the others)."""
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
    train_loop: Callable[[dict], None],
    loop_config: dict[str, Any],
    cfg: Any,
    name: str,
    out_dir: Path,
) -> Path:
    """Train with Ray Train; returns ``out_dir/model/latest.pt``.

    ``cfg`` provides ``num_workers``, ``use_gpu``, ``cpus_per_worker``, ``max_failures`` and
    ``keep_checkpoints``; checkpoints go to ``out_dir/ray_train/<name>``.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = (out_dir / "ray_train").resolve()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    result = trainer.fit()
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
    return final
