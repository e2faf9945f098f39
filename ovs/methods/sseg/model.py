"""S-Seg: a class-agnostic MaskFormer and a text Transformer aligned in one embedding space.

Training (paper Fig. 4): ``masks, feats = model(images)``; image embedding = normalised mean of
the N (projected, normalised) mask features; text embedding = projected [EOT] feature; losses in
:mod:`ovs.methods.sseg.objective`. Inference gives what the evaluation harness's ``SegMethod``
needs (``text_embeddings`` + ``dense_probs``, MaskFormer's semantic inference) and what the
pairs scorer needs (``mask_embeddings``); both read :meth:`SSeg.query_maps`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ovs.methods.sseg.config import SSegConfig
from ovs.models.layers import MLP
from ovs.models.maskformer import MaskFormer
from ovs.models.text import TextTransformer, tokenize


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

    # ------------------------------------------------------------------ inference

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
        feats, masks = self.query_maps(images)
        cls = (self.logit_scale().float() * feats @ text_emb.to(feats).T).softmax(dim=-1)
        probs = torch.einsum("bqm,bqhw->bmhw", cls, masks)
        if self.cfg.dense_normalize:
            probs = probs / masks.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return probs

    @torch.no_grad()
    def query_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The N queries of an inference forward: ``images [B,3,H,W]`` RGB in [0,1] ->
        ``(feats [B,N,E]`` L2-normalised float32, ``masks [B,N,H,W]`` sigmoid probabilities at
        the input size, float32). Mask logits are upsampled (bilinear) before the sigmoid.
        Inputs whose sides are not multiples of 32 are zero-padded (after normalisation) and
        the masks cropped back."""
        _, _, h, w = images.shape
        ph, pw = (-h) % 32, (-w) % 32
        x = (images - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, pw, 0, ph))
        masks, q = self.maskformer(x)
        feats = F.normalize(self.image_proj(q), dim=-1).float()
        masks = F.interpolate(masks.float(), size=(h + ph, w + pw), mode="bilinear")
        return feats, masks[..., :h, :w].sigmoid()

    @torch.no_grad()
    def mask_embeddings(
        self, images: torch.Tensor, labels: torch.Tensor, num_masks: int
    ) -> torch.Tensor:
        """S-Seg embedding of every segment of every image (the OVSeg pairs scorer).

        ``images`` float ``[B, 3, H, W]`` RGB in [0, 1]; ``labels`` int64 ``[B, H, W]`` segment
        ids in ``[0, num_masks)`` -> float32 ``[B, num_masks, E]``: per segment, the mean over
        its pixels of the per-pixel embedding ``e(x) = sum_q r_q(x) f_q`` (``f_q`` the query
        features, ``r_q(x)`` the query responsibilities of :meth:`dense_probs`: the sigmoid
        masks, divided by their per-pixel sum if ``dense_normalize``), L2-normalised. Empty
        segments give zero rows.
        """
        feats, resp = self.query_maps(images)
        if self.cfg.dense_normalize:
            resp = resp / resp.sum(dim=1, keepdim=True).clamp_min(1e-6)
        onehot = F.one_hot(labels.long(), num_masks).permute(0, 3, 1, 2).float()  # [B,K,H,W]
        area = onehot.sum(dim=(2, 3))  # [B, K]
        weights = torch.einsum("bkhw,bnhw->bkn", onehot, resp) / area.clamp_min(1.0)[..., None]
        return F.normalize(weights @ feats, dim=-1)

    def image_backbone(self) -> nn.Module:
        """The timm image backbone (what an S-Seg+ segmenter may start from)."""
        return self.maskformer.backbone.net
