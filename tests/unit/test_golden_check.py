"""The smoke golden's check (``tests/golden/pipeline.py``) on hand-written manifests: it compares with
the record of this machine's CPU kernel family only, exactly on the recorded fingerprint and within
0.02 elsewhere, refuses a family it has no record for, and regenerating rewrites only this
family's record."""

from __future__ import annotations

import json

import pytest

from tests.golden import pipeline


def _manifests(root, miou: float) -> None:
    for stage, counts, metrics in [
        ("train", {"steps": 40}, {"loss": 10.5, "img_per_s": 3.0}),
        ("evaluate", {"images": 16}, {"miou": miou}),
    ]:
        d = root / stage / "abc"
        d.mkdir(parents=True)
        m = {"stage": stage, "counts": counts, "metrics": metrics}
        (d / "_SUCCESS.json").write_text(json.dumps(m))


def _record(miou: float, machine: str) -> dict:
    stages = {
        "train": {"counts": {"steps": 40}, "metrics": {"loss": 10.5}},
        "evaluate": {"counts": {"images": 16}, "metrics": {"miou": miou}},
    }
    return {"machine": machine, "stages": stages}


@pytest.fixture
def golden(tmp_path, monkeypatch):
    file = tmp_path / "golden.json"
    records = {"AVX2": _record(0.50, "box-avx2"), "AVX512": _record(0.60, "box-avx512")}
    file.write_text(json.dumps({"kernels": records}))
    monkeypatch.setattr(pipeline, "FILE", file)
    monkeypatch.setattr(pipeline, "kernel_family", lambda: "AVX512")
    monkeypatch.setattr(pipeline, "fingerprint", lambda: "box-avx512")
    monkeypatch.delenv("OVS_REGEN_GOLDEN", raising=False)
    return file


def test_timing_metrics_are_left_out(tmp_path):
    _manifests(tmp_path, 0.6)
    assert pipeline.figures(tmp_path)["train"]["metrics"] == {"loss": 10.5}


def test_this_familys_record_exactly_on_its_fingerprint(golden, tmp_path, monkeypatch):
    _manifests(tmp_path / "same", 0.60)
    pipeline.check(tmp_path / "same")
    _manifests(tmp_path / "moved", 0.6001)  # the AVX2 record's 0.50 is never consulted
    with pytest.raises(AssertionError, match="moved"):
        pipeline.check(tmp_path / "moved")
    monkeypatch.setattr(pipeline, "fingerprint", lambda: "other-avx512-box")
    pipeline.check(tmp_path / "moved")
    _manifests(tmp_path / "far", 0.63)
    with pytest.raises(AssertionError, match="miou"):
        pipeline.check(tmp_path / "far")


def test_the_other_family_is_held_to_its_own_record(golden, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "kernel_family", lambda: "AVX2")
    monkeypatch.setattr(pipeline, "fingerprint", lambda: "box-avx2")
    _manifests(tmp_path / "w", 0.60)
    with pytest.raises(AssertionError, match="moved"):
        pipeline.check(tmp_path / "w")
    monkeypatch.setattr(pipeline, "kernel_family", lambda: "DEFAULT")
    with pytest.raises(AssertionError, match="no golden record for the DEFAULT kernels"):
        pipeline.check(tmp_path / "w")


def test_regenerating_rewrites_only_this_familys_record(golden, tmp_path, monkeypatch):
    monkeypatch.setenv("OVS_REGEN_GOLDEN", "1")
    _manifests(tmp_path / "w", 0.70)
    pipeline.check(tmp_path / "w")
    records = json.loads(golden.read_text())["kernels"]
    assert records["AVX2"] == _record(0.50, "box-avx2")
    assert records["AVX512"] == _record(0.70, "box-avx512")
