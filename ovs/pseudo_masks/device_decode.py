"""Decode + resize of the masker's images: PIL per image on the CPU, or batched JPEG decode on a
torch device (nvJPEG on CUDA, libjpeg-turbo on CPU).

With ``pseudo_masks.decode: device`` the pseudo-mask actors get the encoded bytes and decode
each batch on their own device with TorchCodec's ``decode_jpeg`` (which supersedes the
deprecated ``torchvision.io`` decoders), instead of Ray Data CPU tasks decoding with PIL. On a
GPU node, CPU decoding of ~5,000 images/s would take most of the node's cores; nvJPEG does it on
the GPU next to the forward.

Each image is resized to ``size x size`` with antialiased bicubic interpolation, which is what
PIL's BICUBIC resize does when it downscales (:func:`decode_resize`, the CPU path). Bytes that
are not a JPEG (PNG, WebP, ...) or that TorchCodec fails on are decoded by PIL one by one;
bytes neither can decode give None, as :func:`decode_resize` does.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from PIL import Image

JPEG_MAGIC = b"\xff\xd8\xff"


def resize_rgb(image: Image.Image, size: int) -> np.ndarray:
    """PIL image -> uint8 [size, size, 3] RGB, BICUBIC (antialiased when it downscales)."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def decode_resize(data: bytes | None, size: int) -> np.ndarray | None:
    """Decode image bytes (JPEG, PNG, ...) on the CPU with PIL to uint8 [size, size, 3] RGB;
    None if unreadable (the ``decode: cpu`` path, and this module's per-image fallback).

    Never raises: corrupt, truncated, empty or absurdly large inputs all give None.
    """
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return resize_rgb(image, size)
    except Exception:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
        return None


def resize_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [size, size, 3], antialiased bicubic (as PIL's BICUBIC)."""
    if image.shape[-2:] != (size, size):
        x = image.unsqueeze(0).float()
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bicubic", antialias=True, align_corners=False
        )
        image = x.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)
    return image.permute(1, 2, 0)


def _decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """JPEG bytes -> uint8 [3, H, W] on ``device`` (None where TorchCodec fails)."""
    from torchcodec.decoders import decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    # Broad excepts: a corrupt image raises RuntimeError, a build without decoding on this
    # device raises other types; either way the image goes to the PIL fallback, never a crash.
    try:  # one batched call (nvJPEG batches on CUDA)
        return list(decode_jpeg(tensors, mode="RGB", device=device))
    except Exception:
        pass  # at least one bad image: find it
    decoded: list[torch.Tensor | None] = []
    for t in tensors:
        try:
            # One tensor in, one tensor out (the stub types the return as the union).
            decoded.append(cast(torch.Tensor, decode_jpeg(t, mode="RGB", device=device)))
        except Exception:
            decoded.append(None)
    return decoded


def decode_resize_batch(
    datas: Sequence[bytes | None], size: int, device: torch.device
) -> list[torch.Tensor | None]:
    """Encoded images -> uint8 [size, size, 3] tensors on ``device``, or None if undecodable."""
    out: list[torch.Tensor | None] = [None] * len(datas)
    raw = [bytes(d) if d is not None else b"" for d in datas]
    jpeg_idx = [i for i, d in enumerate(raw) if d.startswith(JPEG_MAGIC)]
    fallback = [i for i, d in enumerate(raw) if d and not d.startswith(JPEG_MAGIC)]
    if jpeg_idx:
        for i, img in zip(jpeg_idx, _decode_jpegs([raw[i] for i in jpeg_idx], device)):
            if img is None:
                fallback.append(i)
            else:
                out[i] = resize_uint8(img, size)
    for i in sorted(fallback):
        arr: np.ndarray | None = decode_resize(raw[i], size)
        if arr is not None:
            out[i] = torch.from_numpy(arr.copy()).to(device)
    return out
