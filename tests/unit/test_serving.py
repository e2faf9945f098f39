"""Serving without Ray (ovs.serving): every refused input gets its 4xx and message, and a batch
of requests gives the label maps each request gets alone."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ovs.codecs import png_bytes
from ovs.serving import BadRequest, Segmenter, ServeConfig, parse_request

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ServeConfig(short_side=64, max_long_side=128, protocol="tiny", max_pixels=100 * 100,
                   max_classes=4, max_class_chars=60)  # fmt: skip


def _png(h=30, w=50, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _status(data, ctype="image/png", classes="cat,dog", bg=None) -> tuple[int, str]:
    with pytest.raises(BadRequest) as e:
        parse_request(data, ctype, classes, bg, TINY)
    return e.value.status, e.value.message


def test_bad_requests_get_a_clear_4xx():
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(jpeg, "JPEG")
    assert _status(b"hello", "text/plain")[0] == 415
    assert _status(b"not an image at all")[0] == 400
    assert "truncated" in _status(jpeg.getvalue()[:200], "image/jpeg")[1]
    assert _status(_png(120, 100))[0] == 413  # 12000 > 10000 pixels, refused on the header
    assert "empty class list" in _status(_png(), classes=" , |")[1]
    assert "at most 4" in _status(_png(), classes="a,b,c,d,e")[1]
    assert "characters" in _status(_png(), classes="x" * 61)[1]
    assert _status(_png(), bg="1.5")[0] == 400 and _status(_png(), bg="high")[0] == 400
    req = parse_request(_png(), "image/png; charset=binary", "cat|kitten, dog", "0.2", TINY)
    assert req.image.shape == (30, 50, 3) and req.classes == [["cat", "kitten"], ["dog"]]
    assert req.bg_threshold == 0.2


def test_a_batch_answers_as_each_request_alone():
    from ovs.eval.method import MethodRef, load_method

    method = load_method(MethodRef("maskclip", None, "tiny", None, "cpu"))
    seg = Segmenter(method, TINY)
    reqs = [
        parse_request(_png(30, 50, 0), "image/png", "cat,dog|puppy", None, TINY),
        parse_request(_png(30, 50, 1), "image/png", "cat,dog|puppy", None, TINY),  # shares
        parse_request(_png(40, 40, 2), "image/png", "sky,grass,tree", "0.4", TINY),
    ]
    batched = seg(reqs)
    for r, b in zip(reqs, batched, strict=True):
        (alone,) = seg([r])
        label = np.asarray(Image.open(io.BytesIO(b.label_png)))
        assert label.shape == r.image.shape[:2]
        assert np.array_equal(label, np.asarray(Image.open(io.BytesIO(alone.label_png))))
        assert b.fractions.keys() == set(b.classes)
        assert sum(b.fractions.values()) == pytest.approx(1.0)
        counts = np.bincount(label.ravel(), minlength=len(b.classes))
        assert [b.fractions[n] for n in b.classes] == pytest.approx(counts / label.size)
    assert batched[2].classes == ["background", "sky", "grass", "tree"]
    assert Image.open(io.BytesIO(batched[0].overlay_png)).size[0] > 50  # overlay + legend
