"""Benchmark one S-Seg training step: forward + matching + losses + backward + AdamW step.

``python -m tools.bench train_step [--config tiny|paper|auto] [--batch B] [--steps N]
[--compile] [--profile FILE]``

``auto`` (default) times the tiny config (64-px inputs) on CPU and the paper config (Swin-S,
224-px inputs, bf16 autocast) when CUDA is available. Inputs are synthetic: uniform images,
blocky random pseudo-label maps on the 8-px grid (K=8), random captions. FLOPs of one step are
counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions,
forward + backward); ``gemm_flops_per_s`` is a plain square matmul timed in the same process
(fp32 on CPU, bf16 on CUDA) so ``achieved / gemm`` is a machine-independent utilisation figure.
``--compile`` runs the objective through ``torch.compile`` (the Hungarian matching on the host
is a graph break); ``--profile FILE`` writes ``torch.profiler``'s table of the ops that took the
most device (CUDA) or CPU time over three more steps. The last stdout line is a JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ovs.cpu import keep_freed_memory
from ovs.methods import METHODS

SPEC = METHODS["sseg"]  # the method whose step is measured

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
    model: Any, batch: int, size: int, k: int, device: torch.device, seed: int = 0
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


def run(
    config: str,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    compile: bool = False,
    profile: str | None = None,
) -> dict:
    mcfg = SPEC.flavors[config]()
    cfg, loss_cfg = mcfg.model, mcfg.loss
    model = SPEC.build_model(mcfg, 0, None).to(device)
    obj = SPEC.objective(model, mcfg)
    fwd = torch.compile(obj) if compile else obj
    # fused: one kernel over all parameters (CPU too since torch 2.4); the per-tensor loop
    # spent ~50 ms of a ~250 ms tiny step on 200 tensors' elementwise passes.
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05, fused=True)
    data = synthetic_batch(model, batch, cfg.input_size, loss_cfg.num_pseudo_masks, device)
    use_bf16 = device.type == "cuda"

    def autocast() -> contextlib.AbstractContextManager:
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step() -> dict[str, torch.Tensor]:
        with autocast():
            out = fwd(*data)
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
    if profile:
        write_profile(step, device, Path(profile))
    gemm = gemm_flops_per_s(device)
    result = {
        "bench": "train_step",
        "config": config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": "bf16-autocast" if use_bf16 else "fp32",
        "compile": compile,
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


def write_profile(step: Callable[[], object], device: torch.device, path: Path) -> None:
    """``torch.profiler``'s op table over three steps, sorted by device time (CPU time on CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=40))


def _scaling_worker(config: dict) -> None:
    """One Ray Train worker of the scaling run: DDP (gloo) steps of the tiny objective at a fixed
    per-worker batch; writes its own throughput to ``<out>/<rank>.json``."""
    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    if config.get("tuned", True):
        keep_freed_memory()
    mcfg = SPEC.flavors["tiny"]()
    loss_cfg = mcfg.loss
    model = SPEC.build_model(mcfg, 0, None)
    obj = SPEC.objective(model, mcfg)
    if not config.get("tuned", True):
        net: torch.nn.Module = DistributedDataParallel(obj) if world > 1 else obj
    else:
        net = SPEC.wrap_ddp(obj)
    opt = torch.optim.AdamW(
        model.parameters(), lr=5e-4, weight_decay=0.05, fused=config.get("tuned", True)
    )
    data = synthetic_batch(
        model, config["batch"], mcfg.model.input_size, loss_cfg.num_pseudo_masks,
        torch.device("cpu"), seed=rank,
    )  # fmt: skip

    def step() -> None:
        out = net(*data)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    sec = _timeit(step, torch.device("cpu"), config["steps"], config["warmup"])
    Path(config["out"], f"{rank}.json").write_text(json.dumps({"img_per_s": config["batch"] / sec}))


def scaling_efficiency(batch: int, steps: int, warmup: int, threads: int = 1) -> dict:
    """Global img/s of Ray Train with 1 and 2 CPU workers (DDP on gloo, ``threads`` torch threads
    and ``threads`` CPUs each, ``batch`` images per worker); ``scaling_efficiency`` =
    ``img/s(2) / (2 * img/s(1))``. Starts a local Ray unless one is running."""
    import tempfile

    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2 * threads, include_dashboard=False, log_to_driver=False)
    out: dict[str, float] = {}
    try:
        for n in (1, 2):
            with tempfile.TemporaryDirectory() as d:
                TorchTrainer(
                    _scaling_worker,
                    train_loop_config={
                        "batch": batch,
                        "steps": steps,
                        "warmup": warmup,
                        "threads": threads,
                        "out": d,
                    },
                    scaling_config=ray.train.ScalingConfig(
                        num_workers=n, resources_per_worker={"CPU": threads}
                    ),
                    torch_config=TorchConfig(backend="gloo"),
                    run_config=ray.train.RunConfig(name=f"scaling{n}", storage_path=d),
                ).fit()
                rates = [json.loads(p.read_text())["img_per_s"] for p in Path(d).glob("*.json")]
                if len(rates) != n:
                    raise RuntimeError(f"{len(rates)} of {n} workers reported")
                # synchronous DDP: the slowest worker sets the pace of all
                out[f"workers{n}_img_per_s"] = n * min(rates)
    finally:
        if started:
            ray.shutdown()
    out["scaling_efficiency"] = out["workers2_img_per_s"] / (2 * out["workers1_img_per_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench train_step", description=__doc__)
    p.add_argument("--config", choices=["tiny", "paper", "auto"], default="auto")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 16 tiny, 64 paper")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--scaling",
        choices=["auto", "on", "off"],
        default="auto",
        help="also measure 1 -> 2 Ray Train CPU workers (auto: on for the tiny config on CPU)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the objective")
    p.add_argument("--profile", default=None, help="write torch.profiler's op table here")
    a = p.parse_args(argv)
    keep_freed_memory()
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if a.threads:
        torch.set_num_threads(a.threads)
    config = a.config if a.config != "auto" else ("paper" if device.type == "cuda" else "tiny")
    batch = a.batch or (64 if config == "paper" else 16)
    result = run(config, batch, a.steps, a.warmup, device, a.compile, a.profile)
    if a.scaling == "on" or (a.scaling == "auto" and config == "tiny" and device.type == "cpu"):
        result.update(scaling_efficiency(batch, a.steps, a.warmup))
    print(json.dumps(result))
    return 0
