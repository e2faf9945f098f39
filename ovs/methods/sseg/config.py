"""S-Seg's typed configuration: the model (:class:`SSegConfig`), the loss weights
(:class:`SSegLossConfig`) and the ``train.sseg`` section that holds both (:class:`SSegMethodConfig`).

Defaults are the tiny flavour (64-px inputs, runs on CPU in seconds); :func:`paper_sseg` and
:func:`paper` give the paper's configuration (what ``conf/cc12m.yaml`` uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovs.models.maskformer import MaskFormerConfig, paper_maskformer
from ovs.models.text import TextConfig, paper_text

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


@dataclass
class SSegLossConfig:
    """Loss weights (paper Sec. 3.3: all 1.0 except focal 20.0; MaskFormer focal alpha/gamma).
    Matching uses the same dice/focal weights as the loss, as MaskFormer does."""

    mask_weight: float = 1.0
    contrastive_weight: float = 1.0
    dice_weight: float = 1.0
    focal_weight: float = 20.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    num_pseudo_masks: int = 8  # K; label ids >= K are ignored (paper: 8)
    # Supervised upper bound only (``train.supervision: gt``): label ids are class ids and each
    # matched mask feature is classified against the class-name text embeddings (CE). S-Seg: 0.
    class_weight: float = 0.0
    # Multi-label image-noun InfoNCE (GroupViT's multi-label contrastive loss; not in the S-Seg
    # paper, 0 there): up to ``nouns_per_image`` caption nouns per image, each prompted with
    # ``noun_template`` (the evaluation's prompt), contrasted with the image embeddings.
    noun_weight: float = 0.0
    nouns_per_image: int = 3
    noun_template: str = "a photo of a {}."


@dataclass
class SSegMethodConfig:
    """The ``train.sseg`` section: what S-Seg trains (``model``) and with which loss (``loss``)."""

    model: SSegConfig = field(default_factory=SSegConfig)
    loss: SSegLossConfig = field(default_factory=SSegLossConfig)


def paper() -> SSegMethodConfig:
    """The paper's ``train.sseg`` section: :func:`paper_sseg` and the paper's loss weights."""
    return SSegMethodConfig(model=paper_sseg())
