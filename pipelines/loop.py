"""The one training loop: a Ray Train worker that trains whatever :class:`Task` a stage brings.

A stage (``pipelines/train.py``, ``pipelines/self_train.py``) hands :func:`run_loop` a
:class:`LoopJob`: its typed loop config, the run seed, its output directory, its MLflow run and
a picklable *task factory*. Each worker builds the task (model, objective, optimiser and
schedule factories, resumable batches) and the loop owns the rest: resume from the last Ray
checkpoint, AMP + backward + clipping + optimiser/schedule step (:func:`ovs.train.step.
train_step`), device-side metric windows logged to MLflow from rank 0 at log steps, the failure
drill (:mod:`pipelines.drills`, test-only), checkpoints with every rank's data and RNG state, the
time-limit stop that all ranks agree on, and the memory check of the first step
(:mod:`ovs.train.memory`: a batch that does not fit, or an out-of-memory error in any step, fails
with one message naming ``<section>.batch_size``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ovs.stage import progress_text
from ovs.train.loop_config import LoopConfig
from ovs.train.memory import MiB, StepMemory, device_limit, out_of_memory
from pipelines.ray_logs import quiet_train_reports
from pipelines.ray_train import (
    RunRef,
    Window,
    any_rank,
    fit_and_export,
    prepare,
    rank0_tracker,
    rank_state,
    report,
    resume_state,
    rng_state,
    set_rng_state,
)


class Task(Protocol):
    """One stage's training, built inside a worker by its :class:`TaskFactory`.

    :attr:`model`'s initial weights must be identical on every rank. The loop calls, in this order: :meth:`optimizer` and :meth:`schedule` (after
    the model is on its device), :meth:`objective`, :meth:`batches`, then per step
    :meth:`inputs` and, at checkpoint steps, :meth:`data_state` and :meth:`counts`.
    """

    metric_prefix: str  # of the logged metrics: "train/", "self_train/"
    log_grad_norm: bool  # whether the windows log the pre-clip gradient norm

    @property
    def model(self) -> torch.nn.Module:
        """What is trained, checkpointed and exported."""
        ...

    def optimizer(self) -> torch.optim.Optimizer:
        """The optimiser over :attr:`model`'s parameters."""
        ...

    def schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler: ...

    def objective(self) -> torch.nn.Module:
        """The module whose ``forward(*inputs)`` returns a dict of scalar tensors with
        ``loss``, DDP-wrapped when the world has several ranks (called once on every rank)."""
        ...

    def batches(self, start_step: int, own: dict | None) -> Iterator[Any]:
        """Endless batches continuing at ``start_step``; ``own`` is this rank's saved data
        state (:meth:`data_state` at the checkpoint) or None on a fresh start."""
        ...

    def inputs(self, batch: Any) -> tuple[tuple[Any, ...], int]:
        """The objective's positional inputs on the device and the batch's image count."""
        ...

    def data_state(self, step: int) -> dict:
        """This rank's data position and data RNG states (plain values and tensors)."""
        ...

    def counts(self) -> dict[str, float]:
        """Data counts reported with each checkpoint (e.g. samples joined or skipped)."""
        ...

    def save_model(self, path: Path, extra: dict) -> Any:
        """Write :attr:`model`'s inference checkpoint (with ``extra``) to ``path``."""
        ...


class TaskFactory(Protocol):
    """Picklable (it travels to the workers): builds a worker's :class:`Task`."""

    def __call__(self, seed: int, device: torch.device, rank: int, world: int) -> Task: ...


@dataclass(frozen=True)
class LoopJob:
    """What every worker of one training run receives."""

    loop: LoopConfig  # the stage's section (TrainConfig, SelfTrainConfig)
    task: TaskFactory
    seed: int  # the run seed (``Config.seed``)
    out_dir: str  # the stage's output directory (failure-drill marker, checkpoints)
    run: RunRef | None  # the stage's MLflow run, reopened by rank 0
    fail_at_step: int = -1  # the failure drill's step (pipelines/drills.py), never from a config
    name: str = ""  # what is trained (the method, "sseg_plus"): the console progress lines say it


