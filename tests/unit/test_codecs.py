"""ovs.codecs: the stored formats byte for byte, label PNG modes, tolerant and strict readers."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ovs.codecs import (
    IGNORE,
    decode_label_png,
    decode_rgb,
    encode_label_png,
    png_bytes,
    read_image,
    read_keyed,
    read_label_png,
)


def _pil_png(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def test_png_encoders_keep_their_bytes():
    """Stage outputs are compared byte for byte: PIL's default level for png_bytes, mode L at
    the given level for the stored pseudo-masks."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 16, (24, 40), dtype=np.uint8)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    assert png_bytes(label) == _pil_png(label)
    assert png_bytes(rgb) == _pil_png(rgb)
    assert png_bytes(label.astype(np.int64)) == _pil_png(label)
    assert encode_label_png(label) == _pil_png(label, compress_level=1)
    assert encode_label_png(label, 9) == _pil_png(label, compress_level=9)
    assert encode_label_png(label) != png_bytes(label)


def test_label_png_round_trip_and_modes(tmp_path):
    label = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out = decode_label_png(encode_label_png(label))
    assert out.dtype == np.uint8 and np.array_equal(out, label)
    np.testing.assert_array_equal(decode_label_png(png_bytes(label)), label)
    wide = np.array([[0, 3, 300], [255, 7, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    np.testing.assert_array_equal(
        read_label_png(tmp_path / "wide.png"), [[0, 3, IGNORE], [255, 7, IGNORE]]
    )
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: label PNG has mode RGB"):
        read_label_png(tmp_path / "rgb.png")
    with pytest.raises(OSError):
        decode_label_png(b"not a png")


def test_rgb_readers(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_rgb(png_bytes(rgb)), rgb)
    gray = decode_rgb(png_bytes(rgb[..., 0]))
    assert gray is not None and gray.shape == (6, 5, 3)
    assert decode_rgb(b"") is None and decode_rgb(None) is None and decode_rgb(b"junk") is None
    (tmp_path / "a.png").write_bytes(png_bytes(rgb))
    image = read_image(tmp_path / "a.png")
    assert image.flags.writeable and np.array_equal(image, rgb)
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(OSError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


def test_read_keyed(tmp_path):
    path = tmp_path / "00000.parquet"
    pq.write_table(pa.table({"key": ["a", "b"], "text": ["x", "y"], "n": [1, 2]}), path)
    assert read_keyed(path, ["key", "text"]) == {
        "a": {"key": "a", "text": "x"},
        "b": {"key": "b", "text": "y"},
    }
    assert read_keyed(path, ["key", "nouns"])["a"] == {"key": "a"}  # absent column left out
    assert read_keyed(tmp_path / "missing.parquet", ["key"]) == {}


def test_read_image_bounded(tmp_path):
    """At or below the bound: exactly :func:`read_image`. Above it, JPEG (DCT-scaled decode)
    and PNG alike come back with the longer side at the bound, aspect kept, close to a plain
    full decode + resize (smooth content: the two filters differ only in rounding)."""
    from PIL import Image

    from ovs.codecs import read_image, read_image_bounded

    yy, xx = np.mgrid[0:1200, 0:1600]
    img = np.stack([xx * 255 // 1600, yy * 255 // 1200, (xx + yy) % 256 // 4 + 64], -1)
    img = img.astype(np.uint8)
    for ext in ("jpg", "png"):
        path = tmp_path / f"a.{ext}"
        Image.fromarray(img).save(path, quality=95) if ext == "jpg" else Image.fromarray(img).save(
            path
        )
        same, stored = read_image_bounded(path, 1600)
        assert stored == (1200, 1600) and np.array_equal(same, read_image(path))
        assert np.array_equal(read_image_bounded(path, None)[0], read_image(path))
        small, stored = read_image_bounded(path, 400)
        assert stored == (1200, 1600) and small.shape == (300, 400, 3) and small.dtype == np.uint8
        ref = np.asarray(
            Image.fromarray(read_image(path)).resize((400, 300), Image.Resampling.LANCZOS)
        )
        assert np.abs(small.astype(int) - ref.astype(int)).mean() < 3.0
