"""The pseudo-mask ViT (S-Seg paper, baseline 2): a plain ViT whose tokens are pooled within each
pseudo-mask segment into segment features, which are pooled into the image embedding; a text
Transformer trained with it from scratch, CLIP-style.

Segment pooling is area-exact at any label resolution: the label map is resized (nearest) to the
input size, one-hot encoded and average-pooled over each patch, so ``A[b,k,t]`` is the fraction of
patch ``t`` covered by segment ``k``; the segment feature is ``sum_t A[b,k,t] x[b,t] /
sum_t A[b,k,t]`` (no segment vanishes because it is thinner than a patch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ovs.methods.pmvit.config import PMViTConfig
from ovs.models.layers import MLP
from ovs.models.text import TextTransformer, tokenize


def segment_weights(
    labels: torch.Tensor, k: int, size: tuple[int, int], patch: int
) -> torch.Tensor:
    """``labels [B,H',W']`` int ids (``>= k`` or ``< 0`` ignored) -> ``A [B,K,T]`` float32, the
    fraction of each of the ``T = (H/patch)*(W/patch)`` patches of an ``H x W`` input covered by
    segment ``k`` (labels resized nearest to ``size`` first)."""
    lab = labels.long()
    if tuple(lab.shape[-2:]) != tuple(size):
        lab = F.interpolate(lab[:, None].float(), size=size, mode="nearest")[:, 0].long()
    valid = (lab >= 0) & (lab < k)
    onehot = F.one_hot(lab.clamp(0, k - 1), k).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None].float()  # [B,K,H,W]
    return F.avg_pool2d(onehot, patch).flatten(2)  # [B,K,T]


class PMViT(nn.Module):
    """Pseudo-mask ViT.

    * ``forward(images [B,3,H,W] in [0,1], labels [B,H',W'] segment ids) -> (seg_feats [B,K,E]
      L2-normalised (zero rows for empty segments), present [B,K] bool)``
    * ``encode_text(tokens [B,L]) -> [B,E]`` L2-normalised
    * ``image_embedding(seg_feats, present) -> [B,E]``: normalised mean of the present segments
    * ``logit_scale() -> scalar`` = 1/sigma, clamped to ``[1, max_logit_scale]``
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, cfg: PMViTConfig) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.cfg = cfg
        v = cfg.vit
        self.vit = VisionTransformer(
            img_size=cfg.input_size,
            patch_size=v.patch_size,
            num_classes=0,
            global_pool="",
            embed_dim=v.width,
            depth=v.depth,
            num_heads=v.heads,
            mlp_ratio=v.mlp_ratio,
            class_token=False,
            dynamic_img_size=True,  # any input side that is a multiple of the patch
            drop_path_rate=v.drop_path,
        )
        self.text = TextTransformer(cfg.text)
        e = cfg.embed_dim
        self.image_proj = MLP(v.width, e, e, 2, act="gelu")
        self.text_proj = MLP(cfg.text.width, e, e, 2, act="gelu")
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), False)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] (sides multiples of the patch) -> patch tokens ``[B,T,width]``."""
        return self.vit.forward_features((images - self.pixel_mean) / self.pixel_std)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = images.shape[-2:]
        x = self.tokens(images)  # [B,T,D]
        area = segment_weights(labels, self.cfg.num_segments, (h, w), self.cfg.vit.patch_size)
        mass = area.sum(dim=-1)  # [B,K] patches' worth of each segment
        present = mass > 0
        pooled = torch.einsum("bkt,btd->bkd", area.to(x.dtype), x) / mass.clamp_min(1e-6)[
            ..., None
        ].to(x.dtype)
        feats = F.normalize(self.image_proj(pooled), dim=-1) * present[..., None].to(x.dtype)
        return feats, present

    @staticmethod
    def image_embedding(seg_feats: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Mean of the present segments' features, re-normalised: ``[B,K,E], [B,K] -> [B,E]``."""
        n = present.sum(dim=1, keepdim=True).clamp_min(1).to(seg_feats.dtype)
        return F.normalize(seg_feats.sum(dim=1) / n, dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(tokens)), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(0.0, math.log(self.cfg.max_logit_scale)).exp()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), context_length]`` int64 on the model's device."""
        return tokenize(texts, self.cfg.text.context_length).to(self.pixel_mean.device)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T,E]`` L2-normalised embeddings of ``texts`` (float32)."""
        n = self.cfg.text_batch_size
        out = [
            self.encode_text(self.tokenize(texts[i : i + n])).float()
            for i in range(0, len(texts), n)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.cfg.embed_dim)

    @torch.no_grad()
    def segment_probs(
        self, images: torch.Tensor, labels: torch.Tensor, text_emb: torch.Tensor
    ) -> torch.Tensor:
        """Each segment classified, painted on its pixels.

        ``images [B,3,H,W]`` in [0,1], ``labels [B,H',W']`` segment ids, ``text_emb [M,E]``
        -> ``[B,M,H,W]``: ``probs[b,:,x] = softmax_m(scale * <seg_feat[b, label(x)], text[m]>)``
        (labels resized nearest to ``H x W``). Inputs whose sides are not multiples of the
        patch are resized to the next multiple for the ViT (pooling weights follow)."""
        h, w = images.shape[-2:]
        p = self.cfg.vit.patch_size
        hp, wp = math.ceil(h / p) * p, math.ceil(w / p) * p
        x = images
        if (hp, wp) != (h, w):
            x = F.interpolate(images, size=(hp, wp), mode="bilinear", align_corners=False)
        feats, _ = self(x, labels)
        cls = (self.logit_scale().float() * feats.float() @ text_emb.to(feats).float().T).softmax(
            -1
        )
        k = self.cfg.num_segments
        lab = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        lab = lab.clamp(0, k - 1)  # ignored ids do not occur in extractor output
        return torch.gather(
            cls.permute(0, 2, 1), 2, lab.flatten(1)[:, None].expand(-1, cls.shape[-1], -1)
        ).view(lab.shape[0], cls.shape[-1], h, w)
