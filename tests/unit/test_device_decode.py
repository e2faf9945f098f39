"""Decoding on the masker's device: same images as the PIL path, same skip rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ovs.codecs import decode_label_png
from ovs.pseudo_masks.device_decode import decode_resize, decode_resize_batch, resize_uint8
from ovs.pseudo_masks.masker import PseudoMaskConfig, PseudoMasker

CPU = torch.device("cpu")


def _smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour field (JPEG- and resize-friendly, unlike noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [
        np.sin(2 * np.pi * (rng.uniform(0.5, 2) * yy + rng.uniform(0.5, 2) * xx)) for _ in "rgb"
    ]
    return ((np.stack(chans, -1) + 1) * 127.5).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def test_resize_matches_pil_bicubic():
    img = _smooth_image(120, 90, 0)
    ours = resize_uint8(torch.from_numpy(img).permute(2, 0, 1), 32).numpy()
    pil = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BICUBIC))
    diff = np.abs(ours.astype(int) - pil.astype(int))
    assert ours.shape == (32, 32, 3) and ours.dtype == np.uint8
    assert diff.mean() < 1.0 and diff.max() <= 8
    same = torch.from_numpy(img[:32, :32]).permute(2, 0, 1)
    assert np.array_equal(resize_uint8(same, 32).numpy(), img[:32, :32])  # no-op at size


def test_batch_decode_agrees_with_pil_and_skips_what_pil_skips():
    imgs = [_smooth_image(h, w, s) for s, (h, w) in enumerate([(96, 128), (64, 64), (200, 50)])]
    good = [_encode(i) for i in imgs]
    data = [
        good[0],
        _encode(imgs[1], mode="L"),  # greyscale JPEG -> RGB
        _encode(imgs[2], fmt="PNG"),  # not a JPEG: PIL fallback
        b"\xff\xd8\xff" + b"\x00" * 50,  # JPEG magic, garbage body
        b"garbage",
        b"",
        None,
        good[2],
    ]
    out = decode_resize_batch(data, 48, CPU)
    ref = [decode_resize(d, 48) for d in data]
    assert (
        [o is None for o in out] == [r is None for r in ref] == [False] * 3 + [True] * 4 + [False]
    )
    for o, r in zip(out, ref, strict=True):
        if r is not None:
            assert o.shape == (48, 48, 3) and o.dtype == torch.uint8 and o.device == CPU
            diff = np.abs(o.numpy().astype(int) - r.astype(int))
            assert diff.mean() < 2.0


def _blocks(size: int, seed: int) -> np.ndarray:
    """Four flat colour blocks (clear segments for K = 4) with a little smooth shading."""
    rng = np.random.default_rng(seed)
    colours = rng.permutation(
        np.array([[220, 30, 30], [30, 200, 40], [40, 60, 210], [230, 220, 40]])
    )
    img = np.zeros((size, size, 3), np.float64)
    h = size // 2
    for i, (y, x) in enumerate([(0, 0), (0, h), (h, 0), (h, h)]):
        img[y : y + h, x : x + h] = colours[i]
    return np.clip(img + 0.1 * _smooth_image(size, size, seed), 0, 255).astype(np.uint8)


def test_masker_device_decode_gives_the_cpu_path_statuses_and_masks():
    imgs = [_blocks(64, s) for s in range(4)]
    jpgs = [_encode(i) for i in imgs]
    batch = {"key": list("abcdef"), "jpg": [jpgs[0], b"corrupt", jpgs[1], jpgs[2], None, jpgs[3]]}
    cfg = dict(image_size=32, k=4, batch_size=3)
    cpu = PseudoMasker(PseudoMaskConfig(**cfg), device="cpu")(batch)
    dev_masker = PseudoMasker(PseudoMaskConfig(**cfg, decode="device"), device="cpu")
    dev = dev_masker(batch)
    assert (
        list(dev["status"])
        == list(cpu["status"])
        == ["ok", "decode_error", "ok", "ok"]
        + [
            "decode_error",
            "ok",
        ]
    )
    assert dev_masker.counts == {"ok": 4, "decode_error": 2, "bad_image": 0}
    # Resize rounding differs by a level here and there; the segmentations barely move (label
    # ids may permute, hence the adjusted Rand index).
    from sklearn.metrics import adjusted_rand_score

    agree = [
        adjusted_rand_score(decode_label_png(a).ravel(), decode_label_png(b).ravel())
        for a, b, s in zip(dev["label_png"], cpu["label_png"], cpu["status"], strict=True)
        if s == "ok"
    ]
    assert min(agree) > 0.8
    with pytest.raises(ValueError):
        PseudoMasker(PseudoMaskConfig(decode="gpu"))


def test_device_without_jpeg_decoding_falls_back_to_pil(monkeypatch):
    """A TorchCodec build that cannot decode on the device: every image still decodes (PIL)."""
    import torchcodec.decoders

    def unsupported(*args, **kwargs):
        raise NotImplementedError("no JPEG decoding on this device")

    monkeypatch.setattr(torchcodec.decoders, "decode_jpeg", unsupported)
    data = [_encode(_smooth_image(40, 30, s)) for s in range(3)] + [b"junk"]
    out = decode_resize_batch(data, 16, CPU)
    ref = [decode_resize(d, 16) for d in data]
    assert [o is None for o in out] == [False, False, False, True]
    for o, r in zip(out[:3], ref[:3], strict=True):
        assert np.array_equal(o.numpy(), r)
