"""GroupViT (Xu et al. 2022): a grouping ViT and a text Transformer aligned in one space.

Training: ``groups = model(images)`` (the final groups, projected and L2-normalised); the image
embedding is the normalised projection of the groups' mean (GroupViT's average pooling), the
text embedding the projected [EOT] feature; losses in :mod:`ovs.methods.groupvit.objective`.
Inference (:meth:`GroupViT.dense_probs`): the grouping blocks' assignments, composed, give
each patch its final group (argmax after a bilinear upsampling of the group maps to the image
size); each group is classified against the class texts (softmax of scaled cosines); a pixel
gets its group's class distribution, so the harness's max-probability threshold is GroupViT's
background rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ovs.methods.groupvit.config import GroupViTConfig
from ovs.methods.groupvit.grouping import GroupingEncoder, patch_to_groups
from ovs.models.layers import MLP
from ovs.models.text import TextTransformer, tokenize


class GroupViT(nn.Module):
    """GroupViT model.

    * ``forward(images [B,3,H,W] in [0,1]) -> groups [B,S,E]`` projected, L2-normalised
    * ``encode_image(images) -> (image_emb [B,E], groups [B,S,E], maps [B,S,h*w])``
    * ``encode_text(tokens [B,L]) -> [B,E]`` L2-normalised
    * ``logit_scale() -> scalar`` = 1/sigma, clamped to ``[1, max_logit_scale]``
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, cfg: GroupViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image = GroupingEncoder(cfg.image)
        self.text = self.build_text()
        w, e, hid = cfg.image.width, cfg.embed_dim, cfg.proj_hidden
        self.image_proj = MLP(w, hid, e, 2, act="gelu")
        self.text_proj = MLP(self.text_width(), hid, e, 2, act="gelu")
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), False)

    # -------------------------------------------------------------- text tower (overridable)

    def build_text(self) -> nn.Module:
        return TextTransformer(self.cfg.text)

    def text_width(self) -> int:
        return self.cfg.text.width

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), context_length]`` int64 on the model's device."""
        return tokenize(texts, self.cfg.text.context_length).to(self.pixel_mean.device)

    # ------------------------------------------------------------------ training interface

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``images [B,3,H,W]`` in [0,1], sides multiples of the patch size -> ``(image_emb
        [B,E], groups [B,S,E]`` both L2-normalised, ``maps [B,S,N]`` the final groups'
        assignment over the N patches)."""
        x = (images - self.pixel_mean) / self.pixel_std
        groups, assigns, _ = self.image(x)
        image_emb = F.normalize(self.image_proj(groups.mean(dim=1)), dim=-1)
        return image_emb, F.normalize(self.image_proj(groups), dim=-1), patch_to_groups(assigns)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)[1]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(tokens)), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(0.0, math.log(self.cfg.max_logit_scale)).exp()

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T,E]`` L2-normalised embeddings of ``texts`` (float32); call ``eval()`` first."""
        n = self.cfg.text_batch_size
        out = [
            self.encode_text(self.tokenize(texts[i : i + n])).float()
            for i in range(0, len(texts), n)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.cfg.embed_dim)

    @torch.no_grad()
    def group_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [B,3,H,W]`` -> ``(groups [B,S,E]`` normalised float32, ``onehot
        [B,S,H,W]`` each pixel's final group)``. Inputs are zero-padded (after normalisation)
        to multiples of the patch size; the group maps are upsampled (bilinear) to the padded
        size, argmaxed over the groups and cropped back."""
        _, _, h, w = images.shape
        p = self.cfg.image.patch_size
        ph, pw = (-h) % p, (-w) % p
        x = F.pad((images - self.pixel_mean) / self.pixel_std, (0, pw, 0, ph))
        groups, assigns, _ = self.image(x)
        maps = patch_to_groups(assigns)  # eval: no Gumbel noise; one-hot when hard
        b, s, _ = maps.shape
        maps = maps.float().reshape(b, s, (h + ph) // p, (w + pw) // p)
        maps = F.interpolate(maps, size=(h + ph, w + pw), mode="bilinear")[..., :h, :w]
        onehot = F.one_hot(maps.argmax(dim=1), s).permute(0, 3, 1, 2).float()
        return F.normalize(self.image_proj(groups), dim=-1).float(), onehot

    @torch.no_grad()
    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``images [B,3,H,W]`` RGB in [0,1], ``text_emb [M,E]`` normalised -> ``[B,M,H,W]``:
        ``probs[b,:,x] = softmax_m(logit_scale * <group(x), text[m]>)`` where ``group(x)`` is
        pixel x's final group (:meth:`group_maps`)."""
        groups, onehot = self.group_maps(images)
        cls = (self.logit_scale().float() * groups @ text_emb.to(groups).T).softmax(dim=-1)
        return torch.einsum("bsm,bshw->bmhw", cls, onehot)

    def image_backbone(self) -> nn.Module:
        """The grouping image encoder."""
        return self.image
