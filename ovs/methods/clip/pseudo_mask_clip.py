"""Baseline 1 of the S-Seg paper, pseudo-mask + CLIP, as a ``SegMethod``.

Each test image is cut into the pseudo-mask stage's segments (its extractor + K-means,
:class:`~ovs.pseudo_masks.masker.PseudoMasker`, at its ``image_size``); every segment is applied
to the image (pixels outside it set to zero, i.e. black) and the masked image, resized to the
CLIP's input size, is classified by CLIP: softmax over the names of ``scale * cos(image
embedding, name embedding)``. The segment's probabilities are painted on its pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from ovs.methods.clip.model import ClipModel
from ovs.pseudo_masks.masker import PseudoMaskConfig, PseudoMasker


class PseudoMaskClip:
    """Row ``pm_clip``: a :class:`~ovs.eval.method.SegMethod` on one device (eval mode)."""

    def __init__(
        self, model: ClipModel, masks: PseudoMaskConfig, device: str | torch.device = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # The evaluation's device, one batch; what the masker computes is unchanged.
        cfg = dataclasses.replace(masks, device=str(self.device), runtime="eager")
        self.masker = PseudoMasker(cfg)
        self.k = cfg.k
        self.seed = cfg.seed
        self.input_size = model.cfg.vision.image_size if not model.cfg.model else None

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """``[T, E]`` L2-normalised."""
        tokens = self.model.tokenize(texts).to(self.device)
        return self.model.encode_text(tokens).float()

    def segments(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> int64 ``[B, H, W]`` segment ids in [0, k) (the masker's
        label grid, nearest-upsampled)."""
        b, _, h, w = images.shape
        size = self.masker.cfg.image_size
        x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
        u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        grid = torch.from_numpy(self.masker.labels(np.ascontiguousarray(u8), [self.seed] * b))
        grid = grid.to(self.device, torch.float32)[:, None]  # [B, 1, gh, gw]
        return F.interpolate(grid, size=(h, w), mode="nearest")[:, 0].long()

    def _side(self) -> int:
        if self.input_size is not None:
            return self.input_size
        size = self.model.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @torch.no_grad()
    def dense_probs(self, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1], ``[M, E]`` -> ``[B, M, H, W]``: every pixel carries the
        class probabilities of its segment's masked image (sum to 1 over M)."""
        images = images.to(self.device, torch.float32)
        b, _, h, w = images.shape
        seg = self.segments(images)  # [B, H, W]
        onehot = F.one_hot(seg, self.k).permute(0, 3, 1, 2).to(images.dtype)  # [B, K, H, W]
        masked = images[:, None] * onehot[:, :, None]  # [B, K, 3, H, W]
        side = self._side()
        crops = F.interpolate(
            masked.reshape(b * self.k, 3, h, w),
            size=(side, side),
            mode="bilinear",
            align_corners=False,
        )
        emb = self.model.encode_image(crops).float()  # [B*K, E]
        logits = self.model.logit_scale().float() * emb @ text_emb.to(emb).T
        probs = logits.softmax(dim=-1).view(b, self.k, -1)  # [B, K, M]
        return torch.einsum("bkm,bkhw->bmhw", probs, onehot)
