"""Benchmark one S-Seg training step: forward + matching + losses + backward + AdamW step.

``python -m ovs.bench train_step [--config tiny|paper|auto] [--batch B] [--steps N]``

``auto`` (default) times the tiny config (64-px inputs) on CPU and the paper config (Swin-S,
224-px inputs, bf16 autocast) when CUDA is available. Inputs are synthetic: uniform images,
blocky random pseudo-label maps on the 8-px grid (K=8), random captions. FLOPs of one step are
counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions,
forward + backward); ``gemm_flops_per_s`` is a plain square matmul timed in the same process
(fp32 on CPU, bf16 on CUDA) so ``achieved / gemm`` is a machine-independent utilisation figure.
The last stdout line is a JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ovs.models.sseg import SSeg, SSegConfig, paper_sseg
from ovs.objective import SSegLossConfig, SSegObjective

_WORDS = "a the dog cat man woman car tree red blue on in with running sitting park street".split()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def gemm_flops_per_s(device: torch.device, n: int | None = None, reps: int = 10) -> float:
    """FLOP/s of an ``n x n @ n x n`` matmul (fp32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = _timeit(lambda: a @ b, device, reps, warmup=2)
    return 2 * n**3 / sec


def synthetic_batch(
    model: SSeg, batch: int, size: int, k: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``images [B,3,S,S]`` in [0,1], ``labels [B,S/8,S/8]`` blocky ids < k, ``tokens [B,L]``."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    grid = size // 8
    coarse = torch.randint(0, k, (batch, max(grid // 4, 1), max(grid // 4, 1)), generator=g)
    labels = torch.nn.functional.interpolate(coarse[:, None].float(), size=(grid, grid))[:, 0]
    rng = np.random.default_rng(seed)
    captions = [" ".join(rng.choice(_WORDS, size=8)) for _ in range(batch)]
    return images.to(device), labels.long().to(device), model.tokenize(captions).to(device)


def run(config: str, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    cfg = paper_sseg() if config == "paper" else SSegConfig()
    torch.manual_seed(0)
    model = SSeg(cfg).to(device)
    loss_cfg = SSegLossConfig()
    obj = SSegObjective(model, loss_cfg)
    opt = torch.optim.AdamW(
        model.parameters(), lr=5e-4, weight_decay=0.05, fused=device.type == "cuda"
    )
    data = synthetic_batch(model, batch, cfg.input_size, loss_cfg.num_pseudo_masks, device)
    use_bf16 = device.type == "cuda"

    def autocast() -> contextlib.AbstractContextManager:
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step() -> dict[str, torch.Tensor]:
        with autocast():
            out = obj(*data)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return out

    counter = FlopCounterMode(display=False)
    with counter, autocast():
        obj(*data)["loss"].backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = _timeit(step, device, steps, warmup)
    last = step()
    gemm = gemm_flops_per_s(device)
    result = {
        "bench": "train_step",
        "config": config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": "bf16-autocast" if use_bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "batch": batch,
        "input_size": cfg.input_size,
        "step_s": sec,
        "img_per_s": batch / sec,
        "flops_per_step": flops,
        "achieved_flops_per_s": flops / sec,
        "gemm_flops_per_s": gemm,
        "utilisation_vs_gemm": flops / sec / gemm,
        "loss": float(last["loss"].detach()),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if device.type == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ovs.bench train_step", description=__doc__)
    p.add_argument("--config", choices=["tiny", "paper", "auto"], default="auto")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 16 tiny, 64 paper")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if a.threads:
        torch.set_num_threads(a.threads)
    config = a.config if a.config != "auto" else ("paper" if device.type == "cuda" else "tiny")
    batch = a.batch or (64 if config == "paper" else 16)
    result = run(config, batch, a.steps, a.warmup, device)
    print(json.dumps(result))
    return 0
