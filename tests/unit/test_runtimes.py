"""Extractor runtimes: which one "auto" picks, and that each computes the eager features."""

from __future__ import annotations

import pytest
import torch

from ovs.pseudo_masks.features import ExtractorArgs, build_extractor
from ovs.pseudo_masks.runtimes import (
    EagerForward,
    InductorForward,
    OneDNNGraphForward,
    build_forward,
    onednn_fuses,
    resolve_runtime,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def vit():
    # dino_vits8 at 32 px: 16 tokens + CLS, the paper's architecture at a test-sized input.
    return build_extractor("dino_vits8", ExtractorArgs(random_init=True, image_size=32, seed=3))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.float(), b.float()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_auto_picks_onednn_graph_for_vits_on_cpu_only(vit):
    pixels = build_extractor("pixels")
    bf16 = "onednn_graph" if onednn_fuses(torch.bfloat16) else "eager"  # needs AVX-512/AMX
    assert resolve_runtime("auto", CPU, vit, torch.bfloat16) == bf16
    assert resolve_runtime("auto", CPU, vit, None) == "onednn_graph"
    assert resolve_runtime("auto", CPU, vit, torch.float16) == "eager"
    assert resolve_runtime("auto", CUDA, vit, torch.bfloat16) == "eager"
    assert resolve_runtime("auto", CPU, pixels, torch.bfloat16) == "eager"
    assert resolve_runtime("inductor", CUDA, vit, torch.bfloat16) == "inductor"
    for bad in (
        ("onednn_graph", CUDA, vit, torch.bfloat16),
        ("onednn_graph", CPU, vit, torch.float16),
        ("onednn_graph", CPU, pixels, None),
        ("tensorrt", CPU, vit, None),
    ):
        with pytest.raises(ValueError):
            resolve_runtime(*bad)
    assert isinstance(build_forward(pixels, "auto", CPU, torch.bfloat16), EagerForward)


@pytest.mark.parametrize("dtype", [torch.bfloat16, None])
def test_onednn_graph_matches_eager_and_fuses(vit, dtype):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref, grid = EagerForward(vit, CPU, dtype)(x)
        fwd = build_forward(vit, "onednn_graph", CPU, dtype, batch_size=2)
        assert isinstance(fwd, OneDNNGraphForward)
        out, out_grid = fwd(x)  # 2 + 1 padded
        graph = str(torch.jit.last_executed_optimized_graph())
    assert out_grid == grid == (4, 4) and out.shape == ref.shape == (3, 16, 384)
    assert out.dtype == (dtype or torch.float32)
    # The attention and linear layers run in fused oneDNN partitions, not op by op (bf16 only
    # where this CPU has oneDNN bf16 kernels).
    if onednn_fuses(dtype):
        assert "oneDNNFusionGroup" in graph
    floor = 0.99 if dtype is not None else 0.9999
    assert float(_cos(out, ref).min()) > floor
    # The eager module is left as it was (SDPA attention, float32 weights).
    assert all(m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn"))
    assert next(vit.parameters()).dtype == torch.float32


def test_onednn_graph_features_do_not_depend_on_batching(vit):
    # 3 images in batches of 2: a full and a padded batch, as many as the property needs.
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fwd = OneDNNGraphForward(vit, torch.bfloat16, batch_size=2)
        whole = fwd(x)[0]
        again = fwd(x)[0]
        singles = torch.cat([fwd(x[i : i + 1])[0] for i in range(3)])
        other = OneDNNGraphForward(vit, torch.bfloat16, batch_size=2)(x.flip(0))[0].flip(0)
    assert torch.equal(whole, again) and torch.equal(whole, singles) and torch.equal(whole, other)
    assert list(fwd.traced) == [(3, 32, 32)]  # one graph for the image shape
    with pytest.raises(ValueError):
        OneDNNGraphForward(vit, None, batch_size=0)


def test_inductor_runtime_matches_eager(monkeypatch):
    # Compile in this process: on 2 cores the default pool of compile workers (each a fresh
    # interpreter importing torch) costs more than the one small kernel it would compile.
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "compile_threads", 1)
    pixels = build_extractor("pixels", ExtractorArgs(pixel_stride=4))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    fwd = build_forward(pixels, "inductor", CPU, None)
    assert isinstance(fwd, InductorForward)
    with torch.inference_mode():
        (out, grid), (ref, ref_grid) = fwd(x), pixels(x)
    assert grid == ref_grid == (4, 4)
    torch.testing.assert_close(out, ref)


def test_auto_runtime_follows_native_bf16(vit, monkeypatch):
    """bf16 goes to oneDNN Graph only where the CPU has bf16 kernels (ovs.precision)."""
    from ovs import precision

    for native, expected in ((True, "onednn_graph"), (False, "eager")):
        monkeypatch.setattr(precision, "cpu_native_bf16", lambda native=native: native)
        assert onednn_fuses(torch.bfloat16) is native and onednn_fuses(None)
        assert resolve_runtime("auto", CPU, vit, torch.bfloat16) == expected
        assert resolve_runtime("auto", CPU, vit, precision.resolve_dtype("auto", CPU)) == (
            "onednn_graph"
        )
