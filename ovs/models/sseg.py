"""S-Seg: a class-agnostic MaskFormer and a text Transformer aligned in one embedding space.

Training (paper Fig. 4): ``masks, feats = model(images)``; image embedding = normalised mean of
the N (projected, normalised) mask features; text embedding = projected [EOT] feature; losses in
:mod:`ovs.objective`. Inference implements the evaluation harness's ``SegMethod`` protocol
(``text_embeddings`` + ``dense_probs``) with MaskFormer's semantic inference.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ovs.io import atomic_write_bytes
from ovs.models.layers import MLP
from ovs.models.maskformer import MaskFormer, MaskFormerConfig, paper_maskformer
from ovs.models.text import TextConfig, TextTransformer, paper_text, tokenize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SSegConfig:
    """The whole S-Seg model. Defaults: tiny flavour (64-px inputs, runs on CPU in seconds).
    :func:`paper_sseg` returns the paper's configuration (what ``conf/cc12m.yaml`` uses)."""

    maskformer: MaskFormerConfig = field(default_factory=MaskFormerConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 64  # shared image-text space (paper 256)
    init_temperature: float = 0.07  # sigma at init (CLIP); learnable
    max_logit_scale: float = 100.0  # 1/sigma is clamped to [1, 100] (CLIP)
    input_size: int = 64  # training crop side (paper 224; inference 448, harness-side)
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    # dense_probs: divide MaskFormer's sum over queries by the per-pixel total mask mass so the
    # M probabilities sum to 1 at every pixel (needed for max-probability background thresholds).
    dense_normalize: bool = True
    text_batch_size: int = 256  # names encoded per forward in text_embeddings


def paper_sseg() -> SSegConfig:
    """Paper configuration (appendix A.1): Swin-S MaskFormer, 6 decoder layers, 64 queries,
    dim 256; text Transformer 12x256, context 77; 2-layer MLP projections into 256-d; 224 crops.
    """
    return SSegConfig(
        maskformer=paper_maskformer(), text=paper_text(), embed_dim=256, input_size=224
    )


class SSeg(nn.Module):
    """S-Seg model.

    * ``forward(images [B,3,H,W] in [0,1]) -> (mask_logits [B,N,H/4,W/4],
      mask_feats [B,N,E] L2-normalised)``
    * ``encode_text(tokens [B,L]) -> [B,E]`` L2-normalised
    * ``image_embedding(mask_feats [B,N,E]) -> [B,E]`` normalised mean
    * ``logit_scale() -> scalar`` = 1/sigma, clamped to ``[1, max_logit_scale]``
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, cfg: SSegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.maskformer = MaskFormer(cfg.maskformer)
        self.text = TextTransformer(cfg.text)
        e = cfg.embed_dim
        # 2-layer MLP projections into the shared space (paper Sec. 3.3.2).
        self.image_proj = MLP(cfg.maskformer.hidden_dim, e, e, 2, act="gelu")
        self.text_proj = MLP(cfg.text.width, e, e, 2, act="gelu")
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), False)

    # ------------------------------------------------------------------ training interface

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images - self.pixel_mean) / self.pixel_std
        masks, q = self.maskformer(x)
        return masks, F.normalize(self.image_proj(q), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(tokens)), dim=-1)

    @staticmethod
    def image_embedding(mask_feats: torch.Tensor) -> torch.Tensor:
        """Mean of the N mask features, re-normalised: ``[B,N,E] -> [B,E]``."""
        return F.normalize(mask_feats.mean(dim=1), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(0.0, math.log(self.cfg.max_logit_scale)).exp()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), context_length]`` int64 on the model's device."""
        return tokenize(texts, self.cfg.text.context_length).to(self.pixel_mean.device)

    # ------------------------------------------------------------------ SegMethod interface

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T,E]`` L2-normalised embeddings of ``texts`` (float32). Call ``model.eval()`` first
        (the paper config has dropout)."""
        out = [
            self.encode_text(self.tokenize(texts[i : i + self.cfg.text_batch_size])).float()
            for i in range(0, len(texts), self.cfg.text_batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.cfg.embed_dim)

    @torch.no_grad()
    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """MaskFormer semantic inference over the names in ``text_emb``.

        ``images [B,3,H,W]`` RGB in [0,1]; ``text_emb [M,E]`` normalised -> ``[B,M,H,W]``:

            cls[b,q,m]  = softmax_m(logit_scale * <feat[b,q], text[m]>)
            probs[b,m,x] = sum_q sigmoid(mask[b,q](x)) * cls[b,q,m]   (MaskFormer)
                           / sum_q sigmoid(mask[b,q](x))              (if dense_normalize)

        Mask logits are upsampled (bilinear) to the input size before the sigmoid. With
        normalisation the result is a per-pixel distribution over the M names (a convex
        combination of the queries' class distributions, weighted by mask confidence), so a
        max-probability background threshold means the same as for CLIP-style methods.
        Inputs whose sides are not multiples of 32 are zero-padded (after normalisation) and the
        output cropped back.
        """
        _, _, h, w = images.shape
        ph, pw = (-h) % 32, (-w) % 32
        x = (images - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, pw, 0, ph))
        masks, q = self.maskformer(x)
        feats = F.normalize(self.image_proj(q), dim=-1).float()
        cls = (self.logit_scale().float() * feats @ text_emb.to(feats).T).softmax(dim=-1)
        masks = F.interpolate(masks.float(), size=(h + ph, w + pw), mode="bilinear")
        masks = masks[..., :h, :w].sigmoid()
        probs = torch.einsum("bqm,bqhw->bmhw", cls, masks)
        if self.cfg.dense_normalize:
            probs = probs / masks.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return probs


def save_checkpoint(model: SSeg, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write ``{"config": asdict(cfg), "model": state_dict, **extra}``."""
    buf = io.BytesIO()
    state = {
        "config": dataclasses.asdict(model.cfg),
        "model": model.state_dict(),
        **(extra or {}),
    }
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def config_from_dict(d: dict[str, Any]) -> SSegConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`SSegConfig`."""
    d = dict(d)
    mf = MaskFormerConfig(**d.pop("maskformer"))
    tx = TextConfig(**d.pop("text"))
    for k in ("pixel_mean", "pixel_std"):
        if k in d:
            d[k] = tuple(d[k])
    return SSegConfig(maskformer=mf, text=tx, **d)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> SSeg:
    """Rebuild the model from :func:`save_checkpoint` output (no backbone download: the
    backbone's pretrained flag and checkpoint path are dropped, the saved weights win)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    cfg = config_from_dict(state["config"])
    cfg.maskformer.pretrained = False
    cfg.maskformer.checkpoint = None
    model = SSeg(cfg)
    model.load_state_dict(state["model"])
    return model
