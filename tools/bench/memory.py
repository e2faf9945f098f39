"""Benchmark memory against dataset size: the peak RSS of the driver and of the Ray workers per
stage, at two world sizes, and their ratio (the goal: memory flat in the data, ratio <= 1.15).

    python -m tools.bench memory [--sizes 1000 4000] [--shard 500] [--steps 4] [--upto STAGE]

Each size runs in a fresh child process (its own local Ray, 2 CPUs, MLflow on sqlite, all in a
temp dir) through the project's stage runner (``pipelines.common.run_stage``, what
``pipelines/full.py`` runs): world -> download -> entities -> pseudo_masks -> train ->
self_train -> pairs, on ``conf/smoke.yaml`` with sizes and locations changed only:
``world.num_train`` = the size (32-px images), ``download.number_sample_per_shard`` and
``self_train.label.shard_size`` = ``--shard`` (so the shard count grows with the size and a
shard does not), ``entities.pairs_bucket_rows`` = 2 shards (the cross-image passes' bucket: 262k
samples by default, more than the benchmark's sizes), ``download.list_chunk_rows`` = 2 shards (the URL list's parts and cleaning
batches: 1M rows by default, more than the benchmark's sizes, so a list would be read whole at
both), ``train`` and ``self_train`` ``--steps`` steps each, both streaming
(``cache_in_memory: false``). Default sizes 1,000 and 4,000 images (4x): about 15 min for
both on 2 cores at load ~2.

What is counted. A thread samples ``/proc`` every ``--interval`` s (0.2): the driver's RSS and
the RSS of every worker below the driver: ``ray::`` processes (Ray Data map workers and
actors, Ray Train workers, tasks) and any other child that is not a Ray daemon (img2dataset's
download processes). Per stage (the window of its ``run_stage`` call):

- ``driver_mb``: the driver's peak RSS minus its RSS when the stage started (what the stage
  adds; ``driver_peak_mb`` is the absolute peak, ``driver_above_baseline_mb`` the peak over
  the driver's RSS after imports and Ray start-up, before the first stage);
- ``workers_mb``: the largest growth of one worker process in the stage (per rank / per
  actor): its peak RSS minus its RSS when first seen in the stage, so a worker started in the
  stage counts whole (imports included, the same at both sizes) and an actor left idle by an
  earlier stage counts only what it adds; ``workers_peak_mb`` is that worker's absolute peak
  and ``peak_worker`` its name; ``workers_total_peak_mb``: the peak of the sum over all
  workers at one instant (reported, not in the goal: idle workers of earlier stages linger).

Then ``self_train_rows``, without Ray: one ``self_train`` rank's data path
(``load_rows`` + four batches, ``cache_in_memory: false``) in a fresh child process per size
(a rank is its own process; measured after the stages, in their process, the driver's heap
history moved it by +-20 MB between runs of one size), over
as many pseudo-label rows as the size, with ``--label-px`` (512) label maps, COCO-sized: at
the world's 32 px a label map is 1 KB and its growth hides in the noise of the stage above.

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
from dataclasses import dataclass, field
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

    driver: int = 0  # the driver's peak RSS
    driver_start: int = 0  # its RSS when the window opened
    worker_growth: int = 0  # the largest growth of one worker: its peak minus its first RSS
    worker: int = 0  # that worker's peak RSS
    worker_name: str = ""
    workers_total: int = 0  # sum over workers at one instant
    samples: int = 0
    first: dict[int, int] = field(default_factory=dict, repr=False)  # pid -> first RSS seen


RAY_SERVICES = ("raylet", "gcs_server", "/ray/")  # Ray's own daemons: not stage workers


def is_worker(cmdline: str, prefix: str) -> bool:
    """A stage's worker process: a ``ray::`` worker or actor (``prefix``), or any other process
    that is not one of Ray's daemons (img2dataset's download processes)."""
    if cmdline.startswith(prefix):
        return True
    return bool(cmdline) and not any(s in cmdline for s in RAY_SERVICES)


def compact() -> None:
    """Give this process's freed memory back to the OS (``gc.collect``, pyarrow's pool, glibc's
    ``malloc_trim``), so that the next window starts from live memory only: otherwise what an
    earlier stage freed but the allocator kept is reused without a page fault, and a stage's
    growth depends on the stages before it (the self_train driver read +-5 MB between runs of
    one size for this)."""
    import gc

    from ovs.cpu import trim

    gc.collect()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except ImportError:
        pass
    trim()


class RssSampler:
    """Samples the RSS of ``root`` (the driver) and of every process below it that
    :func:`is_worker` accepts (``worker_prefix="ray::"``: Ray workers and actors; ``""``: every
    descendant) every ``interval`` seconds on a daemon thread; :meth:`window` collects the
    peaks of one span at a time.

    A worker's growth is its peak minus its RSS at the first sample of the window it is seen in
    (a process started inside the window: its start-up and imports count, as in every run; a
    worker left idle by an earlier stage: only what it adds now), so memory that earlier
    stages' actors still hold is not this stage's."""

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
                workers.append((pid, rss_bytes(pid), name))
        with self._lock:
            p = self._peak
            if p is None:
                return
            p.samples += 1
            p.driver = max(p.driver, driver)
            p.workers_total = max(p.workers_total, sum(r for _, r, _ in workers))
            for pid, r, name in workers:
                growth = r - p.first.setdefault(pid, r)
                if growth > p.worker_growth or (growth == p.worker_growth and r > p.worker):
                    p.worker_growth, p.worker = growth, r
                    p.worker_name = name.split(" ")[0][:80]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    @contextmanager
    def window(self) -> Iterator[Peak]:
        """The peaks while the ``with`` body runs (one sample at each end as well); when the
        driver is this process it is :func:`compact`-ed first."""
        if self.root == os.getpid():
            compact()
        peak = Peak(driver_start=rss_bytes(self.root))
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


def overrides(
    workdir: Path, size: int, shard: int, steps: int, upto: str = STAGES[-1]
) -> list[str]:
    """``conf/smoke.yaml`` at ``size`` world images: sizes and locations only, both training
    stages a few steps and streaming; the stages up to ``upto``."""
    loop = [f"steps={steps}", "warmup_steps=1", f"checkpoint_every={steps}", "log_every=2"]
    return [
        f"workdir={workdir}",
        f"world.num_train={size}",
        f"download.number_sample_per_shard={shard}",
        f"download.list_chunk_rows={2 * shard}",
        f"entities.pairs_bucket_rows={2 * shard}",
        f"self_train.label.shard_size={shard}",
        "train.cache_in_memory=false",
        "self_train.cache_in_memory=false",
        f"pipeline.stages=[{','.join(STAGES[: STAGES.index(upto) + 1])}]",
        "ray.num_cpus=2",
        *(f"train.{o}" for o in loop),
        *(f"self_train.{o}" for o in loop),
    ]


def label_shards(root: Path, rows: int, shard: int, size: int) -> list[Path]:
    """``rows`` pseudo-label rows (``LABEL_SCHEMA``'s columns) in shards of ``shard``: one
    ``size``-px JPEG and one pair of ``size``-px label / confidence PNGs (8x8 blocks of 3
    classes) shared by every row, so writing is fast and decoding costs what it would."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from ovs.codecs import encode_label_png

    rng = np.random.default_rng(0)
    image = root / "image.jpg"
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(image)
    block = np.ones((size // 8, size // 8), np.uint8)
    label = encode_label_png(np.kron(rng.integers(0, 3, (8, 8)).astype(np.uint8), block))
    conf = encode_label_png(np.kron(rng.integers(0, 256, (8, 8)).astype(np.uint8), block))
    files = []
    for start in range(0, rows, shard):
        n = min(shard, rows - start)
        table = pa.table(
            {
                "key": [f"{start + i:09d}" for i in range(n)],
                "image_path": [str(image)] * n,
                "label_png": pa.array([label] * n, pa.binary()),
                "conf_png": pa.array([conf] * n, pa.binary()),
                "gt_png": pa.array([b""] * n, pa.binary()),
                "status": ["ok"] * n,
            }
        )
        files.append(root / f"{start // shard:05d}.parquet")
        pq.write_table(table, files[-1])
    return files


def self_train_rows(rows: int, shard: int, size: int, cache: bool, tmp: Path) -> None:
    """One self_train rank's data path (``SegmenterTask.batches``: ``load_rows`` + four
    batches of 16) over ``rows`` COCO-sized pseudo-labels, in this process."""
    import numpy as np

    from ovs.data.augment import AugmentConfig
    from ovs.selftrain.training import batches, load_rows

    root = tmp / "labels"
    root.mkdir()
    files = label_shards(root, rows, shard, size)
    loaded, _ = load_rows(files, np.array([100, 100, 100]), cache)
    stream = batches(loaded, 16, AugmentConfig(size=64), np.random.default_rng(0))
    for _ in range(4):
        next(stream)


def _figures(peak: Peak, driver_base: int, t0: float) -> dict:
    """One window's figures (MB)."""
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "driver_peak_mb": round(peak.driver / MB, 1),
        "driver_mb": round((peak.driver - peak.driver_start) / MB, 1),
        "driver_above_baseline_mb": round((peak.driver - driver_base) / MB, 1),
        "workers_peak_mb": round(peak.worker / MB, 1),
        "workers_mb": round(peak.worker_growth / MB, 1),
        "workers_total_peak_mb": round(peak.workers_total / MB, 1),
        "peak_worker": peak.worker_name,
        "samples": peak.samples,
    }


def rows_only(size: int, shard: int, interval: float, label_px: int, tmp: Path) -> dict:
    """Only the ``self_train_rows`` probe at one size (``--only-rows``: no Ray, ~1 min)."""
    with RssSampler(os.getpid(), interval=interval) as sampler:
        import numpy  # noqa: F401 - imports outside the window, as after the stages
        import torch  # noqa: F401

        import ovs.selftrain.training  # noqa: F401

        driver_base = rss_bytes(os.getpid())
        t0 = time.perf_counter()
        with sampler.window() as peak:
            self_train_rows(size, shard, label_px, False, tmp)
        stages = {"self_train_rows": _figures(peak, driver_base, t0)}
    print(f"[{size}] self_train_rows: {json.dumps(stages['self_train_rows'])}", flush=True)
    return {"size": size, "driver_baseline_mb": round(driver_base / MB, 1), "stages": stages}


def run_size(
    size: int, shard: int, steps: int, interval: float, tmp: Path, upto: str = STAGES[-1]
) -> dict:
    """Run the stages (up to ``upto``) at one size in this process; per-stage peaks and
    seconds."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    from ovs import provenance
    from ovs.config import to_yaml
    from ovs.stage import order
    from pipelines.common import REPO_ROOT, connect_mlflow, init_ray, run_stage
    from pipelines.graph import STAGES as TABLE
    from pipelines.graph import load_config

    cfg = load_config(
        REPO_ROOT / "conf" / "smoke.yaml", overrides(tmp / "work", size, shard, steps, upto)
    )
    client, exp_id, _ = connect_mlflow(cfg.experiment)
    init_ray(cfg)
    import ray

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
            stages[name] = _figures(peak, driver_base, t0)
            print(f"[{size}] {name}: {json.dumps(stages[name])}", flush=True)
    client.set_terminated(pid, "FINISHED")
    ray.shutdown()
    return {
        "size": size,
        "driver_baseline_mb": round(driver_base / MB, 1),
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
        if args.only_rows:
            result = rows_only(args.child, args.shard, args.interval, args.label_px, Path(d))
        else:
            result = run_size(args.child, args.shard, args.steps, args.interval, Path(d), args.upto)
    Path(args.out).write_text(json.dumps(result))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench memory",
        description="Peak RSS of the driver and of the Ray workers per stage at two world sizes "
        "(default 1,000 and 4,000 32-px images: ~15 min on 2 cores at load ~2; the 1,000 size alone took 15 min at load ~5); "
        f"goal: every ratio <= {GOAL}.",
    )
    p.add_argument("--sizes", type=int, nargs=2, default=[1000, 4000], metavar=("SMALL", "BIG"))
    p.add_argument("--shard", type=int, default=500, help="images per shard (download, labels)")
    p.add_argument("--steps", type=int, default=4, help="train and self_train steps")
    p.add_argument("--interval", type=float, default=0.2, help="sampling period, seconds")
    p.add_argument(
        "--label-px", type=int, default=512,
        help="self_train_rows: label size of the rank's rows probe (0: skip it)",
    )  # fmt: skip
    p.add_argument(
        "--only-rows", action="store_true",
        help="run only the self_train_rows probe (no Ray, no pipeline; ~1 min per size)",
    )  # fmt: skip
    p.add_argument(
        "--upto", choices=STAGES, default=STAGES[-1],
        help="run the stages up to this one only (default: all; e.g. world: ~3 min)",
    )  # fmt: skip
    p.add_argument("--floor-mb", type=float, default=16.0, help="growth below this is noise")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    # Each size starts a local Ray; on a loaded box its raylet gave up after ~15 s waiting for
    # its agents to register. The children inherit this (a user's own value is kept).
    os.environ.setdefault("RAY_agent_register_timeout_ms", "90000")
    runs = []
    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as d:
        for size in args.sizes:
            # the stages in one child; the rows probe in a fresh one (a rank's data path in
            # its own process: after the stages, the driver's heap history moved its figure
            # by +-20 MB between runs of one size)
            parts: list[list[str]] = [] if args.only_rows else [[]]
            if args.label_px:
                parts.append(["--label-px", str(args.label_px), "--only-rows"])
            run: dict = {}
            for i, extra in enumerate(parts):
                out = Path(d) / f"{size}-{i}.json"
                cmd = [sys.executable, "-m", "tools.bench", "memory", "--child", str(size),
                       "--out", str(out), "--shard", str(args.shard), "--steps", str(args.steps),
                       "--interval", str(args.interval), "--upto", args.upto, *extra]  # fmt: skip
                rc = subprocess.run(cmd, check=False).returncode
                if rc != 0:
                    print(f"size {size}: child exited {rc}", file=sys.stderr)
                    return rc
                got = json.loads(out.read_text())
                run.setdefault("size", got["size"])
                run.setdefault("driver_baseline_mb", got["driver_baseline_mb"])
                run.setdefault("stages", {}).update(got["stages"])
            runs.append(run)
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
        "upto": args.upto,
        "only_rows": args.only_rows,
        "label_px": args.label_px,
        "floor_mb": args.floor_mb,
        "driver_baseline_mb": {str(r["size"]): r["driver_baseline_mb"] for r in runs},
        "stages": table,
        "max_ratio": worst,
        "goal": GOAL,
        "goal_met": worst <= GOAL,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {**machine(), "load_avg_1m_start": load_start},
    }
    print(json.dumps(result))
    return 0
