"""Benchmark memory against dataset size: the peak RSS of the driver and of the Ray workers per
stage, at two world sizes, and their ratio (the goal: memory flat in the data, ratio <= 1.15).

    python -m tools.bench memory [--sizes 2000 8000] [--shard 500] [--steps 4]

Each size runs in a fresh child process (its own local Ray, 2 CPUs, MLflow on sqlite, all in a
temp dir) through the project's stage runner (``pipelines.common.run_stage``, what
``pipelines/full.py`` runs): world -> download -> entities -> pseudo_masks -> train ->
self_train -> pairs, on ``conf/smoke.yaml`` with sizes and locations changed only:
``world.num_train`` = the size (32-px images), ``download.number_sample_per_shard`` and
``self_train.label.shard_size`` = ``--shard`` (so the shard count grows with the size and a
shard does not), ``train`` and ``self_train`` ``--steps`` steps each, both streaming
(``cache_in_memory: false``). Default sizes 2,000 and 8,000 images (4x): about 10-12 min for
both on 2 cores at load ~2.

What is counted. A thread samples ``/proc`` every ``--interval`` s (0.2): the driver's RSS and
the RSS of every ``ray::`` process (Ray workers and actors: Ray Data map workers, Ray Train
workers, tasks) below the driver. Per stage (the window of its ``run_stage`` call):

- ``driver_peak_mb``: the driver's peak RSS; ``driver_mb`` = that minus the driver's baseline
  (its RSS after imports, Ray started, before the first stage);
- ``workers_peak_mb``: the peak RSS of the largest single worker (per-rank / per-actor memory);
  ``workers_mb`` = that minus a fresh worker's baseline (a Ray task that imported torch,
  pyarrow, Ray Data and ovs; their import cost is not data); ``workers_total_peak_mb``: the
  peak of the sum over all workers at one instant (reported, not in the goal: Ray keeps idle
  workers from earlier stages around).

``ratio`` per stage is ``max(big, F) / max(small, F)`` of ``driver_mb`` and of ``workers_mb``
(F = ``--floor-mb``, 16: growth below the sampling noise counts as none); ``max_ratio`` is the
largest and ``goal_met`` is ``max_ratio <= 1.15``. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GOAL = 1.15
STAGES = ["world", "download", "entities", "pseudo_masks", "train", "self_train", "pairs"]
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


def _proc_table() -> dict[int, int]:
    """pid -> ppid of every process, from ``/proc/<pid>/stat``."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        table[int(entry.name)] = int(fields[1])
    return table


def descendants(root: int, table: dict[int, int] | None = None) -> list[int]:
    """Every process below ``root`` (children, their children, ...)."""
    table = _proc_table() if table is None else table
    kids: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, frontier = [], [root]
    while frontier:
        for k in kids.get(frontier.pop(), []):
            out.append(k)
            frontier.append(k)
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class Peak:
    """Peaks (bytes) of one sampling window."""

    driver: int = 0
    worker: int = 0  # largest single worker process
    worker_name: str = ""
    workers_total: int = 0  # sum over workers at one instant
    samples: int = 0


RAY_SERVICES = ("raylet", "gcs_server", "/ray/")  # Ray's own daemons: not stage workers


def is_worker(cmdline: str, prefix: str) -> bool:
    """A stage's worker process: a ``ray::`` worker or actor (``prefix``), or any other process
    that is not one of Ray's daemons (img2dataset's download processes)."""
    if cmdline.startswith(prefix):
        return True
    return bool(cmdline) and not any(s in cmdline for s in RAY_SERVICES)


