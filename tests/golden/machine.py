"""The fingerprint golden numerics are tied to: float results are bit-identical only on the same
instruction set (oneDNN and ATen pick kernels by ISA) and thread count; and the CPU kernel family,
which picks the golden record to compare with."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

GOLDEN = Path(__file__).resolve().parent
REPO = GOLDEN.parents[1]
# CPU features that change which float kernels run (AVX-512 / AMX / BF16 paths).
_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


def fingerprint() -> str:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = "+".join(f for f in _FLAGS if f in flags) or "none"
    return f"{platform.machine()}-{isa}-torch{torch.__version__.split('+')[0]}"


def kernel_family() -> str:
    """ATen's CPU kernel family on this machine (``torch.backends.cpu.get_cpu_capability()``:
    ``AVX2``, ``AVX512``, ...). It picks the golden record to compare with: the smoke run's
    self-training figures differ by more than any useful tolerance between the AVX2 and the
    AVX512 kernels (float32 everywhere: on an AVX512 box the smoke figures are the same with
    ``pseudo_masks.autocast`` at ``auto`` (bf16 there) and at ``float32``)."""
    return torch.backends.cpu.get_cpu_capability()