def run_loop(job: LoopJob, name: str) -> tuple[Path, dict]:
    """Train ``job`` with Ray Train (checkpoints under ``<out_dir>/ray_train/<name>``);
    returns the exported inference model ``<out_dir>/model/latest.pt`` and rank 0's last
    reported metrics (``step``: the steps done)."""
    from pipelines.drills import armed_step

    job = replace(job, fail_at_step=armed_step(job.loop.SECTION), name=name)
    return fit_and_export(partial(train_worker, job), job.loop, name, Path(job.out_dir))


def setup(
    job: LoopJob, device: torch.device, rank: int, world: int, state: dict | None
) -> tuple[Task, torch.optim.Optimizer, Any, int]:
    """Build the task, move its model to ``device``, *then* build the optimiser and schedule and
    restore ``state`` into all three (:func:`pipelines.ray_train.prepare`). Returns ``(task,
    opt, sched, step to continue from)``."""
    task = job.task(job.seed, device, rank, world)
    opt, sched, start = prepare(task.model, device, task.optimizer, task.schedule, state)
    return task, opt, sched, start


def train_worker(job: LoopJob) -> None:
    """One Ray Train worker: set up or resume, then :func:`_train` to the end or the time
    limit."""
    import ray.train
    import ray.train.torch

    from ovs.cpu import keep_freed_memory

    quiet_train_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, job.loop.cpus_per_worker))
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        keep_freed_memory()  # no page faults per step (ovs/cpu.py)
    state = resume_state()
    task, opt, sched, start = setup(job, device, rank, world, state)
    objective = task.objective()  # every rank: DDP creates a process group
    own = rank_state(state, rank, world)
    batches = task.batches(start, own)
    if own is not None:  # dropout and every torch draw continue where the checkpoint left them
        set_rng_state(own["torch"], device)
    probe = step_memory(job.loop, task.model, opt, device, ctx.get_local_world_size())
    _train(job, task, objective, opt, sched, batches, start, device, rank, world, probe)


PROGRESS_EVERY_S = 30.0  # console progress lines from rank 0, at log steps at most this often


def progress_line(
    section: str, name: str, step: int, start: int, steps: int, seconds: float, loss: float
) -> str:
    """``[train] sseg steps: 600/2400 (25%, 2.0/s, eta 900s) loss 2.3456``: the rate counts
    the steps of this attempt only (``start``: where it resumed)."""
    rate = (step - start) / max(seconds, 1e-9)
    what = f"{name} steps" if name else "steps"
    return f"{progress_text(section, what, step, steps, rate)} loss {loss:.4f}"


def step_memory(
    cfg: LoopConfig, model: torch.nn.Module, opt: Any, device: torch.device, ranks_on_node: int
) -> StepMemory:
    """The memory check of a worker's first step (:mod:`ovs.train.memory`): against
    ``memory_budget_mb`` when set, else what ``device`` has for each of the node's ranks."""
    if cfg.memory_budget_mb is not None:
        budget = int(cfg.memory_budget_mb * MiB)
        limit, what = budget, f"{cfg.SECTION}.memory_budget_mb={cfg.memory_budget_mb:g}"
    else:
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        limit, what = device_limit(device, params, ranks_on_node)
    return StepMemory(model, opt, limit, what, f"{cfg.SECTION}.batch_size", cfg.batch_size)


