"""The run report (tools.report) on a hand-made MLflow store: a pipeline parent run with a
ran ``pseudo_masks`` and ``train`` and a skipped ``evaluate`` whose results live in the run
that made them. Checks what the page holds, that it names no external URL, and README's
generated section."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ovs.codecs import png_bytes
from tools.report.collect import collect, latest_pipeline_run
from tools.report.html import render, results_markdown
from tools.report.readme import BEGIN, END, splice


def _png(tmp_path, name, shape=(8, 12)):
    p = tmp_path / name
    p.write_bytes(png_bytes(np.full((*shape, 3), 100, np.uint8)))
    return p


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating an MLflow sqlite DB costs seconds)."""
    from mlflow.tracking import MlflowClient

    tmp_path = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, run_name="pipeline-x", tags={"ovs.kind": "pipeline"})
    pid = parent.info.run_id
    client.log_text(pid, "experiment: e\nseed: 0\n", "config.yaml")
    client.log_metric(pid, "evaluate.miou", 0.25)
    client.set_tag(pid, "ovs.machine", "test CPU, 2 CPUs")

    def child(name, status, **tags):
        run = client.create_run(
            exp,
            run_name=name,
            tags={
                "mlflow.parentRunId": pid,
                "ovs.stage": name.split()[0],
                "ovs.status": status,
                "ovs.git_commit": "abc123",
                **tags,
            },
        )
        return run.info.run_id

    pm = child("pseudo_masks", "ran")
    client.log_metric(pm, "oracle_miou", 0.61)
    client.log_metric(pm, "stage_seconds", 3.0)
    client.log_metric(pm, "count.shards_resumed", 1)
    client.log_artifact(pm, str(_png(tmp_path, "pseudo_masks_grid.png")))
    tr = child("train (sseg)", "ran")
    for step, loss in ((10, 2.0), (20, 1.5), (30, 1.2)):
        client.log_metric(tr, "train/loss_mask", loss, step=step)
        client.log_metric(tr, "train/lr", 1e-3 * step, step=step)
    # evaluate was skipped: its outputs were made by an earlier run
    source = client.create_run(exp, run_name="evaluate").info.run_id
    d = tmp_path / "sseg" / "mask_free" / "world"
    d.mkdir(parents=True)
    (d / "result.json").write_text(
        json.dumps(
            {
                "method": "sseg",
                "protocol": "mask_free",
                "dataset": "world",
                "miou": 0.25,
                "acc": 0.5,
                "macc": 0.3,
                "num_images": 16,
                "per_class_iou": {"background": 0.5, "cat": None, "tree & bush": 0.25},
            }
        )
    )
    _png(d, "overlays.png", (20, 60))
    _png(d, "confusion.png")
    client.log_artifacts(source, str(tmp_path / "sseg"), "sseg")
    child("evaluate (skipped)", "skipped", **{"ovs.source_run_id": source})
    return client, pid


def test_report_holds_every_section_and_no_external_url(store):
    client, pid = store
    assert latest_pipeline_run(client) == pid
    data = collect(client, pid)
    assert [s.name for s in data.stages] == ["pseudo_masks", "train", "evaluate"]
    assert [(r.method, r.benchmark, r.protocol, r.miou) for r in data.results] == [
        ("sseg", "world", "mask_free", 0.25)
    ]
    assert data.curves["train/loss_mask"] == [(10, 2.0), (20, 1.5), (30, 1.2)]
    page = render(data)
    rows = re.findall(r'<tr class="result">(.*?)</tr>', page)
    assert len(rows) == 1 and "<td>world</td>" in rows[0] and "0.2500" in rows[0]
    assert "tree &amp; bush" in page  # class names escaped
    assert "oracle mIoU 0.6100" in page and "shards_resumed=1" in page
    assert "ran (resumed)" in page and "skipped from run" in page
    assert "seed: 0" in page and "test CPU, 2 CPUs" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    # pseudo-mask grid, overlays, confusion, training curves: all embedded
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


def test_readme_section_is_generated_from_the_run(store):
    client, pid = store
    section = results_markdown(collect(client, pid))
    assert "| sseg | world | mask_free | 0.2500 | 0.5000 | 0.3000 | 16 |" in section
    assert "test CPU, 2 CPUs" in section
    readme = f"# x\n\n## Results\n{BEGIN}\nold numbers\n{END}\nafter\n"
    new = splice(readme, section)
    assert "old numbers" not in new and section in new and new.endswith(f"{END}\nafter\n")
    assert splice(new, section) == new  # rerunning with the same run changes nothing
    with pytest.raises(ValueError, match="markers"):
        splice("# no markers\n", section)
