"""How a feature extractor's forward is run: eager, torch.compile, or TorchScript + oneDNN Graph.

A runtime wraps an extractor (``ovs.pseudo_masks.features``) into a callable ``images [B, 3, H, W] float in
[0, 1] -> (features [B, h*w, C], (h, w))`` that computes in a given dtype. ``RUNTIMES`` names
them; ``resolve_runtime`` turns ``"auto"`` into one:

- ``eager``: the module itself under ``torch.autocast`` (fused SDPA attention).
- ``inductor``: ``torch.compile`` with weight freezing, under autocast.
- ``onednn_graph`` (CPU only): the ViT is cast to the compute dtype, traced with TorchScript,
  frozen, and run with oneDNN Graph fusion, which fuses the explicit matmul-softmax-matmul
  attention and the linear layers' epilogues. On CPU, PyTorch's fused SDPA kernel runs bf16
  attention no faster than fp32; the fused oneDNN partitions run it in bf16.
  Measured on the 2-core EPYC box, ``dino_vits8`` at 224 px, batch 16, bf16: eager 147 ms/img,
  inductor with freezing 115, oneDNN Graph 66 (features cosine 0.9999 to eager autocast).
  Each image shape is traced once, for a fixed batch size (short batches are padded), and run
  twice to warm up: TorchScript's profiling executor runs the first call of a graph unfused.

``"auto"`` follows the compute dtype the caller resolved (the masker's ``autocast: auto`` is
bfloat16 only where bf16 is native, :mod:`ovs.precision`): ``onednn_graph`` for ViTs on CPU
(unless the dtype is float16, which oneDNN Graph does not run on CPU, or bfloat16 on a CPU
without oneDNN bf16 kernels) and ``eager`` everywhere else. On GPUs, ``inductor`` is the one to try; it is not the default
because it has not been measured on one here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from ovs import precision
from ovs.pseudo_masks.features import PixelFeatures, ViTFeatures

RUNTIMES = ("auto", "eager", "inductor", "onednn_graph")

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, tuple[int, int]]]


def onednn_fuses(dtype: torch.dtype | None) -> bool:
    """Whether oneDNN Graph fuses ``dtype`` on this CPU: float32 on any x86 CPU, bfloat16
    only where oneDNN has bf16 kernels (AVX-512 or AMX); elsewhere it would run unfused."""
    if dtype in (None, torch.float32):
        return True
    return dtype == torch.bfloat16 and precision.cpu_native_bf16()


def resolve_runtime(
    name: str, device: torch.device, extractor: nn.Module, dtype: torch.dtype | None
) -> str:
    """The runtime ``name`` stands for on ``device`` (``"auto"`` resolved); raises if unusable."""
    if name not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {name!r}")
    if name == "auto":
        usable = device.type == "cpu" and dtype in (None, torch.bfloat16) and onednn_fuses(dtype)
        return "onednn_graph" if usable and isinstance(extractor, ViTFeatures) else "eager"
    if name == "onednn_graph":
        if device.type != "cpu":
            raise ValueError(f"runtime onednn_graph runs on CPU only, not on {device}")
        if dtype not in (None, torch.bfloat16):
            raise ValueError(f"runtime onednn_graph computes in float32 or bfloat16, not {dtype}")
        if not isinstance(extractor, ViTFeatures):
            raise ValueError("runtime onednn_graph is for ViT extractors")
    return name


class EagerForward:
    """The extractor as is, under autocast when ``dtype`` is set."""

    def __init__(self, extractor: nn.Module, device: torch.device, dtype: torch.dtype | None):
        self.module: Forward = extractor
        self.device, self.dtype = device, dtype

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.dtype is None:
            return self.module(images)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.module(images)


class InductorForward(EagerForward):
    """``torch.compile`` (inductor, frozen weights) under autocast."""

    def __init__(self, extractor: nn.Module, device: torch.device, dtype: torch.dtype | None):
        super().__init__(extractor, device, dtype)
        self.module = torch.compile(extractor, options={"freezing": True})


class _Tokens(nn.Module):
    """Tensor-only view of a ``ViTFeatures`` for tracing (the grid size is a Python tuple)."""

    def __init__(self, extractor: ViTFeatures) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)[0]


class OneDNNGraphForward:
    """A ViT traced and frozen per image shape, run with oneDNN Graph fusion (CPU).

    Every call runs the fused graph on batches of exactly ``batch_size`` images (a short last
    batch is padded): an image's features then depend only on its pixels, not on the batch
    it arrived in or on how many calls came before (the first call of a traced graph runs
    unfused, so tracing is followed by warm-up calls).
    """

    warmup_calls = 2

    def __init__(self, extractor: ViTFeatures, dtype: torch.dtype | None, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.extractor = copy.deepcopy(extractor).eval()
        for mod in self.extractor.modules():
            if hasattr(mod, "fused_attn"):
                # A timm Attention's flag (not a Module attribute to the type checker); the
                # explicit attention is the pattern oneDNN fuses.
                cast(Any, mod).fused_attn = False
        self.dtype = dtype or torch.float32
        self.extractor.to(self.dtype)
        self.batch_size = batch_size
        self.traced: dict[tuple[int, ...], torch.jit.ScriptModule] = {}
        # Process-wide switch; it only affects TorchScript graphs.
        torch.jit.enable_onednn_fusion(True)

    def _graph(self, x: torch.Tensor) -> torch.jit.ScriptModule:
        shape = tuple(x.shape[1:])
        if shape not in self.traced:
            # Tracing bakes shape-dependent Python branches (timm's position-embedding
            # resampling) in as constants; that is intended, a graph is traced per shape.
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.freeze(torch.jit.trace(_Tokens(self.extractor).eval(), x))
                for _ in range(self.warmup_calls):
                    traced(x)
            self.traced[shape] = traced
        return self.traced[shape]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = images.to(self.dtype)
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start : start + self.batch_size]
            n = chunk.shape[0]
            if n < self.batch_size:
                pad = chunk.new_zeros((self.batch_size - n, *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            out.append(self._graph(chunk)(chunk)[:n])
        return torch.cat(out), self.extractor.grid_size(x.shape[-2], x.shape[-1])


def build_forward(
    extractor: PixelFeatures | ViTFeatures,
    runtime: str,
    device: torch.device,
    dtype: torch.dtype | None,
    batch_size: int = 64,
) -> Forward:
    """The forward callable of ``extractor`` under ``runtime`` (``"auto"`` allowed).

    ``batch_size``: the batch the ``onednn_graph`` runtime is traced for (see its class).
    """
    name = resolve_runtime(runtime, device, extractor, dtype)
    if name == "onednn_graph":
        assert isinstance(extractor, ViTFeatures)
        return OneDNNGraphForward(extractor, dtype, batch_size)
    if name == "inductor":
        return InductorForward(extractor, device, dtype)
    return EagerForward(extractor, device, dtype)