def _train(
    job: LoopJob,
    task: Task,
    objective: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    batches: Iterator[Any],
    step: int,
    device: torch.device,
    rank: int,
    world: int,
    probe: StepMemory | None = None,
) -> None:
    """Steps ``step + 1 .. cfg.steps``: log windows at log steps, report (rank 0 with a
    checkpoint) at checkpoint steps and at the end, stop early when the time limit is hit.

    The first step runs inside ``probe`` (:class:`ovs.train.memory.StepMemory`: a batch that
    does not fit fails in its forward); an allocator failure in any step becomes
    :class:`~ovs.train.memory.BatchTooLarge` naming ``<section>.batch_size``."""
    from ovs.precision import training_dtype
    from ovs.train.step import train_step

    cfg = job.loop
    key = f"{cfg.SECTION}.batch_size"
    tracker = rank0_tracker(job.run, rank)
    amp_dtype = training_dtype(cfg.amp_dtype, device)
    marker = Path(job.out_dir) / ".injected_failure"
    t_start = time.monotonic()
    first_step, last_line = step, 0.0
    window, window_t = Window(), time.monotonic()
    wait_fractions: list[float] = []
    while step < cfg.steps:
        t_data = time.monotonic()
        try:
            inputs, images = task.inputs(next(batches))  # the batch moves to the device here
            window.data_wait_s += time.monotonic() - t_data
            with probe if probe is not None else contextlib.nullcontext():
                out, grad_norm = train_step(
                    objective, inputs, task.model, opt, sched, cfg.grad_clip, amp_dtype, device
                )
        except Exception as e:
            oom = out_of_memory(e, key, cfg.batch_size, f"step {step + 1} on {device}")
            if oom is None:
                raise
            raise oom from None
        probe = None
        step += 1
        if step == job.fail_at_step and rank == world - 1 and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected worker failure at step {step} (failure drill)")
        window.add({**out, "grad_norm": grad_norm} if task.log_grad_norm else out, images)
        log_step = step % cfg.log_every == 0 or step >= cfg.steps
        out_of_time = log_step and any_rank(
            cfg.time_limit_s is not None and time.monotonic() - t_start > cfg.time_limit_s,
            device,
            world,
        )
        metrics: dict | None = None
        if log_step:
            metrics = _window_metrics(task, window, time.monotonic() - window_t, sched, world)
            metrics["step"] = step
            wait_fractions.append(metrics[f"{task.metric_prefix}data_wait_fraction"])
            if tracker is not None:
                tracker.log_metrics(metrics, step=step)
            now = time.monotonic()
            if rank == 0 and (now - last_line >= PROGRESS_EVERY_S or step >= cfg.steps):
                loss = metrics.get(f"{task.metric_prefix}loss", float("nan"))
                line = progress_line(
                    cfg.SECTION, job.name, step, first_step, cfg.steps, now - t_start, loss
                )
                # Not print(): Ray Train patches it into the root logger *and* the stream,
                # which shows every line twice. Ray forwards the worker's stderr to the console.
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
                last_line = now
            window, window_t = Window(), now
        if step % cfg.checkpoint_every == 0 or step >= cfg.steps or out_of_time:
            metrics = dict(metrics or {"step": step})
            metrics["data_wait_fraction"] = float(np.mean(wait_fractions or [0.0]))
            metrics.update(task.counts())
            own_state = {"torch": rng_state(device), **task.data_state(step)}
            report(metrics, rank, world, task.model, opt, sched, step, task.save_model, own_state)
        if out_of_time:
            break


def _window_metrics(
    task: Task, window: Window, seconds: float, sched: Any, world: int
) -> dict[str, float]:
    """A log window's means, the learning rate and throughput, named ``<prefix><metric>``.

    The lr is the last parameter group's: the segmenter's head, unscaled by layer decay
    (S-Seg's groups all share one lr).
    """
    dt = max(seconds, 1e-9)
    prefix = task.metric_prefix
    metrics = {f"{prefix}{k}": v for k, v in window.means().items()}
    metrics[f"{prefix}lr"] = sched.get_last_lr()[-1]
    metrics[f"{prefix}img_per_s"] = window.images * world / dt
    metrics[f"{prefix}data_wait_fraction"] = window.data_wait_s / dt
    return metrics
