"""Codecs of what ovs stores and reads: PNG bytes, label PNGs, RGB images, keyed parquet shards.

One module, so that every stage writes the same bytes and reads them the same way. The two PNG
encoders are not interchangeable: :func:`png_bytes` uses PIL's default zlib level (world images
and labels, evaluation label files, figures, self-training label maps) and
:func:`encode_label_png` writes mode ``L`` at an explicit level (the stored pseudo-masks,
``pseudo_masks.png_compress_level``); stage outputs are compared byte for byte, so neither
setting may change.

Label PNGs hold class or segment ids, one per pixel: modes ``P``/``L`` (uint8) as written here
and by VOC / Context / COCO tooling, or ``I``/``I;16`` (ids above 255 read as ``IGNORE``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

IGNORE = 255  # the void / ignore id of every label map
LABEL_MODES = ("P", "L", "I", "I;16")


def png_bytes(array: np.ndarray) -> bytes:
    """PNG bytes (PIL's default compression) of a ``uint8[H, W]`` or ``uint8[H, W, 3]`` array."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def encode_label_png(label: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 label map ``[h, w]`` -> PNG bytes (mode ``L``, zlib level ``compress_level``)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="L").save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()


def _label_ids(image: Image.Image, where: str) -> np.ndarray:
    if image.mode not in LABEL_MODES:
        raise ValueError(f"{where}: label PNG has mode {image.mode}, expected ids")
    raw = np.asarray(image)
    if raw.dtype != np.uint8:
        raw = np.where(raw > 255, IGNORE, raw).astype(np.uint8)
    return raw


def decode_label_png(data: bytes) -> np.ndarray:
    """Label PNG bytes -> uint8 ids ``[h, w]``; raises on corrupt data or a non-id mode."""
    with Image.open(io.BytesIO(data)) as image:
        return _label_ids(image, "label PNG bytes")


def read_label_png(path: str | Path) -> np.ndarray:
    """Label PNG file -> uint8 ids ``[H, W]``; raises ``OSError`` / ``ValueError`` naming it."""
    with Image.open(path) as image:
        return _label_ids(image, str(path))


def decode_rgb(data: bytes | None) -> np.ndarray | None:
    """Image bytes (JPEG, PNG, ...) -> uint8 ``[H, W, 3]`` RGB, or None if undecodable or empty."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - PIL raises many types; a bad image is counted by the caller
        return None
    return arr if arr.shape[0] > 0 and arr.shape[1] > 0 else None


def read_image(path: str | Path) -> np.ndarray:
    """Image file -> writable uint8 ``[H, W, 3]`` RGB (``torch.from_numpy`` can take it);
    raises PIL's ``OSError`` (``FileNotFoundError``, ``UnidentifiedImageError``, truncated
    data), which names the file."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


def read_image_bounded(
    path: str | Path, max_side: int | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image`, scaled down so its longer side is at most ``max_side`` (``None``: as
    stored). Returns ``(image, (height, width) as stored)``. A JPEG is decoded at the largest
    1/2, 1/4 or 1/8 scale still above the bound (libjpeg's DCT scaling: a fraction of the
    time and memory of a full decode), then resized with an antialiasing filter; the full
    resolution never exists in memory."""
    with Image.open(path) as im:
        stored = (im.height, im.width)
        if max_side is None or max(im.size) <= max_side:
            return np.array(im.convert("RGB"), dtype=np.uint8), stored
        scale = max_side / max(im.size)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im.draft("RGB", size)  # JPEG only; a no-op for other formats
        rgb = im.convert("RGB")
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
        return np.array(rgb, dtype=np.uint8), stored


def read_keyed(path: str | Path, columns: list[str]) -> dict[str, dict]:
    """``key -> row`` of a per-shard parquet file, with those of ``columns`` it has (``key``
    among them); a missing file (its shard not processed) gives ``{}``."""
    path = Path(path)
    if not path.is_file():
        return {}
    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[c for c in columns if c in names])
    return {r["key"]: r for r in table.to_pylist()}
