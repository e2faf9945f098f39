"""Failure drill: SIGKILL a stage's whole process group mid-run, rerun it, and compare with an
uninterrupted run of the same config in another workdir.

``pipelines/pseudo_masks.py`` as a user runs it (its own local Ray, MLflow on sqlite) over 6
download shards; the kill lands after its first per-shard output is written and before its
manifest. The rerun must skip the shards already written, redo the rest, and leave outputs
equal to the uninterrupted run's: same shard files, same rows, every sample exactly once.

``pipelines/train.py`` likewise (two DDP ranks), killed after its second checkpoint: the rerun
resumes from the last checkpoint and ends with weights (and per-step losses after the resume
point) equal to an uninterrupted run's, bit for bit, and the same metrics: the same config run
twice gives identical results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ovs.data.shards import iter_shard, list_shards
from ovs.stage import MANIFEST, resolve
from pipelines.common import connect_mlflow, run_stage
from pipelines.graph import STAGES, load_config
from tests.tiny_world import tiny_upstream
from tests.upstream import run_upstream

REPO = Path(__file__).resolve().parents[2]
SHARDS = 6
OVERRIDES = [
    "world.num_train=24",
    "world.num_eval=4",
    "download.number_sample_per_shard=4",  # 24 samples -> 6 shards
    "pseudo_masks.image_size=32",
    # one actor on the single CPU, 2 images per batch: shards complete one after another,
    # so the kill lands between shards
    "pseudo_masks.num_actors=1",
    "pseudo_masks.num_cpus=0.5",
    "pseudo_masks.batch_size=2",
    "pseudo_masks.oracle_images=4",
    "pseudo_masks.figure_images=2",
    "ray.num_cpus=1",
    "ray.object_store_memory_mb=100",
]


def stage_cmd(workdir: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "pipelines" / "pseudo_masks.py"),
        "--config",
        str(REPO / "conf" / "smoke.yaml"),
        f"workdir={workdir}",
        *OVERRIDES,
    ]


def session_pids(sid: int) -> set[int]:
    """Live (non-zombie) processes of session ``sid`` (Linux ``/proc``)."""
    pids = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] not in "ZX":
            pids.add(int(d.name))
    return pids


def kill_when(cmd: list[str], ready, timeout_s: float = 300) -> None:
    """Run ``cmd`` in its own session and SIGKILL its whole process group as soon as
    ``ready()`` holds; asserts it was killed and that none of its processes outlive it."""
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        while not ready():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() - t0 < timeout_s, f"not ready within {timeout_s} s"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
        deadline = time.time() + 30
        while (left := session_pids(proc.pid)) and time.time() < deadline:
            time.sleep(0.2)
        for pid in left:  # nothing should be left; never leave strays to other tests
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not left, f"processes of the killed stage still alive 30 s later: {left}"


def masks(out_dir: Path) -> dict[str, list[dict]]:
    """``shard stem -> rows`` of every per-shard mask file."""
    return {p.stem: pq.read_table(p).to_pylist() for p in sorted(out_dir.glob("masks/*.parquet"))}


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_equals_uninterrupted(tmp_path, mlflow_uri, ray_local):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cfg = load_config(str(REPO / "conf" / "smoke.yaml"), [f"workdir={killed}", *OVERRIDES])
    client, exp_id, _ = connect_mlflow(cfg.experiment)
    parent = client.create_run(exp_id, run_name="upstream").info.run_id
    for name in ("world", "download"):  # no Ray needed for these two
        run_stage(STAGES, name, cfg, False, client, exp_id, parent, "")
    shutil.copytree(killed, clean)
    rel = resolve(STAGES, "pseudo_masks", cfg).out_dir.relative_to(killed)
    download = resolve(STAGES, "download", cfg).out_dir
    shard_keys = {s.stem: [x["key"] for x in iter_shard(s, ())] for s in list_shards(download)}
    assert len(shard_keys) == SHARDS and sum(map(len, shard_keys.values())) == 24

    # The drill: start the stage in its own session, SIGKILL the whole group mid-run.
    out = killed / rel
    t0 = time.time()
    kill_when(stage_cmd(killed), lambda: bool(list(out.glob("masks/*.parquet"))))
    written = masks(out)
    assert 1 <= len(written) < SHARDS, f"kill landed after {len(written)} of {SHARDS} shards"
    assert not (out / MANIFEST).exists(), "a killed stage must leave no manifest"
    print(f"killed after {len(written)}/{SHARDS} shards ({time.time() - t0:.1f}s)")

    # Rerun the same command after the kill.
    t1 = time.time()
    r = subprocess.run(stage_cmd(killed), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    print(f"rerun: {time.time() - t1:.1f}s")
    # An uninterrupted run of the same config in the other workdir (in this process, on the
    # session's Ray: one Ray start less than a third subprocess).
    clean_cfg = load_config(str(REPO / "conf" / "smoke.yaml"), [f"workdir={clean}", *OVERRIDES])
    run_stage(STAGES, "pseudo_masks", clean_cfg, False, client, exp_id, parent, "")
    resumed = json.loads((out / MANIFEST).read_text())
    reference = json.loads((clean / rel / MANIFEST).read_text())
    assert resumed["counts"]["shards_resumed"] == len(written)
    assert reference["counts"]["shards_resumed"] == 0

    got, want = masks(out), masks(clean / rel)
    assert sorted(got) == sorted(want) == sorted(shard_keys)
    for stem, rows in want.items():
        assert got[stem] == rows, f"shard {stem} differs from the uninterrupted run"
        assert [r["key"] for r in rows] == shard_keys[stem]  # every sample once, in shard order
    for stem, rows in written.items():
        assert got[stem] == rows  # the shards written before the kill were kept as they were
    keys = [r["key"] for rows in got.values() for r in rows]
    assert len(keys) == len(set(keys)) == 24
    leftovers = sorted(p.name for p in (out / "masks").iterdir() if p.suffix != ".parquet")
    print(
        f"rerun resumed {len(written)} shards, redid {SHARDS - len(written)}; temp files left "
        f"by the kill: {leftovers}"
    )
    # Counts describe the whole output, as an uninterrupted run's do.
    assert {k: v for k, v in resumed["counts"].items() if k != "shards_resumed"} == {
        k: v for k, v in reference["counts"].items() if k != "shards_resumed"
    }
    assert resumed["metrics"]["oracle_miou"] == pytest.approx(reference["metrics"]["oracle_miou"])


SMOKE = str(REPO / "conf" / "smoke.yaml")


def train_overrides(root: Path) -> list[str]:
    """Two DDP ranks (each resumes its own data state), 16 steps, a checkpoint every 2, on the
    session's shared 24-image world."""
    return [
        *tiny_upstream(root),
        "train.num_workers=2",
        "train.steps=16",
        "train.warmup_steps=2",
        "train.log_every=2",
        "train.checkpoint_every=2",
        "train.eval_limit=1",
        "ray.num_cpus=2",
        "ray.object_store_memory_mb=100",
    ]


