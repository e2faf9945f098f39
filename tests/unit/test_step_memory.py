"""The first training step's memory check (:mod:`ovs.train.memory`) on the default config's
S-Seg: what it counts grows with the batch, a step that fits computes what it computes without
the check, one that does not fails before any update naming the batch key, and allocator
failures and Ray Train's wrapped worker errors become that one message."""

from __future__ import annotations

import copy

import pytest
import torch

from ovs.methods import METHODS
from ovs.models.text import tokenize
from ovs.train.memory import BatchTooLarge, MiB, StepMemory, device_limit, out_of_memory
from ovs.train.step import train_step
from pipelines.common import DEFAULT_CONFIG
from pipelines.graph import load_config
from pipelines.loop import step_memory

CPU = torch.device("cpu")


def first_step(overrides: list[str], probe: bool = True, model=None):
    """The default config's ``train`` step on a random caption batch of ``train.batch_size``:
    ``(loss, model after the step, the StepMemory or None)``; raises what the step raises."""
    torch.manual_seed(0)
    cfg = load_config(DEFAULT_CONFIG, overrides).train
    spec, mc = METHODS[cfg.method], cfg.method_config
    model = model if model is not None else spec.build_model(mc, 0, None)
    objective = spec.objective(model, mc)
    opt = spec.optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    g, n, size = torch.Generator().manual_seed(0), cfg.batch_size, cfg.augment.size
    inputs = (
        torch.rand(n, 3, size, size, generator=g),
        torch.randint(0, 4, (n, size, size), generator=g),
        tokenize(["a cat on the grass"] * n, spec.context_length(mc)),
    )
    memory = step_memory(cfg, model, opt, CPU, 1) if probe else None
    with memory if memory is not None else torch.enable_grad():
        out, _ = train_step(objective, inputs, model, opt, sched, cfg.grad_clip, None, CPU)
    return out["loss"].detach(), model, memory


def test_activations_grow_with_the_batch_and_the_rest_does_not() -> None:
    torch.set_num_threads(1)
    _, _, small = first_step(["train.batch_size=2"])
    _, _, large = first_step(["train.batch_size=6"])
    assert small is not None and large is not None
    assert small.static == large.static > 0
    assert large.activations == pytest.approx(3 * small.activations, rel=0.1)
    params = sum(
        p.numel()
        for p in METHODS["sseg"]
        .build_model(load_config(DEFAULT_CONFIG, []).train.sseg, 0, None)
        .parameters()
    )
    assert small.static == 4 * 4 * params  # fp32 weights, grads, AdamW's two moments


def test_a_step_that_fits_computes_what_it_computes_unchecked() -> None:
    torch.set_num_threads(1)
    model = METHODS["sseg"].build_model(load_config(DEFAULT_CONFIG, []).train.sseg, 0, None)
    twin = copy.deepcopy(model)
    args = ["train.batch_size=2", "train.memory_budget_mb=100000"]
    loss_a, a, _ = first_step(args, probe=True, model=model)
    loss_b, b, _ = first_step(args, probe=False, model=twin)
    assert torch.equal(loss_a, loss_b)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_batch_over_the_budget_fails_before_any_update() -> None:
    torch.set_num_threads(1)
    model = METHODS["sseg"].build_model(load_config(DEFAULT_CONFIG, []).train.sseg, 0, None)
    before = [p.detach().clone() for p in model.parameters()]
    first_step(["train.batch_size=2", "train.memory_budget_mb=120"], model=copy.deepcopy(model))
    with pytest.raises(BatchTooLarge) as e:
        first_step(["train.batch_size=16", "train.memory_budget_mb=120"], model=model)
    msg = str(e.value)
    assert msg.startswith("train.batch_size=16 does not fit in memory: one training step needs")
    assert "the limit is 120 MiB (train.memory_budget_mb=120)" in msg
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())  # failed in the forward


def test_device_limit_on_the_cpu_is_the_available_ram_share() -> None:
    one, what = device_limit(CPU, 0, 1)
    two, _ = device_limit(CPU, 0, 2)
    assert 0 < one and abs(two - one // 2) < one // 4 and "available RAM" in what


def test_allocator_failures_name_the_batch_key() -> None:
    with pytest.raises(RuntimeError) as e:
        torch.empty(2**50)  # a real allocation failure of the CPU allocator
    err = out_of_memory(e.value, "self_train.batch_size", 8, "step 3 on cpu")
    assert isinstance(err, BatchTooLarge)
    assert str(err).startswith(
        "self_train.batch_size=8 does not fit in memory: out of memory at step 3 on cpu "
        "(DefaultCPUAllocator: can't allocate memory"
    )
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory."), "k", 1, "x") is not None
    assert out_of_memory(RuntimeError("shape mismatch"), "k", 1, "x") is None


def test_worker_errors_are_found_inside_ray_train_failures() -> None:
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from ovs.data.shards import ShardError
    from pipelines.ray_train import user_error

    inner = BatchTooLarge("train.batch_size=64 does not fit in memory")
    failed = WorkerGroupError("worker 1 failed", {1: UserExceptionWithTraceback(inner, "tb")})
    assert user_error(failed) is inner
    try:
        try:
            raise ShardError("shard x.tar is truncated or corrupt")
        except ShardError as shard:
            raise RuntimeError("task failed") from shard
    except RuntimeError as chained:
        assert isinstance(user_error(chained), ShardError)
    assert user_error(WorkerGroupError("w", {0: ValueError("a bug")})) is None
    from ray.exceptions import RayTaskError  # a Ray Data task's error inside the worker

    shard = ShardError("shard y.tar is truncated or corrupt")
    task = RayTaskError("decode", "Traceback ...\nShardError: ...", shard).as_instanceof_cause()
    assert isinstance(task, ShardError) and user_error(RuntimeError("x")) is None
    assert user_error(WorkerGroupError("w", {0: UserExceptionWithTraceback(task, "tb")})) is shard


def test_step_memory_counts_each_saved_storage_once() -> None:
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with StepMemory(model, opt, 10 * MiB, "test", "k", 1) as m:
        x = torch.ones(256, 4, requires_grad=True)
        y = model(x)  # saves x and the weight (a parameter: counted in static, not again)
        (y * y).sum()  # saves y twice: one storage
    assert m.static == 2 * 4 * (16 + 4)  # weights and grads; SGD without momentum keeps none
    assert m.activations == 2 * 256 * 4 * 4
