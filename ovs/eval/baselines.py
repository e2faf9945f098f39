"""Training-free CLIP baselines for dense prediction, built on open_clip ViTs.

- ``clip``: the final layer's patch tokens, put through ``ln_post`` and the visual projection
  like the class token is (zero-shot "dense CLIP" of the training-free family).
- ``maskclip``: MaskCLIP (Zhou et al., ECCV 2022): in the last block, replace attention by the
  value path only, ``out_proj(v_proj(ln_1(x)))`` with neither residual nor MLP, then
  ``ln_post`` and the projection (as TCL's MaskCLIP re-implementation does).

Both: cosine similarity of each patch with each text embedding, times the logit scale,
bilinearly upsampled to the input size, softmax over names. Inputs of any size work: the
positional embedding is bicubically resized to the patch grid, and an input whose side is
not a multiple of the patch size is resized to the next multiple and the output resized back.

``model_name="tiny"`` builds a 2-layer random CLIP (``TINY_CLIP``) for tests and benchmarks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BASELINE_MODES = ("clip", "maskclip")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

TINY_CLIP: dict = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 64,
        "layers": 2,
        "width": 64,
        "head_width": 32,
        "patch_size": 8,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 2,
    },
}
"""Debug flavour: ~0.5M visual params, random init, OpenAI tokenizer."""


def build_open_clip(
    model_name: str, pretrained: str | None, device: str = "cpu"
) -> tuple[nn.Module, object, tuple, tuple]:
    """``(model, tokenizer, mean, std)``; ``pretrained=None`` → random weights."""
    import open_clip

    if model_name == "tiny":
        model = open_clip.CLIP(**TINY_CLIP)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=77)
        mean, std = OPENAI_MEAN, OPENAI_STD
    else:
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        mean, std = tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD))
    return model.to(device).eval(), tokenizer, mean, std


class ClipDenseMethod(nn.Module):
    """A :class:`~ovs.eval.method.SegMethod` from an open_clip ``CLIP`` with a ViT tower."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        mode: str = "maskclip",
        mean: tuple = OPENAI_MEAN,
        std: tuple = OPENAI_STD,
        logit_scale: float | None = None,
        text_batch: int = 256,
    ) -> None:
        super().__init__()
        if mode not in BASELINE_MODES:
            raise ValueError(f"mode must be one of {BASELINE_MODES}, got {mode!r}")
        visual = getattr(model, "visual", None)
        for attr in (
            "conv1",
            "class_embedding",
            "positional_embedding",
            "transformer",
            "proj",
        ):
            if not hasattr(visual, attr):
                raise TypeError(f"{type(visual).__name__} is not an open_clip VisionTransformer")
        if getattr(visual, "attn_pool", None) is not None:
            raise TypeError("attention-pooled ViTs are not supported")
        self.model: Any = model  # open_clip CLIP; ViT attributes checked above
        self.tokenizer = tokenizer
        self.mode = mode
        self.text_batch = text_batch
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._logit_scale = logit_scale

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def patch_size(self) -> int:
        return int(self.model.visual.conv1.kernel_size[0])

    @property
    def logit_scale(self) -> float:
        if self._logit_scale is not None:
            return float(self._logit_scale)
        return float(self.model.logit_scale.exp().clamp(max=100).item())

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T, D]`` L2-normalised text embeddings."""
        out = []
        for i in range(0, len(texts), self.text_batch):
            tokens = self.tokenizer(texts[i : i + self.text_batch]).to(self.device)
            out.append(self.model.encode_text(tokens, normalize=True).float())
        return torch.cat(out) if out else torch.zeros(0, self.model.visual.output_dim)

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.model.visual.positional_embedding  # [1 + g0*g0, W]
        cls_pos, grid = pos[:1], pos[1:]
        g0 = math.isqrt(grid.shape[0])
        if (gh, gw) == (g0, g0):
            return pos
        grid = grid.reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])

    @torch.no_grad()
    def encode_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + gh*gw, D]`` projected tokens (class token first, not normalised).

        ``images`` ``[B, 3, H, W]`` in [0, 1] with H, W multiples of the patch size. In
        ``clip`` mode the class token equals open_clip's ``encode_image`` at its native size.
        """
        v = self.model.visual
        x = (images.to(self.device, torch.float32) - self.mean) / self.std
        x = v.conv1(x)  # [B, W, gh, gw]
        b, _, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1) + self._pos_embed(gh, gw).to(x.dtype)
        x = v.ln_pre(x)
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        blocks = list(v.transformer.resblocks)
        if self.mode == "maskclip":
            for blk in blocks[:-1]:
                x = blk(x)
            x = self._value_path(blocks[-1], x)
        else:
            for blk in blocks:
                x = blk(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return v.ln_post(x) @ v.proj

    @torch.no_grad()
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D, gh, gw]`` L2-normalised patch embeddings (see :meth:`encode_tokens`)."""
        b, _, h, w = images.shape
        p = self.patch_size
        x = F.normalize(self.encode_tokens(images)[:, 1:], dim=-1)  # [B, gh*gw, D]
        return x.transpose(1, 2).reshape(b, -1, h // p, w // p)

    @staticmethod
    def _value_path(block: Any, x: torch.Tensor) -> torch.Tensor:
        attn: Any = block.attn
        if not isinstance(attn, nn.MultiheadAttention):
            raise TypeError(f"MaskCLIP needs nn.MultiheadAttention, got {type(attn).__name__}")
        width = attn.embed_dim
        w_v = attn.in_proj_weight[2 * width :]
        b_v = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
        v = F.linear(block.ln_1(x), w_v, b_v)
        return attn.out_proj(v)

    @torch.no_grad()
    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B, M, H, W]`` softmax over the M names of ``scale * cos(patch, text)``."""
        h, w = images.shape[-2:]
        p = self.patch_size
        hp, wp = math.ceil(h / p) * p, math.ceil(w / p) * p
        x = images
        if (hp, wp) != (h, w):
            x = F.interpolate(images, size=(hp, wp), mode="bilinear", align_corners=False)
        feats = self.dense_features(x)  # [B, D, gh, gw]
        logits = torch.einsum("bdhw,md->bmhw", feats, text_emb.to(feats))
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return (self.logit_scale * logits).softmax(dim=1)


def build_clip_baseline(
    mode: str,
    model_name: str = "ViT-B-16",
    pretrained: str | None = "openai",
    device: str = "cpu",
    logit_scale: float | None = None,
) -> ClipDenseMethod:
    """``clip`` or ``maskclip`` on an open_clip model (``pretrained=None``: random init)."""
    model, tokenizer, mean, std = build_open_clip(model_name, pretrained, device)
    return ClipDenseMethod(model, tokenizer, mode, mean, std, logit_scale).to(device)
