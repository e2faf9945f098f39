"""The run report: ``python -m tools.report [RUN_ID]`` (see ``__main__``); the pipeline calls
:func:`write_report` at the end of every run and logs the file as ``report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_report(client: Any, run_id: str, path: str | Path, status: str | None = None) -> Path:
    """Collect run ``run_id`` from MLflow and write its self-contained HTML report to ``path``
    (``status`` overrides the run's, for a report written just before the run ends)."""
    from ovs.io import atomic_write_bytes
    from tools.report.collect import collect
    from tools.report.html import render

    data = collect(client, run_id)
    if status:
        data.status = status
    path = Path(path)
    atomic_write_bytes(path, render(data).encode())
    return path
