"""The segmentation-method interface the evaluation harness calls, and how to obtain one.

A method only maps images + text embeddings to per-name probabilities; everything
protocol-specific (templates, synonyms, background, sliding windows, resizing) lives in
:mod:`ovs.eval.protocol`. Trained methods reach it through their spec's ``seg_method``
(:mod:`ovs.methods`); the CLIP / MaskCLIP baselines implement it directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
class MethodRef:
    """What to load: a baseline by name, or a trained method's checkpoint (any method of
    :data:`ovs.methods.METHODS`; the file names its method).

    ``checkpoint`` accepts a checkpoint file or a directory holding one (a pipeline work dir:
    its newest ``latest.pt``); an MLflow run id must be resolved to the run's ``model``
    artifact dir by the caller (``python -m tools.segment`` does). ``model``/``pretrained`` are
    open_clip names for baselines (``pretrained=None``: random weights; ``model="tiny"``: a
    small random debug CLIP). ``logit_scale=None``: the model's own learned scale.
    ``row``: which evaluation row of the checkpoint's method (``MethodSpec.rows``; None or the
    method's name: its ``seg_method``); ``pseudo_masks``: the run's pseudo-mask section, for
    rows that segment test images (Baseline 1).
    """

    method: str | None = None
    checkpoint: str | None = None
    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    device: str = "cpu"
    logit_scale: float | None = None
    row: str | None = None
    pseudo_masks: Any = None


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def is_run_id(ref: str) -> bool:
    """Whether ``ref`` has the shape of an MLflow run id (32 hex digits)."""
    return bool(_RUN_ID.match(ref))


def resolve_checkpoint(ref: str) -> Path:
    """Turn a checkpoint reference into a file path.

    A directory (a pipeline work dir, a train stage output, a downloaded MLflow ``model``
    artifact) resolves to its most recently written ``latest.pt``, else its most recent
    ``*.pt``; in a pipeline work dir only the ``train`` stage's outputs are searched (the
    open-vocabulary model; ``self_train`` saves a closed-vocabulary segmenter). Raises ``FileNotFoundError`` for a path that does not exist or a directory
    without checkpoints; ``ValueError`` for an MLflow run id (the library opens no MLflow
    store: the caller resolves the run's ``model`` artifact dir and passes that instead).
    """
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "train").is_dir() and any((path / "train").rglob("latest.pt")):
            path = path / "train"
        candidates = list(path.rglob("latest.pt")) or list(path.rglob("*.pt"))
        if not candidates:
            raise FileNotFoundError(f"no *.pt checkpoint under {path}")
        return max(candidates, key=lambda p: (p.stat().st_mtime, str(p)))
    if is_run_id(ref):
        raise ValueError(
            f"{ref!r} looks like an MLflow run id; pass the run's artifact directory "
            "(mlflow.artifacts.download_artifacts(run_id=..., artifact_path='model')) instead"
        )
    raise FileNotFoundError(f"checkpoint {ref!r} does not exist")


def load_trained(
    path: str | Path,
    device: str | torch.device = "cpu",
    row: str | None = None,
    pseudo_masks: Any = None,
) -> SegMethod:
    """Any method's checkpoint file as a :class:`SegMethod` on ``device``: its spec's
    ``seg_method``, or the evaluation row ``row`` of ``MethodSpec.rows`` (``pseudo_masks``: the
    row's :class:`~ovs.methods.spec.RowOptions`). Raises ``ValueError`` naming the file when it
    is no method's checkpoint, or the row when the method has none of that name."""
    from ovs.methods import load_checkpoint
    from ovs.methods.spec import RowOptions

    spec, model = load_checkpoint(path, map_location=device)
    if row is None or row == spec.name:
        return spec.seg_method(model, torch.device(device))
    if row not in spec.rows:
        raise ValueError(f"{spec.name} has no evaluation row {row!r}: {spec.evaluation_rows()}")
    return spec.rows[row](model, torch.device(device), RowOptions(pseudo_masks))


def load_method(ref: MethodRef) -> SegMethod:
    """Build the method a reference names, on ``ref.device``.

    Exactly one of ``method`` / ``checkpoint`` must be set. Errors: ``ValueError`` (bad
    reference, unknown method, run id, not a method's checkpoint), ``FileNotFoundError`` (no
    checkpoint).
    """
    if (ref.method is None) == (ref.checkpoint is None):
        raise ValueError("give exactly one of method= or checkpoint=")
    if ref.method is not None:
        from ovs.eval.baselines import BASELINE_MODES, build_clip_baseline

        if ref.method not in BASELINE_MODES:
            raise ValueError(f"unknown method {ref.method!r}; choose from {BASELINE_MODES}")
        return build_clip_baseline(
            ref.method, ref.model, ref.pretrained, ref.device, ref.logit_scale
        )
    path = resolve_checkpoint(ref.checkpoint or "")
    return load_trained(path, ref.device, ref.row, ref.pseudo_masks)
