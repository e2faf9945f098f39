"""MLflow-backed tracker handed to stages, and the tracking-URI default.

Nothing here runs at import. :class:`MlflowTracker` wraps one MLflow run id and logs through
``MlflowClient`` so that several runs (a pipeline parent run and its nested stage runs) can be
open without relying on MLflow's global "active run" state.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI_NAME = "mlflow.db"
TAG_STAGE = "ovs.stage"
TAG_STATUS = "ovs.status"  # running | ran | skipped | failed | incomplete
TAG_SOURCE_RUN = "ovs.source_run_id"  # for skipped stages: the run that made the output
TAG_OUTPUT = "ovs.output_dir"
TAG_INCOMPLETE_STAGE = "ovs.incomplete_stage"  # on the parent run: the stage that stopped early
TAG_MACHINE = "ovs.machine"  # on the parent run: where it ran (CPU model, cores, GPUs)
# MLflow 3's UI opens an experiment on its GenAI "Traces" overview unless it is tagged as model
# development (the values its UI knows: genai_development, custom_model_development, ...).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The code version (ovs.provenance) on the parent and every stage run.
CODE_TAGS = {
    "git_commit": "ovs.git_commit",
    "git_dirty": "ovs.git_dirty",
    "code_hash": "ovs.code_hash",
}


def code_tags(version: dict[str, Any]) -> dict[str, str]:
    """MLflow tags of an :func:`ovs.provenance.code_version` (``None`` → ``"unknown"``)."""
    return {
        tag: "unknown" if version.get(key) is None else str(version[key])
        for key, tag in CODE_TAGS.items()
    }


def machine() -> str:
    """Where this process runs, in words: CPU model and core count, CUDA devices if any (what
    the report and README print next to a number)."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{model}, {os.cpu_count()} CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            text += ", " + ", ".join(
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            )
    except Exception:  # noqa: BLE001 - no torch / no driver: CPU only
        pass
    return text


def stage_run_name(stage: str, section: Any = None, status: str | None = None) -> str:
    """What a stage run is called in the UI: ``train (sseg)`` when its section selects a method
    (``train.method``), ``evaluate``, ``pairs (skipped)``."""
    method = getattr(section, "method", None)
    parts = [str(method)] if isinstance(method, str) and method else []
    parts += [status] if status else []
    return f"{stage} ({', '.join(parts)})" if parts else stage


def default_tracking_uri(repo_root: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo_root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(repo_root).resolve() / DEFAULT_TRACKING_URI_NAME}"


class MlflowTracker:
    """Logs to one MLflow run. Params are truncated to MLflow's 6000-char limit."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), ts, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def log_image(self, image: Any, name: str) -> None:
        """``image``: uint8 ``[H,W,3]`` array or PIL image, saved as PNG artifact ``name``."""
        self.client.log_image(self.run_id, image, name)

    def log_table(self, table: dict[str, list], name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(table, indent=1, default=str))
            self.client.log_artifact(self.run_id, str(p))
