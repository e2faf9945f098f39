"""Golden figures of the smoke pipeline (``conf/smoke.yaml``): every stage manifest's counts and
metrics, less the ones that measure time, one record per CPU kernel family
(:func:`tests.golden.machine.kernel_family`). ``tests/golden/smoke_pipeline.json``'s ``AVX2``
record was recorded before the layout refactor (issue 13), by the pre-refactor code (commit
80056fe) plus the one change meant to move these numbers, shards read in key order where samples
are batched (training: ``ovs/data/train_data.py``, ``ovs/data/ingest.py``; the pairs scorer:
``ovs/pairs/maker.py``, via ``ovs.data.shards.iter_shard_by_key``), on an AVX2 box; its ``AVX512``
record by the code of commit 2fee126 (no change meant to move numbers since 80056fe) on an AVX-512 BF16 + AMX
box (only the self_train figures differ from AVX2's). Since, in both: ``entities.mean_partners``
5.2667 -> 5.1111, from the cross-image pairs built in bucketed passes (issue 17; other draws,
the same distribution; integer and float64 NumPy work, the same on every ISA). Both with ``python pipelines/full.py --config
conf/smoke.yaml train.cpus_per_worker=1 self_train.cpus_per_worker=1``.
``tests/stage/test_golden_pipeline.py`` must reproduce this machine's kernel family's record: exactly on
the machine fingerprint it was recorded on; elsewhere the counts exactly and the metrics within
0.02 (other float kernels can move a K-means or matching decision). Regenerate this machine's
record with ``OVS_REGEN_GOLDEN=1`` only for a change meant to move numbers (the other
families' records stay; say in the commit which were regenerated)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.golden.machine import GOLDEN, fingerprint, kernel_family

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
    family = kernel_family()
    records = json.loads(FILE.read_text())["kernels"] if FILE.exists() else {}
    if os.environ.get("OVS_REGEN_GOLDEN"):
        records[family] = {"machine": fingerprint(), "stages": got}
        FILE.write_text(json.dumps({"kernels": records}, indent=1, sort_keys=True) + "\n")
        return
    assert family in records, (
        f"no golden record for the {family} kernels: record one (OVS_REGEN_GOLDEN=1)"
    )
    golden = records[family]
    want = golden["stages"]
    assert sorted(got) == sorted(want)
    for stage in want:
        assert got[stage]["counts"] == want[stage]["counts"], stage
        assert sorted(got[stage]["metrics"]) == sorted(want[stage]["metrics"]), stage
        if golden["machine"] == fingerprint():
            assert got[stage]["metrics"] == want[stage]["metrics"], f"{stage} moved (same machine)"
        else:
            for k, v in want[stage]["metrics"].items():
                g = got[stage]["metrics"][k]
                assert abs(g - v) <= 0.02, (stage, k, v, g)
