"""Training augmentation applied identically to an image and its pseudo-mask label map.

Random resized crop (torchvision's sampling: area fraction in ``scale``, log-uniform aspect
ratio in ``ratio``, 10 tries then a centre crop) resized to ``size x size`` — bilinear
(antialiased) for the image, pixel-centre nearest (``nearest-exact``, the same
sampling grid as bilinear) for the labels — then a horizontal flip with probability
``hflip``. Randomness comes only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Paper: random resized crops at 224. Default scale/ratio are torchvision's (what the
    GroupViT family uses)."""

    size: int = 64  # output side (paper 224)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5


def sample_crop(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """Crop box ``(top, left, h, w)`` inside a ``height x width`` image (torchvision
    ``RandomResizedCrop.get_params``)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: centre crop with the aspect ratio clamped into ``ratio``.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(
    image: torch.Tensor, label: torch.Tensor, box: tuple[int, int, int, int], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``box`` from ``image [3,H,W]`` float and ``label [H,W]`` (same H, W) and resize both
    to ``size x size``. Returns ``(image [3,size,size] float32, label [size,size] label dtype)``.
    """
    top, left, h, w = box
    img = image[:, top : top + h, left : left + w].float()
    img = F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True)[0]
    lab = label[top : top + h, left : left + w]
    lab = F.interpolate(lab[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0]
    return img, lab.to(label.dtype)


def augment_pair(
    image: torch.Tensor, label: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random resized crop + horizontal flip, identical for both inputs.

    ``image [3,H,W]`` float in [0,1] (uint8 is divided by 255); ``label [h,w]`` integer ids at
    any resolution (e.g. the pseudo-mask feature grid): it is first resized to ``H x W``
    (nearest). Returns ``(image [3,S,S] float32, label [S,S])`` with ``S = cfg.size``.
    """
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    h, w = image.shape[-2:]
    if tuple(label.shape) != (h, w):
        label = F.interpolate(label[None, None].float(), size=(h, w), mode="nearest-exact")[
            0, 0
        ].to(label.dtype)
    box = sample_crop(h, w, cfg.scale, cfg.ratio, rng)
    image, label = resized_crop(image, label, box, cfg.size)
    if rng.uniform() < cfg.hflip:
        image, label = image.flip(-1), label.flip(-1)
    return image, label
