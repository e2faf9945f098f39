"""Baseline 2 of the S-Seg paper (seed 002, Sec. 4.1), the pseudo-mask ViT: typed configuration.

:class:`PMViTConfig` is the model (a plain ViT, the text Transformer of S-Seg, projections and the
test-time pseudo-mask extractor); :class:`PMViTMethodConfig` is the ``train.pmvit`` section.
Defaults are the tiny flavour (64-px inputs, CPU seconds); :func:`paper` is the paper scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovs.methods.sseg.config import IMAGENET_MEAN, IMAGENET_STD
from ovs.models.text import TextConfig, paper_text
from ovs.pseudo_masks.masker import PseudoMaskConfig


@dataclass
class ViTConfig:
    """The plain ViT image tower (timm ``VisionTransformer``, no class token, every patch token
    kept). Defaults: tiny (8-px patches, width 64, 2 blocks)."""

    patch_size: int = 8
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    drop_path: float = 0.0


@dataclass
class PMViTConfig:
    """The whole pseudo-mask ViT. ``num_segments`` is K of the pseudo-masks (label ids >= K are
    ignored, as in S-Seg); ``test_masks`` is the extractor + K-means that segments a test image
    (the pseudo-mask stage's; its ``k`` must equal ``num_segments``)."""

    vit: ViTConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 64  # shared image-text space
    init_temperature: float = 0.07  # sigma at init (CLIP); learnable
    max_logit_scale: float = 100.0  # 1/sigma clamped to [1, 100] (CLIP)
    input_size: int = 64  # training crop side
    num_segments: int = 8  # K of the pseudo-masks
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    test_masks: PseudoMaskConfig = field(default_factory=PseudoMaskConfig)
    text_batch_size: int = 256  # names encoded per forward in text_embeddings

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad ``train.pmvit.model.*`` setting."""
        v = self.vit
        if v.width % v.heads:
            raise ValueError(f"train.pmvit.model.vit.width {v.width} not divisible by heads")
        if self.input_size % v.patch_size:
            raise ValueError(
                f"train.pmvit.model.input_size {self.input_size} is not a multiple of "
                f"vit.patch_size {v.patch_size}"
            )
        if self.num_segments < 1:
            raise ValueError(
                f"train.pmvit.model.num_segments must be >= 1, got {self.num_segments}"
            )
        if self.test_masks.k != self.num_segments:
            raise ValueError(
                f"train.pmvit.model.test_masks.k ({self.test_masks.k}) must equal num_segments "
                f"({self.num_segments}): test segments are the training pseudo-masks' kind"
            )
        self.test_masks.validate()


def paper_pmvit() -> PMViTConfig:
    """Paper scale. The S-Seg paper names no size for baseline 2's ViT; ViT-S/16 (22M, close to
    S-Seg's Swin-S image tower in width) with S-Seg's paper text tower, 256-d space, 224 crops,
    K = 8, and the paper's pseudo-mask extractor (DINO ViT-S/8 features, K-means) at test time."""
    return PMViTConfig(
        vit=ViTConfig(patch_size=16, width=384, depth=12, heads=6, drop_path=0.1),
        text=paper_text(),
        embed_dim=256,
        input_size=224,
        test_masks=PseudoMaskConfig(extractor="dino_vits8", image_size=224, k=8),
    )


@dataclass
class PMViTMethodConfig:
    """The ``train.pmvit`` section: the model; the loss is symmetric InfoNCE alone."""

    model: PMViTConfig = field(default_factory=PMViTConfig)

    def validate(self) -> None:
        self.model.validate()


def paper() -> PMViTMethodConfig:
    """The paper-scale ``train.pmvit`` section."""
    return PMViTMethodConfig(model=paper_pmvit())
