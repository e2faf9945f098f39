"""Building an open_clip ``CLIP`` from :class:`~ovs.methods.clip.config.ClipConfig`, and its
tokenizer.

The model is open_clip's own class (``open_clip.CLIP``): a custom one from the config's tower
sizes (``model: ""``), or ``open_clip.create_model(name, pretrained)`` for a named one. A
``pretrained`` local file is loaded with ``open_clip.load_checkpoint`` (open_clip checkpoints or
plain state dicts); a pretrained tag needs open_clip's download (or a warm cache).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ovs.methods.clip.config import ClipConfig
from ovs.methods.spec import open_vocabulary


def custom_model_cfg(cfg: ClipConfig) -> dict[str, Any]:
    """The ``open_clip.CLIP(**kwargs)`` of the custom towers (``model: ""``)."""
    v, t = cfg.vision, cfg.text
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "width": v.width,
            "layers": v.layers,
            "head_width": v.head_width,
            "mlp_ratio": v.mlp_ratio,
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
            "mlp_ratio": t.mlp_ratio,
        },
        "init_logit_scale": math.log(1.0 / cfg.init_temperature),
    }


def build_clip(cfg: ClipConfig, seed: int) -> Any:
    """Seed the global RNG with ``seed``, then build the open_clip ``CLIP`` of ``cfg`` (fp32,
    train mode, on the CPU): random init, or ``cfg.pretrained``'s weights."""
    import open_clip

    torch.manual_seed(seed)
    local = cfg.pretrained is not None and Path(cfg.pretrained).expanduser().is_file()
    if cfg.model:
        tag = None if local else cfg.pretrained
        model = open_clip.create_model(cfg.model, pretrained=tag)
    else:
        if cfg.pretrained and not local:
            raise ValueError(
                f"train.clip.pretrained {cfg.pretrained!r}: a custom model (model: '') loads "
                "only a local checkpoint file"
            )
        model = open_clip.CLIP(**custom_model_cfg(cfg))
    if local:
        open_clip.load_checkpoint(model, str(Path(cfg.pretrained or "").expanduser()))
    return model


def tokenizer(cfg: ClipConfig) -> Callable[[list[str]], torch.Tensor]:
    """``texts -> [len(texts), context] int64`` token ids: open_clip's tokenizer of the named
    model, or its CLIP BPE ``SimpleTokenizer`` at the custom text tower's context."""
    import open_clip

    if cfg.model:
        return open_clip.get_tokenizer(cfg.model)
    return open_clip.tokenizer.SimpleTokenizer(context_length=cfg.text.context_length)


def image_mean_std(cfg: ClipConfig, model: Any) -> tuple[tuple, tuple]:
    """The pixel normalisation: a named model's preprocess config, else ``cfg``'s."""
    pp = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    if cfg.model and pp:
        return tuple(pp.get("mean", cfg.pixel_mean)), tuple(pp.get("std", cfg.pixel_std))
    return tuple(cfg.pixel_mean), tuple(cfg.pixel_std)


class ClipModel(torch.nn.Module):
    """The ``clip`` method's model: an open_clip ``CLIP`` (``.clip``) with the config that built
    it (``.cfg``; the checkpoint, the tokenizer and the adapters read it).

    ``forward(images [B, 3, S, S] in [0, 1]) -> [B, E]`` L2-normalised image embeddings (the
    config's pixel normalisation applied).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, cfg: ClipConfig, clip: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = clip
        mean, std = image_mean_std(cfg, clip)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._tokenizer: Callable[[list[str]], torch.Tensor] | None = None

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``[T, context]`` int64 token ids (:func:`tokenizer`), on the CPU."""
        if self._tokenizer is None:
            self._tokenizer = tokenizer(self.cfg)
        return self._tokenizer([str(t) for t in texts])

    def logit_scale(self) -> torch.Tensor:
        """1/sigma, clamped to ``cfg.max_logit_scale`` (CLIP's clamp at 100)."""
        return self.clip.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` in [0, 1] -> ``[B, E]`` L2-normalised."""
        return self.clip.encode_image((images - self.mean) / self.std, normalize=True)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[T, context]`` token ids -> ``[T, E]`` L2-normalised."""
        return self.clip.encode_text(tokens, normalize=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)


def build_model(cfg: ClipConfig, seed: int, num_classes: int | None = None) -> ClipModel:
    """The spec's ``build_model``: :func:`build_clip` wrapped in :class:`ClipModel`."""
    open_vocabulary("CLIP", num_classes)
    return ClipModel(cfg, build_clip(cfg, seed))
