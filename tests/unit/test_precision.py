"""ovs.precision: "auto" is bf16 only where the hardware runs it natively.

The choice logic is checked with ``cpu_native_bf16`` patched both ways; the real answer of
this machine is checked against oneDNN's own report and against a measured speed ratio."""

from __future__ import annotations

import time

import pytest
import torch

from ovs import precision
from ovs.precision import describe, native_bf16, resolve_dtype, training_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_native_bf16_on_cpu(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: native)
    assert native_bf16(CPU) is native
    assert resolve_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    # Training on CPU stays float32 whatever the CPU (same numerics on every CPU).
    assert training_dtype("auto", CPU) is None
    assert describe(CPU)["native_bf16"] is native


def test_explicit_names_and_errors():
    for device in (CPU, CUDA):  # explicit names never look at the hardware
        assert resolve_dtype("float32", device) is None and resolve_dtype("", device) is None
        assert resolve_dtype("bfloat16", device) == torch.bfloat16
        assert resolve_dtype("float16", device) == torch.float16
        assert training_dtype("bfloat16", device) == torch.bfloat16
    with pytest.raises(ValueError, match="bf16.*expected one of auto"):
        resolve_dtype("bf16", CPU)
    assert precision.CHOICES[0] == "auto" and set(precision.DTYPES) <= set(precision.CHOICES)


def test_cuda_branch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", CUDA) == torch.bfloat16
    assert training_dtype("auto", CUDA) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert resolve_dtype("auto", CUDA) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert native_bf16(CUDA) is False
    assert native_bf16(torch.device("meta")) is False


def test_this_machine_real_answer():
    """No patching: the answer is oneDNN's, and describe() says it with the CPU capability."""
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert precision.cpu_native_bf16() is native
    assert resolve_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    info = describe(CPU)
    assert info["device_type"] == "cpu" and info["native_bf16"] is native
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if not torch.cuda.is_available():
        assert resolve_dtype("auto", CUDA) is None


def _ms(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_where_auto_says_float32_bf16_is_emulated_and_slower():
    """Why "auto" is float32 on CPUs without native bf16: there a bf16 GEMM is slower than
    the float32 one (emulated), so an auto-chosen bf16 would cost speed for nothing."""
    if precision.cpu_native_bf16():
        pytest.skip("this CPU has native bf16; auto picks it here")
    torch.manual_seed(0)
    a = torch.randn(512, 512)
    b = a.bfloat16()
    fp32, bf16 = _ms(lambda: a @ a), _ms(lambda: b @ b)
    assert bf16 > fp32, (bf16, fp32)
