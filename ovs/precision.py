"""Which compute dtype autocast uses, chosen from what the hardware runs natively.

``auto`` is bfloat16 where bf16 arithmetic is native (CUDA devices that support it; x86 CPUs
with AVX-512 BF16 or AMX, where oneDNN has bf16 kernels) and float32 elsewhere: on a CPU
without native bf16, autocast emulates it and runs several times slower than float32.
Training on CPU is the one exception (:func:`training_dtype`): ``auto`` keeps float32 there, so
the embedded default trains the same numerics on every CPU.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype | None] = {
    "float32": None,
    "": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
CHOICES = ("auto", *DTYPES)


def cpu_native_bf16() -> bool:
    """Whether this CPU has native bf16 kernels (oneDNN: AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``name`` on ``device``; None means float32 (no autocast)."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if name not in DTYPES:
        raise ValueError(f"precision {name!r}: expected one of {', '.join(CHOICES)}")
    return DTYPES[name]


def training_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """Like :func:`resolve_dtype`, but ``auto`` trains in float32 on CPUs (same numerics on
    every CPU; CPU training is the embedded default, GPUs are where bf16 training pays)."""
    if name == "auto" and device.type != "cuda":
        return None
    return resolve_dtype(name, device)


def describe(device: torch.device) -> dict[str, object]:
    """What a benchmark line should say about the machine's precision support."""
    info: dict[str, object] = {"device_type": device.type, "native_bf16": native_bf16(device)}
    if device.type == "cpu":
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info
