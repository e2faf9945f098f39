"""Write a pipeline run's HTML report, or rewrite README's generated sections.

    python -m tools.report [RUN_ID] [--out report.html] [--tracking-uri URI]
    python -m tools.report [RUN_ID] --readme [README.md] [--compare-experiment compare]

``RUN_ID`` defaults to the newest pipeline run (tag ``ovs.kind=pipeline``) of the MLflow store
(``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``). The page is one self-contained file (pictures
embedded); open it in any browser. ``--readme`` rewrites README's results section from that run
and its method comparison section from the newest compare run (``make compare``; left as it is,
with a note, when there is none): the one command that writes figures into README
(:mod:`tools.report.readme`). A store or run that does not exist is one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import default_tracking_uri
    from tools.report import write_report
    from tools.report.collect import collect, latest_pipeline_run
    from tools.report.html import results_markdown
    from tools.report.readme import rewrite

    p = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__.split("\n")[0])
    p.add_argument("run_id", nargs="?", default=None, help="pipeline run id (default: newest)")
    p.add_argument("--out", default="report.html", help="HTML file to write (%(default)s)")
    p.add_argument(
        "--readme",
        nargs="?",
        const="README.md",
        default=None,
        help="rewrite this README's generated sections instead",
    )
    p.add_argument(
        "--compare-experiment",
        default="compare",
        help="experiment whose newest evaluate stage gives the comparison (%(default)s)",
    )
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        print(f"error: no MLflow database at {uri}", file=sys.stderr)  # not created empty
        return 2
    client = MlflowClient(uri)
    try:
        run_id = args.run_id or latest_pipeline_run(client)
        client.get_run(run_id)
    except (LookupError, MlflowException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        return 2
    if args.readme:
        from ovs.eval.comparison import markdown
        from tools.runs import method_comparison

        sections = {"results": results_markdown(collect(client, run_id))}
        table = method_comparison(args.compare_experiment, uri)
        if table is not None:
            sections["comparison"] = markdown(table)
        rewrite(args.readme, sections)
        print(f"rewrote the results section of {args.readme} from run {run_id}")
        if table is None:
            print(
                f"no comparison table in experiment {args.compare_experiment!r}: "
                "the comparison section is unchanged (make compare first)"
            )
        else:
            print(f"rewrote its comparison section ({len(table['method'])} rows)")
    else:
        print(f"wrote {write_report(client, run_id, args.out)} (run {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
