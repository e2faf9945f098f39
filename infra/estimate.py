"""GPU-hour and wall-clock estimate of the CC12M run, from the project's measured throughputs.

    python infra/estimate.py                          # table for the reference cluster
    python infra/estimate.py --gpus 8 --cpus 64       # the same work on another cluster
    python infra/estimate.py --write-readme           # refresh the table in infra/README.md

Reads ``infra/benchmarks.json``: ``measured`` holds one throughput per stage (per GPU for GPU
stages, per CPU core for CPU stages; ``null`` until measured) and ``workload`` the sizes that are
not measured here (CC12M's size, the paper's 30 epochs, the evaluation sets). Each stage's work
is divided by its throughput; wall-clock assumes the stages run one after another, each spread
perfectly over the cluster's GPUs or cores, so it is a lower bound (no scaling losses, no
stragglers, no retries). The reference cluster is ``infra/ray/cluster-aws.yaml`` at its maximum
size: 4 x p5.48xlarge (32 H100) and 8 x c7i.8xlarge (256 vCPU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCHMARKS = REPO_ROOT / "infra" / "benchmarks.json"
README = REPO_ROOT / "infra" / "README.md"
BEGIN, END = "<!-- estimate:begin -->", "<!-- estimate:end -->"
REFERENCE_GPUS, REFERENCE_CPUS = 32, 256


@dataclass(frozen=True)
class StageWork:
    """How one stage's work is counted: ``units`` of ``what``, processed on ``resource``."""

    stage: str
    what: str
    resource: str  # "gpu" or "cpu": what the measured throughput is per unit of
    units: float


@dataclass(frozen=True)
class Row:
    """One line of the estimate. Hours are None where the throughput is not measured yet; a
    CPU stage has 0 GPU-hours and a GPU stage 0 CPU core-hours (its data loading is part of
    the measured GPU throughput)."""

    work: StageWork
    throughput: float | None
    unit: str
    device: str | None
    gpu_hours: float | None
    cpu_core_hours: float | None
    wall_hours: float | None


STAGES = ("download", "entities", "pseudo_masks", "train", "evaluate")


class BenchmarksError(ValueError):
    """benchmarks.json does not have the expected fields."""


def _value(tree: dict, section: str, key: str) -> float | None:
    """``tree[section][key]["value"]``: a positive number, or None for JSON null."""
    try:
        value = tree[section][key]["value"]
    except (KeyError, TypeError):
        raise BenchmarksError(f"{section}.{key}.value is missing") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BenchmarksError(f"{section}.{key}.value must be a positive number, got {value!r}")
    return float(value)


def _required(tree: dict, section: str, key: str) -> float:
    value = _value(tree, section, key)
    if value is None:
        raise BenchmarksError(f"{section}.{key}.value must be set, got null")
    return value


def stage_work(bench: dict) -> list[StageWork]:
    """The work of each CC12M stage, from ``bench["workload"]``."""
    pairs = _required(bench, "workload", "cc12m_pairs")
    rate = _value(bench, "workload", "download_success_rate")
    if rate is not None and rate > 1:
        raise BenchmarksError(f"workload.download_success_rate must be <= 1, got {rate}")
    images = pairs * (1.0 if rate is None else rate)
    epochs = _required(bench, "workload", "train_epochs")
    passes = _required(bench, "workload", "pseudo_mask_passes")
    eval_images = _required(bench, "workload", "eval_images")
    evaluations = _required(bench, "workload", "evaluations")
    return [
        StageWork("download", "URLs", "cpu", pairs),
        StageWork("entities", "captions", "cpu", images),
        StageWork("pseudo_masks", "images", "gpu", images * passes),
        StageWork("train", "samples", "gpu", images * epochs),
        StageWork("evaluate", "images", "gpu", eval_images * evaluations),
    ]


