"""The S-Seg+ segmenter's typed config (the ``self_train.model`` section): backbone + head."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SegmenterConfig:
    """Backbone + head. Defaults: the tiny CPU flavour (half-width ResNet-18, 64-channel head,
    random init); :func:`paper_segmenter` gives the paper's ViT-B/16 (MAE) + UperNet."""

    backbone: str = "resnet18"  # timm name; paper: vit_base_patch16_224.mae
    pretrained: bool = False  # timm hub weights (needs network or a warm HF cache)
    checkpoint: str | None = None  # local backbone weights file (.pth/.safetensors), timm keys
    backbone_kwargs: dict[str, bool | int | float | str | list[int]] = field(
        default_factory=lambda: {"channels": [32, 64, 128, 256]}
    )
    # forward_intermediates indices: ResNet (1, 2, 3, 4) = strides 4..32; ViT-B (3, 5, 7, 11) =
    # blocks 4, 6, 8, 12 (the paper's choice).
    out_indices: tuple[int, ...] = (1, 2, 3, 4)
    channels: int = 64  # UperNet width (mmseg UperNet on MAE/BEiT: 768; ResNet configs: 512)
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1  # before the classifier (mmseg default)


def paper_segmenter() -> SegmenterConfig:
    """Paper (Table 6): UperNet on an MAE-pretrained ViT-B/16, features of blocks 4/6/8/12."""
    return SegmenterConfig(
        backbone="vit_base_patch16_224.mae",
        pretrained=True,
        backbone_kwargs={"img_size": 512, "dynamic_img_size": True, "drop_path_rate": 0.1},
        out_indices=(3, 5, 7, 11),
        channels=768,
    )
