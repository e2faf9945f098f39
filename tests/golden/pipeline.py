"""Golden figures of the smoke pipeline (``conf/smoke.yaml``): every stage manifest's counts and
metrics, less the ones that measure time. ``tests/golden/smoke_pipeline.json`` was recorded
before the layout refactor (issue 13), by the pre-refactor code (commit 80056fe) plus the one
change meant to move these numbers, shards read in key order where samples are batched
(training: ``ovs/data/train_data.py``, ``ovs/data/ingest.py``; the pairs scorer:
``ovs/pairs/maker.py``, via ``ovs.data.shards.iter_shard_by_key``), with ``python pipelines/full.py --config conf/smoke.yaml
train.cpus_per_worker=1 self_train.cpus_per_worker=1``; ``tests/stage/test_golden_pipeline.py``
must reproduce it: exactly on the machine fingerprint it was recorded on; elsewhere the counts
exactly and the metrics within 0.02 (other float kernels can move a K-means or matching
decision). Regenerate with ``OVS_REGEN_GOLDEN=1`` only for a change meant to move numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.golden.machine import GOLDEN, fingerprint

FILE = GOLDEN / "smoke_pipeline.json"
_TIMING = ("_per_s", "seconds", "wait_fraction")


def figures(workdir: Path) -> dict[str, dict]:
    """``stage -> {"counts", "metrics"}`` from each stage's one manifest under ``workdir``."""
    out = {}
    for manifest in sorted(workdir.glob("*/*/_SUCCESS.json")):
        m = json.loads(manifest.read_text())
        metrics = {k: v for k, v in m["metrics"].items() if not k.endswith(_TIMING)}
        out[m["stage"]] = {"counts": m["counts"], "metrics": metrics}
    return out


def check(workdir: Path) -> None:
    got = figures(workdir)
    if os.environ.get("OVS_REGEN_GOLDEN"):
        FILE.write_text(json.dumps({"machine": fingerprint(), "stages": got}, indent=1) + "\n")
        return
    golden = json.loads(FILE.read_text())
    want = golden["stages"]
    assert sorted(got) == sorted(want)
    for stage in want:
        assert got[stage]["counts"] == want[stage]["counts"], stage
        assert sorted(got[stage]["metrics"]) == sorted(want[stage]["metrics"]), stage
        if golden["machine"] == fingerprint():
            assert got[stage]["metrics"] == want[stage]["metrics"], f"{stage} moved (same machine)"
        else:
            for k, v in want[stage]["metrics"].items():
                assert abs(got[stage]["metrics"][k] - v) <= 0.02, (stage, k, v)
