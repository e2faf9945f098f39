"""PACL: a frozen open_clip CLIP, a residual embedder on its patch tokens, and a learnable
temperature.

* ``patch_embeddings(images [B,3,H,W] in [0,1]) -> [B,P,E]`` L2-normalised embedded patches: the
  CLIP image tower's final patch tokens, through ``ln_post`` and the visual projection as its
  class token is (:meth:`~ovs.eval.baselines.ClipDenseMethod.encode_tokens`, no gradient: the
  CLIP is frozen), then ``e(x) = Linear(x) + MLP_2(x)``.
* ``encode_text(tokens) -> [T,E]`` the frozen CLIP's L2-normalised text embeddings.
* Inference: every patch classified, ``softmax_m(scale * <v[p], text[m]>)``, the logits
  upsampled bilinearly to the input size first (as the dense CLIP baseline).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ovs.eval.baselines import ClipDenseMethod
from ovs.methods.clip.model import image_mean_std, tokenizer
from ovs.methods.pacl.config import PACLConfig
from ovs.models.layers import MLP


class ResidualEmbedder(nn.Module):
    """``e(x) = Linear(x) + MLP_2(x)`` (PACL's vision embedder): ``[..., D] -> [..., E]``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp = MLP(in_dim, hidden_dim, out_dim, 2, act="gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


class PACL(nn.Module):
    """PACL on a given open_clip ``CLIP`` (frozen here: no gradients, always in eval mode)."""

    def __init__(self, cfg: PACLConfig, clip: Any) -> None:
        super().__init__()
        self.cfg = cfg
        mean, std = image_mean_std(cfg.clip, clip)
        for p in clip.parameters():
            p.requires_grad_(False)
        # The frozen CLIP, reached through the dense baseline's token path (any input size).
        self.dense = ClipDenseMethod(clip.eval(), None, "clip", mean, std)
        e = int(clip.visual.output_dim)
        self.embedder = ResidualEmbedder(e, cfg.hidden_dim or e, e)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self._tokenizer: Callable[[list[str]], torch.Tensor] | None = None

    @property
    def clip(self) -> Any:
        """The frozen open_clip ``CLIP``."""
        return self.dense.model

    def train(self, mode: bool = True) -> PACL:
        super().train(mode)
        self.dense.eval()  # the CLIP stays frozen (no dropout / norm updates)
        return self

    @property
    def patch_size(self) -> int:
        return self.dense.patch_size

    def patch_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] (sides multiples of the patch) -> ``[B,P,E]`` normalised."""
        with torch.no_grad():
            tokens = self.dense.encode_tokens(images)[:, 1:]
        return F.normalize(self.embedder(tokens), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch_embeddings(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.clip.encode_text(tokens.to(self.dense.device), normalize=True).float()

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(0.0, math.log(self.cfg.max_logit_scale)).exp()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``[T, context]`` int64 CLIP token ids (the CLIP's tokenizer) on the model's device."""
        if self._tokenizer is None:
            self._tokenizer = tokenizer(self.cfg.clip)
        return self._tokenizer([str(t) for t in texts]).to(self.dense.device)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T,E]`` L2-normalised (float32)."""
        n = self.cfg.text_batch_size
        out = [self.encode_text(self.tokenize(texts[i : i + n])) for i in range(0, len(texts), n)]
        return torch.cat(out) if out else torch.zeros(0, int(self.clip.visual.output_dim))

    @torch.no_grad()
    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1], ``[M,E]`` -> ``[B,M,H,W]``: softmax over the M names of
        ``scale * cos(embedded patch, text)``, logits upsampled bilinearly to ``H x W``. Sides
        that are not multiples of the patch are resized to the next multiple first."""
        h, w = images.shape[-2:]
        p = self.patch_size
        hp, wp = math.ceil(h / p) * p, math.ceil(w / p) * p
        x = images.to(self.dense.device)
        if (hp, wp) != (h, w):
            x = F.interpolate(x, size=(hp, wp), mode="bilinear", align_corners=False)
        v = self.patch_embeddings(x)  # [B,P,E]
        logits = v @ text_emb.to(v).T  # [B,P,M]
        logits = logits.transpose(1, 2).reshape(x.shape[0], -1, hp // p, wp // p)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return (self.logit_scale() * logits).softmax(dim=1)
