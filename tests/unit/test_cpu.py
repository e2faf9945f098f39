"""ovs.cpu: the malloc settings of training and shard workers, on the real C library."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing as mp
import os

import pytest

from ovs import cpu

pytestmark = pytest.mark.skipif(cpu._libc() is None, reason="glibc malloc")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _heap_after_free(setting: str, out: mp.Queue) -> None:
    """In a fresh process: apply ``setting``, free one 1 MB block (glibc's dynamic threshold
    rises past it), allocate 96 blocks of 1 MB with a live 64-byte block after each (the heap
    cannot shrink from its top), free the big ones, and report how much of the 96 MB is still
    resident."""
    if setting == "return":
        cpu.return_freed_memory()
    elif setting == "keep":
        cpu.keep_freed_memory()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(2**20))
    before = _rss_mb()
    blocks, pins = [], []
    for _ in range(96):
        blocks.append(libc.malloc(2**20))
        pins.append(libc.malloc(64))
    for b in blocks:
        ctypes.memset(b, 1, 2**20)  # touch every page
    for b in blocks:
        libc.free(b)
    kept = _rss_mb() - before
    if setting != "return":
        cpu.trim()
        out.put((kept, _rss_mb() - before))
    else:
        out.put((kept, kept))


def _run(setting: str) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_heap_after_free, args=(setting, q))
    p.start()
    result = q.get(timeout=60)
    p.join(60)
    return result


def test_a_shard_worker_returns_freed_blocks_and_a_training_worker_keeps_them() -> None:
    returned, _ = _run("return")
    default, default_trimmed = _run("default")
    kept, trimmed = _run("keep")
    assert returned < 8, returned  # fixed threshold: 1 MB blocks are mmap-ed, unmapped on free
    assert default > 80, default  # glibc's default: the raised threshold keeps them (the creep)
    assert kept > 80, kept  # training workers: kept in the heap for the next step
    assert default_trimmed < 8 and trimmed < 8, (default_trimmed, trimmed)  # trim returns them


def test_shard_actors_set_the_threshold_and_trim_after_each_item(monkeypatch) -> None:
    from pipelines import shard_map

    calls: list[str] = []
    monkeypatch.setattr(cpu, "return_freed_memory", lambda: calls.append("threshold") or True)
    monkeypatch.setattr(cpu, "trim", lambda: calls.append("trim") or True)

    class Echo:
        def __init__(self) -> None:
            calls.append("init")

        def __call__(self, x: int) -> int:
            calls.append(f"item {x}")
            if x == 2:
                raise ValueError("bad item")
            return x

    actor = type("Echo", (shard_map._ItemActor,), {"worker": Echo})({})
    import numpy as np

    out = actor(
        {
            "key": np.array(["a", "b"], dtype=object),
            "args": np.array(['{"x": 1}', '{"x": 2}'], dtype=object),
            "output": np.array(["", ""], dtype=object),
        }
    )
    assert calls == ["threshold", "init", "item 1", "trim", "item 2", "trim"]
    assert out["error"][0] == "" and "bad item" in out["error"][1]
