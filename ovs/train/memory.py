"""Whether one training step fits in memory: an estimate made during the first step's forward,
and out-of-memory errors turned into one message naming the batch key.

:class:`StepMemory` wraps the loop's first step (``with StepMemory(...): train_step(...)``). It
adds up what the step holds at its peak, per rank:

- parameters, their gradients and the optimiser's state (``exp_avg``/``exp_avg_sq`` for the
  Adam family, one buffer for SGD with momentum), from the parameters' sizes;
- the activations autograd keeps for the backward pass, counted as the forward saves them
  (``torch.autograd.graph.saved_tensors_hooks``: each tensor storage once, parameters not
  again). They are what grows with the batch.

It compares the running sum with the limit every time a tensor is saved, so a batch that does
not fit raises :class:`BatchTooLarge` during the forward, before the backward or any optimiser
update, naming the batch key, the estimate and the limit. The limit is a configured budget
(``<section>.memory_budget_mb``) or what the device has: on CUDA the free device memory plus
what this process's allocator already holds (``torch.cuda.mem_get_info``,
``memory_reserved``); on the CPU the available RAM (``MemAvailable``) shared by the node's
ranks, plus the parameters already resident. The hooks only count (each returns the tensor
it is given), so a step that fits computes exactly what it computes without them.

:func:`out_of_memory` recognises an allocator failure (``torch.OutOfMemoryError`` on CUDA,
``DefaultCPUAllocator: can't allocate memory`` on the CPU) and returns the same kind of error.

Pure: no Ray, no I/O beyond reading ``/proc/meminfo``.
"""

from __future__ import annotations

import os
from types import TracebackType

import torch

MiB = 2**20


class BatchTooLarge(RuntimeError):
    """A training step that does not fit in memory (the message names the batch key)."""


def _mib(n: float) -> str:
    return f"{n / MiB:,.0f} MiB"


def available_ram() -> int:
    """Bytes of RAM the kernel says can be allocated without swapping (``MemAvailable``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def optimizer_state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes the optimiser's state will take for ``model``'s trainable parameters: two
    parameter-sized buffers for the Adam family, one for SGD with momentum, else two."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    name = type(opt).__name__.lower()
    if name == "sgd":
        return trainable if any(g.get("momentum", 0) for g in opt.param_groups) else 0
    return 2 * trainable


def device_limit(device: torch.device, params: int, ranks_on_node: int) -> tuple[int, str]:
    """``(bytes one rank's step may use, what that is)`` on ``device`` without a budget."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        held = torch.cuda.memory_reserved(device)
        return free + held, f"free memory of {device} plus what this process holds"
    share = available_ram() // max(1, ranks_on_node)
    what = "available RAM" + (f" / {ranks_on_node} ranks on this node" if ranks_on_node > 1 else "")
    return share + params, what + " plus the resident parameters"


class StepMemory:
    """Context manager around one training step; raises :class:`BatchTooLarge` as soon as the
    step's estimated peak (parameters, gradients, optimiser state and saved activations, bytes
    per rank) passes ``limit`` bytes. After the step :attr:`total` is the whole estimate."""

    def __init__(
        self,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        limit: int,
        limit_what: str,
        key: str,
        batch_size: int,
    ) -> None:
        self.key, self.batch_size = key, batch_size
        self.limit, self.limit_what = limit, limit_what
        params = list(model.parameters())
        self.param_storages = {p.untyped_storage().data_ptr() for p in params}
        weights = sum(p.numel() * p.element_size() for p in params)
        grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
        self.static = weights + grads + optimizer_state_bytes(model, opt)
        self.activations = 0
        self._seen: set[tuple[str, int]] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    @property
    def total(self) -> int:
        return self.static + self.activations

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # no plain storage (e.g. a tensor subclass)
            ptr, nbytes = -id(t), t.numel() * t.element_size()
        if ptr not in self.param_storages and (t.device.type, ptr) not in self._seen:
            self._seen.add((t.device.type, ptr))
            self.activations += nbytes
            if self.total > self.limit:
                raise self.error()
        return t

    def error(self) -> BatchTooLarge:
        return BatchTooLarge(
            f"{self.key}={self.batch_size} does not fit in memory: one training step needs at "
            f"least {_mib(self.total)} per rank ({_mib(self.activations)} of activations "
            f"kept for the backward pass, growing with the batch, and {_mib(self.static)} of "
            f"parameters, gradients and optimiser state), the limit is {_mib(self.limit)} "
            f"({self.limit_what}); lower {self.key} (and raise num_workers to keep the "
            "global batch) or use a device with more memory"
        )

    def __enter__(self) -> StepMemory:
        self._hooks.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._hooks.__exit__(exc_type, exc, tb)


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


def out_of_memory(e: BaseException, key: str, batch_size: int, where: str) -> BatchTooLarge | None:
    """:class:`BatchTooLarge` naming ``key`` for an allocator failure ``e`` (CUDA or CPU) during
    ``where`` (e.g. ``"step 12 on cuda:0"``), or None when ``e`` is something else."""
    text = str(e).strip()
    cpu = isinstance(e, RuntimeError) and "can't allocate memory" in text
    if not (isinstance(e, torch.OutOfMemoryError) or cpu):
        return None
    first = text.splitlines()[0] if text else type(e).__name__
    if "DefaultCPUAllocator" in first:
        first = first[first.index("DefaultCPUAllocator") :]
    return BatchTooLarge(
        f"{key}={batch_size} does not fit in memory: out of memory at {where} ({first[:200]}); "
        f"lower {key} (and raise num_workers to keep the global batch) or use a device with "
        "more memory"
    )
