"""Compare pipeline runs recorded in MLflow, and the methods of the newest one.

    python -m tools.runs compare [--experiment NAME] [--metrics a,b] [--limit N]

``compare`` prints one row per pipeline run (newest first) with its status, duration and the
key metric of each stage (``<stage>.<metric>`` on the parent run), built on
``mlflow.search_runs``; then the method comparison of the newest ``evaluate`` stage
(``comparison.json``: method x benchmark x protocol, mIoU and pixel accuracy, plus the S-Seg+
row of the newest ``self_train`` stage). README's comparison section is written from the same
table by ``python -m tools.report --readme`` (:mod:`tools.report.readme`, no hand-copied numbers).

Exit codes: 0 the table was printed; 2 bad arguments, an experiment that does not exist or a
tracking store that cannot be reached (one line on stderr).
"""

from __future__ import annotations

import argparse
import os
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
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    if MlflowClient(tracking_uri).get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
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


def _newest_stage_runs(client, experiment: str, stage: str) -> list:
    from pipelines.tracking import TAG_STAGE

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_STAGE}` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )


def method_comparison(experiment: str, tracking_uri: str) -> dict[str, list] | None:
    """The newest ``evaluate`` stage's comparison table (a skipped stage's source run's) with the
    newest ``self_train`` stage's S-Seg+ row (protocol ``self_train``: its closed-vocabulary
    evaluation) appended; None when no run has one."""
    import json
    import tempfile

    from mlflow.tracking import MlflowClient

    from pipelines.tracking import TAG_SOURCE_RUN

    client = MlflowClient(tracking_uri)
    table = None
    for run in _newest_stage_runs(client, experiment, "evaluate"):
        source = run.data.tags.get(TAG_SOURCE_RUN) or run.info.run_id
        with tempfile.TemporaryDirectory() as d:
            try:
                path = client.download_artifacts(source, "comparison.json", d)
            except Exception:  # noqa: BLE001 - older runs have no table; try the next
                continue
            table = json.loads(Path(path).read_text())
        break
    if table is None:
        return None
    for run in _newest_stage_runs(client, experiment, "self_train"):
        source = run.data.tags.get(TAG_SOURCE_RUN) or run.info.run_id
        metrics = client.get_run(source).data.metrics
        if "miou" in metrics:
            for col, v in zip(
                ("method", "benchmark", "protocol", "miou", "pixel_acc"),
                ("sseg_plus", "world", "self_train", metrics["miou"], metrics.get("pixel_acc")),
            ):
                table[col].append(v)
            break
    return table


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
    if args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        print(f"error: MLflow store {uri}: no such database file", file=sys.stderr)
        return 2
    # one try, 10 s: an unreachable server is reported now, not after MLflow's ~4 min of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        rows = compare_table(args.experiment, uri, metrics, args.limit)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # an unreachable server: MlflowException / requests errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: MLflow store {uri}: {first}", file=sys.stderr)
        return 2
    print(format_table(rows))
    table = method_comparison(args.experiment, uri)
    if table is not None:
        from ovs.eval.comparison import rows as comparison_rows

        shown = [
            {**row, "miou": f"{row['miou']:.4f}", "pixel_acc": f"{row['pixel_acc'] or 0:.4f}"}
            for row in comparison_rows(table)
        ]
        print("\nmethods (newest evaluate stage):")
        print(format_table(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