def estimate(bench: dict, gpus: int, cpus: int) -> list[Row]:
    """One :class:`Row` per stage: hours = units / throughput / 3600, wall = hours / devices."""
    if gpus < 1 or cpus < 1:
        raise ValueError(f"gpus and cpus must be >= 1, got {gpus}, {cpus}")
    measured = bench.get("measured")
    if not isinstance(measured, dict):
        raise BenchmarksError("'measured' section is missing")
    unknown = sorted(set(measured) - set(STAGES))
    if unknown:
        raise BenchmarksError(f"measured.{unknown[0]}: unknown stage (known: {', '.join(STAGES)})")
    rows = []
    for work in stage_work(bench):
        throughput = _value(bench, "measured", work.stage)
        entry = measured[work.stage]
        hours = None if throughput is None else work.units / throughput / 3600.0
        devices = gpus if work.resource == "gpu" else cpus
        rows.append(
            Row(
                work=work,
                throughput=throughput,
                unit=str(entry.get("unit", "")),
                device=entry.get("device"),
                gpu_hours=hours if work.resource == "gpu" else 0.0,
                cpu_core_hours=hours if work.resource == "cpu" else 0.0,
                wall_hours=None if hours is None else hours / devices,
            )
        )
    return rows


def _fmt(x: float | None) -> str:
    """Hours with about three significant digits: 1,234 / 12.3 / 0.0456; None -> n/a."""
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    if x >= 100:
        return f"{x:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(x)))
    return f"{x:.{digits}f}"


def _total(values: list[float | None]) -> str:
    """The sum; with unmeasured terms, a lower bound ``>= x (k n/a)``, or n/a if nothing is known."""
    known = [v for v in values if v is not None]
    missing = len(values) - len(known)
    if missing == 0:
        return _fmt(sum(known))
    if not any(known):
        return "n/a"
    return f">= {_fmt(sum(known))} ({missing} n/a)"


def render(rows: list[Row], gpus: int, cpus: int) -> str:
    """The estimate as a Markdown table (readable as plain text too)."""
    wall = f"wall-clock h ({gpus} GPUs, {cpus} cores)"
    lines = [
        f"| stage | work | throughput | measured on | GPU-hours | CPU core-hours | {wall} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tp = "n/a" if r.throughput is None else f"{r.throughput:,.4g}"
        lines.append(
            f"| {r.work.stage} | {r.work.units:,.0f} {r.work.what} | {tp} {r.unit} "
            f"| {r.device or '-'} | {_fmt(r.gpu_hours)} | {_fmt(r.cpu_core_hours)} "
            f"| {_fmt(r.wall_hours)} |"
        )
    lines.append(
        f"| **total** | | | | {_total([r.gpu_hours for r in rows])} "
        f"| {_total([r.cpu_core_hours for r in rows])} "
        f"| {_total([r.wall_hours for r in rows])} |"
    )
    missing = [r.work.stage for r in rows if r.throughput is None]
    if missing:
        lines += ["", f"Not measured yet (n/a): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the BEGIN and END markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {BEGIN} ... {END} block")
    return text[: start + len(BEGIN)] + "\n" + block + text[end:]


def load(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BenchmarksError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise BenchmarksError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BenchmarksError(f"{path}: top level must be an object")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmarks", default=str(DEFAULT_BENCHMARKS), help="%(default)s")
    p.add_argument("--gpus", type=int, default=REFERENCE_GPUS, help="GPUs in the cluster")
    p.add_argument("--cpus", type=int, default=REFERENCE_CPUS, help="CPU cores for CPU stages")
    p.add_argument(
        "--write-readme",
        action="store_true",
        help="replace the table between the estimate markers of --readme (reference cluster only)",
    )
    p.add_argument("--readme", default=str(README), help="%(default)s")
    args = p.parse_args(argv)
    if args.write_readme and (args.gpus, args.cpus) != (REFERENCE_GPUS, REFERENCE_CPUS):
        p.error("--write-readme renders the reference cluster; drop --gpus/--cpus")
    try:
        table = render(estimate(load(args.benchmarks), args.gpus, args.cpus), args.gpus, args.cpus)
        if not args.write_readme:
            print(table, end="")
            return 0
        readme = Path(args.readme)
        text = replace_block(readme.read_text(), table)
    except (BenchmarksError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from ovs.io import atomic_write_text

    atomic_write_text(readme, text)
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
