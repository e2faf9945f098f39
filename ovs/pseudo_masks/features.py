"""Dense feature extractors for the pseudo-mask generator, looked up by name.

Each extractor is an ``nn.Module`` mapping images ``[B, 3, H, W]`` (float RGB in [0, 1]) to
per-location features ``[B, h*w, C]`` plus the feature-grid size ``(h, w)``. The S-Seg paper
clusters the last-layer tokens of a DINO ViT-S/8 (§3.3.1); its K-means baseline clusters
pixels (Table 1). ``EXTRACTORS`` is the explicit name → builder table.

Weights for the ViTs come from, in this order: ``checkpoint`` (a local file, e.g. the official
``dino_deitsmall8_pretrain.pth`` or a timm/HF ``.safetensors``), the timm Hugging Face hub when
``pretrained`` is true and the hub is reachable, or random initialisation, which is only
allowed when ``random_init=True`` is asked for explicitly (tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

# timm model names of the ViTs the pseudo-mask stage may use.
TIMM_NAMES: dict[str, str] = {
    "dino_vits8": "vit_small_patch8_224.dino",  # the paper's choice
    "dino_vits16": "vit_small_patch16_224.dino",
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but could not be loaded (offline, no checkpoint)."""


class PixelFeatures(nn.Module):
    """Colour + position features: the plain K-means baseline of S-Seg Table 1.

    Each ``stride x stride`` cell (average-pooled) becomes one point ``(r, g, b, pos_weight*y,
    pos_weight*x)`` with colours in [0, 1] and coordinates in [0, 1].
    """

    default_metric = "euclidean"

    def __init__(self, stride: int = 1, pos_weight: float = 0.25) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.pos_weight = pos_weight
        self.feat_dim = 5

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.stride, width // self.stride

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """images [B, 3, H, W] in [0, 1] -> (features [B, h*w, 5] float32, (h, w))."""
        x = images.float()
        if self.stride > 1:
            x = nn.functional.avg_pool2d(x, self.stride)
        b, _, h, w = x.shape
        ys = torch.linspace(0.0, 1.0, h, device=x.device)
        xs = torch.linspace(0.0, 1.0, w, device=x.device)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pos = torch.stack([yy, xx]).mul(self.pos_weight).expand(b, 2, h, w)
        feats = torch.cat([x, pos], dim=1).flatten(2).transpose(1, 2)
        return feats.contiguous(), (h, w)


class ViTFeatures(nn.Module):
    """Last-layer patch tokens of a timm ViT (prefix tokens dropped).

    Uses timm's ``forward_features`` (final norm applied) with fused SDPA attention.
    """

    default_metric = "cosine"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        vit: Any = model  # a timm ViT: pretrained_cfg, patch_embed... are not Module attributes
        cfg = vit.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.patch = int(vit.patch_embed.patch_size[0])
        self.feat_dim = int(vit.num_features)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch, width // self.patch

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """images [B, 3, H, W] in [0, 1] -> (tokens [B, h*w, C], (h, w)), h = H // patch."""
        h, w = self.grid_size(images.shape[-2], images.shape[-1])
        # Registered buffers and a timm ViT: nn.Module's attribute typing sees neither.
        mean, std = cast(torch.Tensor, self.mean), cast(torch.Tensor, self.std)
        vit = cast(Any, self.model)
        x = (images - mean.to(images.dtype)) / std.to(images.dtype)
        tokens = vit.forward_features(x)
        return tokens[:, self.num_prefix_tokens :], (h, w)


def _enable_fused_attention(model: nn.Module) -> None:
    # timm picks SDPA by default; make sure an env override (TIMM_FUSED_ATTN=0) did not turn it off.
    for mod in model.modules():
        if hasattr(mod, "fused_attn"):
            cast(Any, mod).fused_attn = True  # a timm Attention's flag, not a Module attribute


def build_vit(
    timm_name: str,
    *,
    pretrained: bool = True,
    checkpoint: str | None = None,
    random_init: bool = False,
    image_size: int = 224,
    seed: int = 0,
) -> ViTFeatures:
    """Build a timm ViT feature extractor; see the module docstring for the weight rules.

    ``seed`` seeds random initialisation. ``image_size`` sets the model's native input size (position embeddings are resampled from
    the checkpoint's grid); other sizes still work through timm's dynamic image size.
    """
    import timm

    kwargs: dict[str, Any] = dict(num_classes=0, img_size=image_size, dynamic_img_size=True)
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint for {timm_name} not found: {path}")
        # timm's own loader applies the model's checkpoint filter (official DINO/DINOv2 key
        # layouts, position-embedding resampling to image_size).
        model = timm.create_model(
            timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    elif pretrained and not random_init:
        try:
            model = timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as err:  # offline hub, missing cache, ...
            raise WeightsUnavailableError(
                f"could not load pretrained weights for {timm_name} ({type(err).__name__}: "
                f"{str(err)[:200]}). Offline: set `checkpoint: PATH` to a local weight file, "
                "or `random_init: true` for random weights (tests/benchmarks only)."
            ) from err
    elif random_init:
        # Seeded, so that random-weight runs (tests, benchmarks) are reproducible too.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
    else:
        raise ValueError(
            f"{timm_name}: pretrained=False without a checkpoint would give random weights; "
            "set `random_init: true` to ask for that explicitly."
        )
    _enable_fused_attention(model)
    return ViTFeatures(model.eval().requires_grad_(False))


@dataclass(frozen=True)
class ExtractorArgs:
    """Everything a builder may need; each builder reads the fields that concern it."""

    pretrained: bool = True
    checkpoint: str | None = None
    random_init: bool = False
    image_size: int = 224
    seed: int = 0  # seeds random initialisation
    pixel_stride: int = 1
    pixel_pos_weight: float = 0.25


def build_pixels(args: ExtractorArgs) -> PixelFeatures:
    """Colour + position features (no weights)."""
    return PixelFeatures(stride=args.pixel_stride, pos_weight=args.pixel_pos_weight)


def _vit_builder(timm_name: str) -> Callable[[ExtractorArgs], ViTFeatures]:
    def build(args: ExtractorArgs) -> ViTFeatures:
        return build_vit(
            timm_name,
            pretrained=args.pretrained,
            checkpoint=args.checkpoint,
            random_init=args.random_init,
            image_size=args.image_size,
            seed=args.seed,
        )

    build.__doc__ = f"Build the ``{timm_name}`` token extractor."
    return build


EXTRACTORS: dict[str, Callable[[ExtractorArgs], PixelFeatures | ViTFeatures]] = {
    "pixels": build_pixels,
    **{name: _vit_builder(timm_name) for name, timm_name in TIMM_NAMES.items()},
}


def build_extractor(name: str, args: ExtractorArgs | None = None) -> PixelFeatures | ViTFeatures:
    """Build the extractor called ``name`` (a key of ``EXTRACTORS``), in eval mode."""
    if name not in EXTRACTORS:
        raise KeyError(f"unknown feature extractor {name!r}; choose from {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](args or ExtractorArgs()).eval()
