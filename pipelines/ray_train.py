"""Ray Train plumbing shared by the stages that train a model (``train``, ``self_train``).

:func:`fit_and_export` runs a ``TorchTrainer`` (DDP on gloo, or nccl with GPUs; worker-group
restarts from the last checkpoint via ``FailureConfig``; checkpoints kept under the stage's
output so a whole-job rerun resumes) and copies the final checkpoint's inference model to
``<out>/model/latest.pt`` atomically.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "model.pt"  # inference checkpoint file inside a Ray checkpoint directory


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
