"""Compare pipeline runs recorded in MLflow.

    python -m tools.runs compare [--experiment NAME] [--metrics a,b] [--limit N]

Prints one row per pipeline run (newest first) with its status, duration and the key metric of
each stage (``<stage>.<metric>`` on the parent run), built on ``mlflow.search_runs``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_METRICS = (
    "pseudo_masks.oracle_miou",
    "train.miou",
    "train.miou_at_init",
    "evaluate.miou",
    "self_train.miou",
    "pairs.pair_precision",
    "entities.kept_fraction",
    "pipeline_seconds",
)


def compare_table(
    experiment: str, tracking_uri: str, metrics: list[str] | None = None, limit: int = 20
) -> list[dict]:
    """Rows of ``{"run_id", "name", "status", "start", <metric>: value}`` for pipeline runs."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="tags.`ovs.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    rows = []
    for _, r in df.iterrows():
        row = {
            "run_id": r["run_id"][:8],
            "name": r.get("tags.mlflow.runName", ""),
            "status": r["status"],
            "start": str(r["start_time"])[:19],
        }
        wanted = metrics or [m for m in DEFAULT_METRICS if f"metrics.{m}" in df.columns]
        for m in wanted:
            v = r.get(f"metrics.{m}")
            row[m] = "" if v is None or v != v else f"{v:.4g}"
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no pipeline runs)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pipelines.tracking import default_tracking_uri

    p = argparse.ArgumentParser(prog="python -m tools.runs")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="table of pipeline runs with key metrics")
    c.add_argument("--experiment", default="default")
    c.add_argument("--metrics", default="", help="comma-separated metric keys (default: key ones)")
    c.add_argument("--limit", type=int, default=20)
    c.add_argument("--tracking-uri", default=None)
    args = p.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    metrics = [m for m in args.metrics.split(",") if m] or None
    print(format_table(compare_table(args.experiment, uri, metrics, args.limit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