class RssSampler:
    """Samples the RSS of ``root`` (the driver) and of every process below it that
    :func:`is_worker` accepts (``worker_prefix="ray::"``: Ray workers and actors; ``""``: every
    descendant) every ``interval`` seconds on a daemon thread; :meth:`window` collects the
    peaks of one span at a time."""

    def __init__(self, root: int, worker_prefix: str = "ray::", interval: float = 0.2) -> None:
        self.root, self.prefix, self.interval = root, worker_prefix, interval
        self._peak: Peak | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        """One sample into the open window (if any)."""
        driver = rss_bytes(self.root)
        workers = []
        for pid in descendants(self.root):
            name = _cmdline(pid)  # read each time: a Ray worker renames itself (ray::...)
            if is_worker(name, self.prefix):
                workers.append((rss_bytes(pid), name))
        with self._lock:
            p = self._peak
            if p is None:
                return
            p.samples += 1
            p.driver = max(p.driver, driver)
            p.workers_total = max(p.workers_total, sum(r for r, _ in workers))
            for r, name in workers:
                if r > p.worker:
                    p.worker, p.worker_name = r, name.split(" ")[0][:80]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    @contextmanager
    def window(self) -> Iterator[Peak]:
        """The peaks while the ``with`` body runs (one sample at each end as well)."""
        peak = Peak()
        with self._lock:
            self._peak = peak
        try:
            self.sample()
            yield peak
        finally:
            self.sample()
            with self._lock:
                self._peak = None


# ----------------------------------------------------------------------------- one size


def overrides(workdir: Path, size: int, shard: int, steps: int) -> list[str]:
    """``conf/smoke.yaml`` at ``size`` world images: sizes and locations only, both training
    stages a few steps and streaming."""
    loop = [f"steps={steps}", "warmup_steps=1", f"checkpoint_every={steps}", "log_every=2"]
    return [
        f"workdir={workdir}",
        f"world.num_train={size}",
        f"download.number_sample_per_shard={shard}",
        f"self_train.label.shard_size={shard}",
        "train.cache_in_memory=false",
        "self_train.cache_in_memory=false",
        f"pipeline.stages=[{','.join(STAGES)}]",
        "ray.num_cpus=2",
        *(f"train.{o}" for o in loop),
        *(f"self_train.{o}" for o in loop),
    ]


def _worker_baseline() -> int:
    """RSS of a fresh Ray worker that imported what every stage's workers import."""
    import ray

    @ray.remote(num_cpus=0)
    def probe() -> int:
        import pyarrow.parquet  # noqa: F401
        import ray.data  # noqa: F401
        import torch  # noqa: F401

        import ovs.codecs  # noqa: F401
        import pipelines.shard_map  # noqa: F401

        return rss_bytes(os.getpid())

    return int(ray.get(probe.remote()))


def run_size(size: int, shard: int, steps: int, interval: float, tmp: Path) -> dict:
    """Run the stages at one size in this process; per-stage peaks and seconds."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    from ovs import provenance
    from ovs.config import to_yaml
    from ovs.stage import order
    from pipelines.common import REPO_ROOT, connect_mlflow, init_ray, run_stage
    from pipelines.graph import STAGES as TABLE
    from pipelines.graph import load_config

    cfg = load_config(
        REPO_ROOT / "conf" / "smoke.yaml", overrides(tmp / "work", size, shard, steps)
    )
    client, exp_id, _ = connect_mlflow(cfg.experiment)
    init_ray(cfg)
    import ray

    worker_base = _worker_baseline()
    parent = client.create_run(exp_id, run_name=f"bench-memory-{size}")
    pid, yaml = parent.info.run_id, to_yaml(cfg)
    provenance.current()  # computed once, outside every window
    stages = {}
    with RssSampler(os.getpid(), interval=interval) as sampler:
        driver_base = rss_bytes(os.getpid())
        for name in order(TABLE, list(cfg.pipeline.stages), cfg):
            t0 = time.perf_counter()
            with sampler.window() as peak:
                run_stage(TABLE, name, cfg, False, client, exp_id, pid, yaml)
            stages[name] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "driver_peak_mb": round(peak.driver / MB, 1),
                "driver_mb": round((peak.driver - driver_base) / MB, 1),
                "workers_peak_mb": round(peak.worker / MB, 1),
                "workers_mb": round((peak.worker - worker_base) / MB, 1),
                "workers_total_peak_mb": round(peak.workers_total / MB, 1),
                "peak_worker": peak.worker_name,
                "samples": peak.samples,
            }
            print(f"[{size}] {name}: {json.dumps(stages[name])}", flush=True)
    client.set_terminated(pid, "FINISHED")
    ray.shutdown()
    return {
        "size": size,
        "driver_baseline_mb": round(driver_base / MB, 1),
        "worker_baseline_mb": round(worker_base / MB, 1),
        "stages": stages,
    }


# ----------------------------------------------------------------------------- both sizes


def ratio(small: float, big: float, floor: float) -> float:
    """Growth ``big`` over ``small`` (MB above baseline), each at least ``floor``."""
    return round(max(big, floor) / max(small, floor), 3)


def compare(small: dict, big: dict, floor: float) -> dict:
    """Per stage: both sizes' figures and the driver / workers ratios."""
    out = {}
    for name, s in small["stages"].items():
        b = big["stages"].get(name)
        if b is None:
            continue
        row: dict[str, Any] = {k: [s[k], b[k]] for k in s if k not in ("peak_worker", "samples")}
        row["peak_worker"] = [s["peak_worker"], b["peak_worker"]]
        row["driver_ratio"] = ratio(s["driver_mb"], b["driver_mb"], floor)
        row["workers_ratio"] = ratio(s["workers_mb"], b["workers_mb"], floor)
        out[name] = row
    return out


