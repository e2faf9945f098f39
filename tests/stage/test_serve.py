"""``python -m tools.serve``'s application on the session's local Ray: a real Ray Serve HTTP
proxy on loopback, a real HTTP client (httpx) and the page driven in headless Chromium.
One test (one Serve start): answers, batching that answers as one request alone, every
refused input's 4xx while the server keeps serving, and upload -> overlay on the page."""

from __future__ import annotations

import base64
import io
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

from ovs.codecs import png_bytes
from ovs.serving import ServeConfig
from tests import browser
from tests.unit.test_eval_segment import _tiny_sseg

pytestmark = pytest.mark.usefixtures("one_thread")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(h, w, seed) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _label(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["label_png"]))))


def test_served_model_api_batching_errors_and_page(tmp_path, ray_local):
    import httpx
    from ray import serve

    from ovs.methods.sseg.checkpoint import save_checkpoint
    from tools.serve.__main__ import build_parser, resolve_model, start

    workdir = tmp_path / "work"
    ckpt = workdir / "train" / "abc" / "model" / "latest.pt"
    save_checkpoint(_tiny_sseg(), ckpt, {"step": 1})
    args = build_parser().parse_args(
        ["--checkpoint", str(workdir), "--port", str(_port()), "--protocol", "tiny",
         "--short-side", "64", "--max-long-side", "128", "--num-cpus", "0.5",
         "--max-pixels", "40000", "--max-batch-size", "8", "--batch-wait-timeout-s", "0.2"]
    )  # fmt: skip
    cfg = ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig)})
    model = resolve_model(args)
    assert model["checkpoint"] == str(ckpt.resolve())  # the workdir's checkpoint, fixed now
    url = start(model, cfg, name="ovs-test")
    assert url.startswith("http://127.0.0.1:")  # loopback by default
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            assert "<form" in client.get("/").text

            def post(body, classes="sky,tree|bush,grass", ctype="image/png", **params):
                return client.post("/segment", content=body, headers={"Content-Type": ctype},
                                   params={"classes": classes, **params})  # fmt: skip

            one = post(_png(30, 50, 0), bg_threshold="0.3")
            assert one.status_code == 200, one.text
            j = one.json()
            assert j["classes"] == ["background", "sky", "tree", "grass"]
            assert _label(one).shape == (30, 50) and (j["width"], j["height"]) == (50, 30)
            assert sum(j["fractions"].values()) == pytest.approx(1.0)
            # 8 concurrent clients: batched on the replica, each answered as if alone
            bodies = [_png(30, 50, s) for s in range(8)]
            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(post, bodies))
            for body, r in zip(bodies, together, strict=True):
                assert r.status_code == 200
                assert np.array_equal(_label(r), _label(post(body)))
            refused = {
                "wrong content type": post(b"hello", ctype="text/plain"),
                "not an image": post(b"certainly not a png"),
                "truncated": post(_png(30, 50, 0)[:100]),
                "too many pixels": post(_png(250, 250, 0)),
                "empty classes": post(_png(30, 50, 0), classes=" , "),
                "too many classes": post(_png(30, 50, 0), classes=",".join(f"c{i}" for i in range(65))),
            }  # fmt: skip
            assert {k: r.status_code for k, r in refused.items()} == {
                "wrong content type": 415, "not an image": 400, "truncated": 400,
                "too many pixels": 413, "empty classes": 400, "too many classes": 400,
            }  # fmt: skip
            assert all(r.json()["error"] for r in refused.values())
            assert post(_png(30, 50, 0)).status_code == 200  # still serving
        image = tmp_path / "photo.png"
        image.write_bytes(_png(48, 64, 3))
        page = browser.Page(url)
        try:
            page.set_file("#file", image)
            page.eval("document.getElementById('classes').value = 'sky,tree|bush'")
            page.eval("document.getElementById('submit').click()")
            width = page.wait_for(
                "document.getElementById('error').textContent || "
                "document.getElementById('overlay').naturalWidth",
                120,
            )
            assert width == page.eval("document.getElementById('overlay').naturalWidth") > 64
            assert page.eval("document.querySelectorAll('tr.fraction').length") == 2
            page.screenshot(tmp_path / "served_page.png")
        finally:
            page.close()
    finally:
        serve.shutdown()
