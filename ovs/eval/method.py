"""The segmentation-method interface the evaluation harness calls, and how to obtain one.

A method only maps images + text embeddings to per-name probabilities; everything
protocol-specific (templates, synonyms, background, sliding windows, resizing) lives in
:mod:`ovs.eval.protocol`. The S-Seg model and the CLIP / MaskCLIP baselines implement it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SegMethod(Protocol):
    """Open-vocabulary dense predictor.

    Implementations may expose ``device: torch.device``; the harness then moves images there.
    """

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T, D]`` L2-normalised embeddings of ``T`` sentences."""
        ...

    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Per-name probabilities.

        Args:
            images: ``[B, 3, H, W]`` float RGB in [0, 1]; the method normalises itself.
            text_emb: ``[M, D]`` L2-normalised name embeddings.
        Returns:
            ``[B, M, H, W]`` probabilities at the input resolution (sum to 1 over M for a
            softmax method).
        """
        ...


@dataclass
class MethodSpec:
    """What to load: a baseline by name, or a trained S-Seg checkpoint.

    ``checkpoint`` accepts a checkpoint file, a pipeline work dir (the newest ``*.pt`` under
    it, ``latest.pt`` preferred) or an MLflow run id. ``model``/``pretrained`` are open_clip
    names for baselines (``pretrained=None``: random weights; ``model="tiny"``: a small random
    debug CLIP). ``logit_scale=None``: the model's own learned scale.
    """

    method: str | None = None
    checkpoint: str | None = None
    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    device: str = "cpu"
    logit_scale: float | None = None


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_checkpoint(ref: str) -> Path:
    """Turn a checkpoint reference into a file path.

    Raises ``FileNotFoundError`` for a path that does not exist or a directory without
    checkpoints; ``ValueError`` for an MLflow run id (the library opens no MLflow store: a
    pipeline resolves the run's artifact dir and passes that instead).
    """
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        latest = sorted(path.rglob("latest.pt"))
        candidates = latest or sorted(path.rglob("*.pt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise FileNotFoundError(f"no *.pt checkpoint under {path}")
        return candidates[-1]
    if _RUN_ID.match(ref):
        raise ValueError(
            f"{ref!r} looks like an MLflow run id; pass the run's artifact directory "
            "(mlflow.artifacts.download_artifacts(run_id=...)) instead"
        )
    raise FileNotFoundError(f"checkpoint {ref!r} does not exist")


def load_method(spec: MethodSpec) -> SegMethod:
    """Build the method a spec names. Exactly one of ``method`` / ``checkpoint`` must be set."""
    if (spec.method is None) == (spec.checkpoint is None):
        raise ValueError("give exactly one of method= or checkpoint=")
    if spec.method is not None:
        from ovs.eval.baselines import BASELINE_MODES, build_clip_baseline

        if spec.method not in BASELINE_MODES:
            raise ValueError(f"unknown method {spec.method!r}; choose from {BASELINE_MODES}")
        return build_clip_baseline(
            spec.method, spec.model, spec.pretrained, spec.device, spec.logit_scale
        )
    path = resolve_checkpoint(spec.checkpoint or "")
    # The S-Seg checkpoint format is defined by the model/trainer module (not yet merged);
    # loading it and wrapping the model as a SegMethod is the one piece left here.
    raise NotImplementedError(f"loading S-Seg checkpoints ({path}) is not implemented yet")