def machine() -> dict:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Model name")), "")  # fmt: skip
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def _child(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as d:
        result = run_size(args.child, args.shard, args.steps, args.interval, Path(d))
    Path(args.out).write_text(json.dumps(result))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench memory",
        description="Peak RSS of the driver and of the Ray workers per stage at two world sizes "
        "(default 2,000 and 8,000 32-px images: ~10-12 min on 2 cores at load ~2); "
        f"goal: every ratio <= {GOAL}.",
    )
    p.add_argument("--sizes", type=int, nargs=2, default=[2000, 8000], metavar=("SMALL", "BIG"))
    p.add_argument("--shard", type=int, default=500, help="images per shard (download, labels)")
    p.add_argument("--steps", type=int, default=4, help="train and self_train steps")
    p.add_argument("--interval", type=float, default=0.2, help="sampling period, seconds")
    p.add_argument("--floor-mb", type=float, default=16.0, help="growth below this is noise")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    runs = []
    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as d:
        for size in args.sizes:
            out = Path(d) / f"{size}.json"
            cmd = [sys.executable, "-m", "tools.bench", "memory", "--child", str(size),
                   "--out", str(out), "--shard", str(args.shard), "--steps", str(args.steps),
                   "--interval", str(args.interval)]  # fmt: skip
            rc = subprocess.run(cmd, check=False).returncode
            if rc != 0:
                print(f"size {size}: child exited {rc}", file=sys.stderr)
                return rc
            runs.append(json.loads(out.read_text()))
    table = compare(runs[0], runs[1], args.floor_mb)
    print(f"\n{'stage':13s} {'driver MB':>17s} {'ratio':>6s} {'worker MB':>17s} {'ratio':>6s}")
    for name, row in table.items():
        d, w = row["driver_mb"], row["workers_mb"]
        print(f"{name:13s} {d[0]:8.1f} {d[1]:8.1f} {row['driver_ratio']:6.2f} "
              f"{w[0]:8.1f} {w[1]:8.1f} {row['workers_ratio']:6.2f}")  # fmt: skip
    ratios = [r[k] for r in table.values() for k in ("driver_ratio", "workers_ratio")]
    worst = max(ratios) if ratios else 0.0
    result = {
        "benchmark": "memory",
        "sizes": args.sizes,
        "shard": args.shard,
        "steps": args.steps,
        "floor_mb": args.floor_mb,
        "baselines_mb": {
            str(r["size"]): {"driver": r["driver_baseline_mb"], "worker": r["worker_baseline_mb"]}
            for r in runs
        },
        "stages": table,
        "max_ratio": worst,
        "goal": GOAL,
        "goal_met": worst <= GOAL,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {**machine(), "load_avg_1m_start": load_start},
    }
    print(json.dumps(result))
    return 0
