"""The segmentation-method interface the evaluation harness calls, and how to obtain one.

A method only maps images + text embeddings to per-name probabilities; everything
protocol-specific (templates, synonyms, background, sliding windows, resizing) lives in
:mod:`ovs.eval.protocol`. The S-Seg model and the CLIP / MaskCLIP baselines implement it.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from ovs.models.sseg import SSeg


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

    ``checkpoint`` accepts a checkpoint file or a directory holding one (a pipeline work dir:
    its newest ``latest.pt``); an MLflow run id must be resolved to the run's ``model``
    artifact dir by the caller (``python -m tools.segment`` does). ``model``/``pretrained`` are
    open_clip names for baselines (``pretrained=None``: random weights; ``model="tiny"``: a
    small random debug CLIP). ``logit_scale=None``: the model's own learned scale.
    """

    method: str | None = None
    checkpoint: str | None = None
    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    device: str = "cpu"
    logit_scale: float | None = None


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def is_run_id(ref: str) -> bool:
    """Whether ``ref`` has the shape of an MLflow run id (32 hex digits)."""
    return bool(_RUN_ID.match(ref))


def resolve_checkpoint(ref: str) -> Path:
    """Turn a checkpoint reference into a file path.

    A directory (a pipeline work dir, a train stage output, a downloaded MLflow ``model``
    artifact) resolves to its most recently written ``latest.pt``, else its most recent
    ``*.pt``; in a pipeline work dir only the ``train`` stage's outputs are searched (other
    stages, e.g. ``self_train``, save other model types). Raises ``FileNotFoundError`` for a path that does not exist or a directory
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


class SSegMethod:
    """A trained S-Seg model as a :class:`SegMethod` on one device (eval mode, no grad)."""

    def __init__(self, model: SSeg, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T, E]`` L2-normalised."""
        return self.model.text_embeddings(texts)

    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1], ``[M, E]`` → ``[B, M, H, W]`` (see ``SSeg.dense_probs``)."""
        return self.model.dense_probs(images.to(self.device), text_emb.to(self.device))


def load_sseg(path: str | Path, device: str = "cpu") -> SSegMethod:
    """Load an :func:`ovs.models.sseg.save_checkpoint` file onto ``device``.

    Raises ``ValueError`` naming the file when it is not such a checkpoint (unreadable,
    another ``torch.save`` format, or weights that do not fit the saved config).
    """
    from ovs.models.sseg import load_checkpoint

    try:
        model = load_checkpoint(path, map_location=device)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path} is not an S-Seg checkpoint (config/model): {e!r}") from e
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load S-Seg checkpoint {path}: {first}") from e
    return SSegMethod(model, device)


def load_method(spec: MethodSpec) -> SegMethod:
    """Build the method a spec names, on ``spec.device``.

    Exactly one of ``method`` / ``checkpoint`` must be set. Errors: ``ValueError`` (bad spec,
    unknown method, run id, not an S-Seg checkpoint), ``FileNotFoundError`` (no checkpoint).
    """
    if (spec.method is None) == (spec.checkpoint is None):
        raise ValueError("give exactly one of method= or checkpoint=")
    if spec.method is not None:
        from ovs.eval.baselines import BASELINE_MODES, build_clip_baseline

        if spec.method not in BASELINE_MODES:
            raise ValueError(f"unknown method {spec.method!r}; choose from {BASELINE_MODES}")
        return build_clip_baseline(
            spec.method, spec.model, spec.pretrained, spec.device, spec.logit_scale
        )
    return load_sseg(resolve_checkpoint(spec.checkpoint or ""), spec.device)