def losses(client, run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}


@pytest.mark.slow
def test_sigkill_train_then_rerun_equals_uninterrupted(tmp_path, mlflow_uri, ray_local):
    import torch

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cfg = load_config(SMOKE, train_overrides(killed))
    client, exp_id, _ = connect_mlflow(cfg.experiment)
    parent = client.create_run(exp_id, run_name="upstream").info.run_id
    # the upstream of the evaluate/self_train/pairs stage tests (same hashes: tests/upstream.py)
    run_upstream(("world", "download", "entities", "pseudo_masks"), cfg, client, exp_id, parent)
    shutil.copytree(killed, clean)
    out = resolve(STAGES, "train", cfg).out_dir
    cmd = [sys.executable, str(REPO / "pipelines" / "train.py"), "--config", SMOKE]
    cmd += train_overrides(killed)

    def second_checkpoint() -> bool:  # the first is then registered with Ray Train
        return len(list(out.glob("ray_train/sseg/checkpoint_*/state.pt"))) >= 2

    kill_when(cmd, second_checkpoint)
    assert not (out / MANIFEST).exists(), "a killed stage must leave no manifest"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    resumed = json.loads((out / MANIFEST).read_text())
    assert resumed["metrics"]["steps_done"] == 16
    clean_cfg = load_config(SMOKE, train_overrides(clean))
    reference = run_stage(STAGES, "train", clean_cfg, False, client, exp_id, parent, "")

    after = losses(client, resumed["mlflow_run_id"])
    assert min(after) > 2 and max(after) == 16, f"the rerun resumed mid-run: {sorted(after)}"
    want = losses(client, reference["mlflow_run_id"])
    assert after == {s: want[s] for s in after}, "per-step losses after the resume differ"
    got = torch.load(out / "model" / "latest.pt", weights_only=True)["model"]
    ref_out = resolve(STAGES, "train", clean_cfg).out_dir
    ref = torch.load(ref_out / "model" / "latest.pt", weights_only=True)["model"]
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref), "final weights differ"
    timing = {"train_seconds", "data_wait_fraction"}  # how fast, not what
    same = [
        {k: v for k, v in m["metrics"].items() if k not in timing} for m in (resumed, reference)
    ]
    assert same[0] == same[1] and {"miou", "miou_at_init", "pixel_acc"} <= set(same[0])
