"""The memory benchmark's RSS sampling (``tools/bench/memory.py``): a child process that holds
N MB shows a peak of at least N MB; the ratio and the stage table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tools.bench.memory import (
    STAGES,
    RssSampler,
    compare,
    descendants,
    is_worker,
    overrides,
    ratio,
    rss_bytes,
)

MB = 2**20
HOLD = (
    "import sys, time; b = bytearray({n} * 2**20); b[::4096] = b'x' * len(b[::4096]); "
    "print('ready', flush=True); time.sleep(30)"
)
PARENT = (
    "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', {hold!r}]); "
    "print(c.pid, flush=True); c.wait(); time.sleep(30)"
)


def test_child_allocation_shows_in_the_worker_peak():
    """Sampled below a parent the test owns: processes an earlier test left under pytest (idle
    Ray workers of a local Ray) are not in the tree."""
    n = 96
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(hold=HOLD.format(n=n))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        with RssSampler(parent.pid, worker_prefix="", interval=0.05) as sampler:
            with sampler.window() as peak:
                child = int(parent.stdout.readline())
                assert parent.stdout.readline().strip() == "ready"
                time.sleep(0.2)
        assert descendants(parent.pid) == [child]
        assert peak.samples >= 2
        assert peak.worker >= n * MB and peak.workers_total >= peak.worker
        assert peak.driver >= rss_bytes(parent.pid) // 2 > 0
        assert peak.driver < n * MB  # the parent holds none of the child's memory
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with RssSampler(parent.pid, interval=0.05) as sampler, sampler.window() as after:
            pass
        assert after.worker < n * MB  # window opened on a dead child: nothing of it counted
        assert rss_bytes(child) == 0
    finally:
        parent.kill()
        parent.wait()


def test_workers_are_ray_processes_and_other_children_not_ray_daemons():
    assert is_worker("ray::MapWorker(MapBatches(ShardMasker))", "ray::")
    assert is_worker("/venv/bin/python -c from multiprocessing.spawn import spawn_main", "ray::")
    assert not is_worker(
        "/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet", "ray::"
    )
    assert not is_worker("", "ray::")


def test_upto_runs_a_prefix_of_the_stages(tmp_path):
    def stages(ov):
        return next(o for o in ov if o.startswith("pipeline.stages="))

    assert stages(overrides(tmp_path, 100, 50, 2)) == f"pipeline.stages=[{','.join(STAGES)}]"
    assert stages(overrides(tmp_path, 100, 50, 2, "world")) == "pipeline.stages=[world]"
    assert stages(overrides(tmp_path, 100, 50, 2, "entities")).endswith("[world,download,entities]")


def test_ratio_and_table():
    assert ratio(4.0, 8.0, 16.0) == 1.0  # both under the noise floor
    assert ratio(100.0, 150.0, 16.0) == 1.5
    stage = {"seconds": 1.0, "driver_peak_mb": 500.0, "driver_mb": 20.0, "workers_peak_mb": 900.0,
             "workers_mb": 300.0, "workers_total_peak_mb": 2000.0, "peak_worker": "ray::x",
             "samples": 5}  # fmt: skip
    big = {**stage, "driver_mb": 80.0, "workers_mb": 330.0}
    table = compare({"stages": {"train": stage}}, {"stages": {"train": big}}, 16.0)
    assert table["train"]["driver_ratio"] == 4.0 and table["train"]["workers_ratio"] == 1.1
    assert table["train"]["driver_mb"] == [20.0, 80.0]


def test_compact_returns_freed_heap_to_the_os():
    """``compact`` before a window: 64 MB of 1 KB objects (glibc's heap, not pymalloc's arenas)
    freed below one that stays live are kept by glibc for reuse (free only trims the heap's
    top), so RSS stays up until ``compact`` runs; then it drops by most of it."""
    from tools.bench.memory import compact, rss_bytes

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc_trim")
    compact()
    blob = [bytes(1000) + bytes([i % 256]) for i in range(64_000)]
    top = bytes(1000) + b"x"  # allocated last: the heap's top stays in use
    del blob
    freed = rss_bytes(os.getpid())
    compact()
    after = rss_bytes(os.getpid())
    assert len(top) == 1001
    assert freed - after > 40 * 2**20, (freed, after)
