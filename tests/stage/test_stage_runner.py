"""The stage runner on real MLflow (sqlite) with small stages defined here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovs.stage import (
    MANIFEST,
    Stage,
    StageIncomplete,
    order,
    read_manifest,
    resolve,
    write_manifest,
)
from pipelines.common import PipelineError, connect_mlflow, run_stage
from pipelines.graph import load_config

REPO = Path(__file__).resolve().parents[2]
calls: list[str] = []


def _produce(ctx):
    calls.append(ctx.name)
    n = ctx.cfg.world.num_train
    for i in range(n):
        (ctx.out_dir / f"part-{i}.txt").write_text(str(i))
    ctx.tracker.log_metrics({"made": n})
    return {"counts": {"parts": n}, "metrics": {"made": float(n)}}


def _consume(ctx):
    calls.append(ctx.name)
    parts = sorted(ctx.inputs["a"].glob("part-*.txt"))
    return {"counts": {"seen": len(parts)}}


def _boom(ctx):
    (ctx.out_dir / "half.txt").write_text("partial")
    raise RuntimeError("killed mid-way")


STAGES = {
    "a": Stage("a", run=_produce, sections=("world",)),
    "b": Stage("b", run=_consume, inputs=("a",)),
    "c": Stage("c", run=_boom, inputs=("a",)),
}


@pytest.fixture
def env(tmp_path, mlflow_uri):
    cfg = load_config(None, [f"workdir={tmp_path / 'w'}", "world.num_train=3"])
    client, exp_id, _ = connect_mlflow("unit")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    calls.clear()
    return cfg, client, exp_id, parent


def test_hash_covers_config_and_inputs():
    c1 = load_config(None, ["world.num_train=3"])
    c2 = load_config(None, ["world.num_train=4"])
    assert resolve(STAGES, "a", c1).hash != resolve(STAGES, "a", c2).hash
    assert resolve(STAGES, "b", c1).hash != resolve(STAGES, "b", c2).hash  # via input hash
    assert (
        resolve(STAGES, "b", c1).hash
        == resolve(STAGES, "b", load_config(None, ["world.num_train=3"])).hash
    )
    assert order(STAGES, ["b", "a"], c1) == ["a", "b"]


def test_how_a_stage_runs_is_not_hashed_what_it_computes_is():
    """Resources (actors, devices, runtimes, logging) stay out of the hash, so a rerun or a
    resume with another cluster shape finds the output; settings of the result do not."""
    from ovs.config import hash_view, to_dict
    from pipelines.graph import STAGES as PIPELINE

    base = load_config(None, [])
    hashes = {name: resolve(PIPELINE, name, base).hash for name in PIPELINE}
    runs_differently = [
        "download.processes_count=4",
        "entities.num_actors=8",
        "pseudo_masks.num_actors=32",
        "pseudo_masks.num_gpus=1.0",
        "pseudo_masks.runtime=eager",
        "pseudo_masks.decode=device",
        "pseudo_masks.batch_size=128",
        "train.cpus_per_worker=8",
        "train.checkpoint_every=50",
        "evaluate.num_actors=4",
        "self_train.label.num_actors=8",
        "self_train.max_failures=5",
        "pairs.num_gpus=1.0",
    ]
    for override in runs_differently:
        cfg = load_config(None, [override])
        assert {n: resolve(PIPELINE, n, cfg).hash for n in PIPELINE} == hashes, override
    for override, changed in [
        ("pseudo_masks.k=6", "pseudo_masks"),
        ("train.batch_size=16", "train"),
        ("self_train.label.ignore_quantile=0.3", "self_train"),
        ("download.image_size=48", "download"),
    ]:
        cfg = load_config(None, [override])
        assert resolve(PIPELINE, changed, cfg).hash != hashes[changed], override
        assert resolve(PIPELINE, "self_train", cfg).hash != hashes["self_train"], override
    # Sections without UNHASHED fields hash as before (their full dict).
    assert hash_view(base.world) == to_dict(base.world)
    # Every UNHASHED name is a field of its class (a typo would silently hash it).
    import dataclasses

    for section in (
        base.download,
        base.entities,
        base.pseudo_masks,
        base.train,
        base.evaluate,
        base.self_train,
        base.self_train.label,
        base.pairs,
    ):
        names = {f.name for f in dataclasses.fields(section)}
        unhashed = set(type(section).UNHASHED)
        assert unhashed and unhashed <= names, (type(section).__name__, unhashed - names)


def test_run_skip_force_and_mlflow(env):
    cfg, client, exp_id, parent = env
    m = run_stage(STAGES, "a", cfg, False, client, exp_id, parent, "")
    assert m["counts"] == {"parts": 3} and calls == ["a"]
    out = resolve(STAGES, "a", cfg).out_dir
    assert read_manifest(out)["mlflow_run_id"] == m["mlflow_run_id"]
    run_stage(STAGES, "b", cfg, False, client, exp_id, parent, "")
    run_stage(STAGES, "a", cfg, False, client, exp_id, parent, "")  # skipped
    assert calls == ["a", "b"]
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    status = sorted((r.data.tags["ovs.stage"], r.data.tags["ovs.status"]) for r in runs)
    assert status == [("a", "ran"), ("a", "skipped"), ("b", "ran")]
    skipped = next(r for r in runs if r.data.tags["ovs.status"] == "skipped")
    assert skipped.data.tags["ovs.source_run_id"] == m["mlflow_run_id"]
    made = next(r for r in runs if r.info.run_id == m["mlflow_run_id"])
    assert made.data.metrics["made"] == 3 and made.data.params["world.num_train"] == "3"
    run_stage(STAGES, "a", cfg, True, client, exp_id, parent, "")  # --force recomputes
    assert calls == ["a", "b", "a"]


def test_partial_output_never_counts(env):
    cfg, client, exp_id, parent = env
    run_stage(STAGES, "a", cfg, False, client, exp_id, parent, "")
    with pytest.raises(RuntimeError, match="killed"):
        run_stage(STAGES, "c", cfg, False, client, exp_id, parent, "")
    out = resolve(STAGES, "c", cfg).out_dir
    assert (out / "half.txt").exists() and not (out / MANIFEST).exists()
    runs = client.search_runs([exp_id], filter_string="tags.`ovs.stage` = 'c'")
    assert runs[0].info.status == "FAILED" and runs[0].data.tags["ovs.status"] == "failed"


def test_missing_upstream_is_a_clear_error(env):
    cfg, client, exp_id, parent = env
    with pytest.raises(PipelineError, match=r"needs the output of stage 'a'.*run pipelines/a.py"):
        run_stage(STAGES, "b", cfg, False, client, exp_id, parent, "")


def _cli(args, tmp_path, **kw):
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'ml.db'}",
        "PATH": "/usr/bin:/bin",
        # Entry points import ovs/pipelines as installed packages (no sys.path edits); point
        # them at this tree, as Ray's working_dir does, not at whichever checkout is installed.
        "PYTHONPATH": str(REPO),
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        **kw,
    }
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_bad_config_one_error_nothing_written(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("world:\n  nm_train: 3\n")
    wd = tmp_path / "w"
    r = _cli(["pipelines/full.py", "--config", str(bad), f"workdir={wd}"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "world.nm_train: unknown key" in r.stderr and str(bad) in r.stderr
    r = _cli(["pipelines/full.py", f"workdir={wd}", "world.num_train=lots"], tmp_path)
    assert r.returncode == 2 and "world.num_train: expected int" in r.stderr
    r = _cli(["pipelines/full.py", "--config", str(tmp_path / "nope.yaml")], tmp_path)
    assert r.returncode == 2 and "config file not found" in r.stderr
    assert not wd.exists() and not (tmp_path / "ml.db").exists()


def test_unwritable_workdir_and_unreachable_mlflow(tmp_path):
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        r = _cli(["pipelines/world.py", f"workdir={ro / 'sub'}"], tmp_path)
        assert r.returncode == 2 and "is not writable" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _cli(["pipelines/world.py", f"workdir={blocker / 'sub'}"], tmp_path)
    assert r.returncode == 2 and "is not writable" in r.stderr
    r = _cli(
        ["pipelines/world.py", f"workdir={tmp_path / 'w'}"],
        tmp_path,
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",
    )
    assert r.returncode == 2 and "unreachable" in r.stderr and r.stderr.strip().count("\n") == 0


def test_world_stage_cli_runs_then_skips(tmp_path):
    args = [
        "pipelines/world.py",
        f"workdir={tmp_path / 'w'}",
        "world.num_train=8",
        "world.num_eval=4",
        "ray.num_cpus=1",
    ]
    r1 = _cli(args, tmp_path)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = _cli(args, tmp_path)
    assert r2.returncode == 0 and "skipped" in r2.stdout
    (manifest,) = (tmp_path / "w" / "world").glob(f"*/{MANIFEST}")
    assert json.loads(manifest.read_text())["counts"]["train_images"] == 8


# ----------------------------------------------------------------------------- incomplete stages


def _two_steps(ctx):
    """Does one step per attempt; stops (resumably) after the first, finishes on the second."""
    calls.append(ctx.name)
    done = sorted(p.name for p in ctx.out_dir.glob("step-*"))
    step = len(done) + 1
    (ctx.out_dir / f"step-{step}").write_text("ok")
    if step < 2:
        raise StageIncomplete(
            f"stopped at step {step} of 2 (time limit); rerun to continue", {"steps_done": step}
        )
    return {"counts": {"steps": step, "resumed_from": len(done)}}


INCOMPLETE = {
    "a": STAGES["a"],
    "i": Stage("i", run=_two_steps, inputs=("a",)),
    "after": Stage("after", run=_consume, inputs=("a", "i")),
}


def test_incomplete_stage_writes_no_manifest_and_resumes(env):
    cfg, client, exp_id, parent = env
    run_stage(INCOMPLETE, "a", cfg, False, client, exp_id, parent, "")
    with pytest.raises(StageIncomplete, match="step 1 of 2") as e:
        run_stage(INCOMPLETE, "i", cfg, False, client, exp_id, parent, "")
    assert e.value.metrics == {"steps_done": 1}
    out = resolve(INCOMPLETE, "i", cfg).out_dir
    assert (out / "step-1").is_file() and read_manifest(out) is None
    (run,) = client.search_runs([exp_id], filter_string="tags.`ovs.stage` = 'i'")
    assert run.info.status == "KILLED" and run.data.tags["ovs.status"] == "incomplete"
    assert run.data.metrics["steps_done"] == 1 and "stage_seconds" in run.data.metrics
    # Downstream refuses the partial output.
    with pytest.raises(PipelineError, match="needs the output of stage 'i'"):
        run_stage(INCOMPLETE, "after", cfg, False, client, exp_id, parent, "")
    # The rerun continues in the same, unwiped directory.
    m = run_stage(INCOMPLETE, "i", cfg, False, client, exp_id, parent, "")
    assert m["counts"] == {"steps": 2, "resumed_from": 1} and read_manifest(out) is not None
    assert calls == ["a", "i", "i"]


def test_pipeline_stops_at_an_incomplete_stage_with_exit_code_3(
    tmp_path, mlflow_uri, monkeypatch, capsys
):
    import pipelines.common as common
    import pipelines.graph as graph

    monkeypatch.setattr(graph, "STAGES", INCOMPLETE)
    monkeypatch.setattr(common, "init_ray", lambda cfg: None)  # these stages do not use Ray
    calls.clear()
    argv = [f"workdir={tmp_path / 'w'}", "world.num_train=2", "pipeline.stages=[after, i, a]"]
    assert common.main(argv=argv) == common.EXIT_INCOMPLETE == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (MLflow logs its DB set-up)
    assert last == "incomplete: stage 'i': stopped at step 1 of 2 (time limit); rerun to continue"
    assert calls == ["a", "i"]  # 'after' did not run
    client, exp_id, _ = connect_mlflow("default")
    (p,) = client.search_runs([exp_id], filter_string="tags.`ovs.kind` = 'pipeline'")
    assert p.info.status == "KILLED" and p.data.tags["ovs.status"] == "incomplete"
    assert p.data.tags["ovs.incomplete_stage"] == "i" and p.data.metrics["i.steps_done"] == 1
    assert common.main(argv=argv) == 0  # the rerun resumes 'i' and runs what follows
    assert calls == ["a", "i", "i", "after"]


# ----------------------------------------------------------------------------- code version


def test_code_version_on_runs_and_manifests(env, caplog):
    import logging

    from ovs import provenance

    cfg, client, exp_id, parent = env
    code = provenance.current()
    assert code["code_hash"]
    m = run_stage(STAGES, "a", cfg, False, client, exp_id, parent, "")
    assert m["code"] == code
    tags = client.get_run(m["mlflow_run_id"]).data.tags
    assert tags["ovs.code_hash"] == code["code_hash"]
    assert tags["ovs.git_commit"] == (code["git_commit"] or "unknown")
    assert tags["ovs.git_dirty"] == (
        "unknown" if code["git_dirty"] is None else str(code["git_dirty"])
    )
    # Reused by the same code: no warning.
    with caplog.at_level(logging.WARNING, logger="ovs"):
        run_stage(STAGES, "a", cfg, False, client, exp_id, parent, "")
    assert "made by other code" not in caplog.text
    # Reused by other code: a warning naming both versions, not an error.
    out = resolve(STAGES, "a", cfg).out_dir
    old = {
        "git_commit": "0123456789abcdef" * 2 + "01234567",
        "git_dirty": False,
        "code_hash": "feedbeef",
    }
    write_manifest(out, {**read_manifest(out), "code": old})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ovs"):
        run_stage(STAGES, "a", cfg, False, client, exp_id, parent, "")
    assert "made by other code" in caplog.text and "feedbeef" in caplog.text
    assert code["code_hash"] in caplog.text
    if code["git_commit"]:
        assert "0123456789ab" in caplog.text and code["git_commit"][:12] in caplog.text
    skipped = client.search_runs(
        [exp_id], filter_string="tags.`ovs.status` = 'skipped'", order_by=["start_time DESC"]
    )[0]
    assert "feedbeef" in skipped.data.tags["ovs.source_code_differs"]
    assert calls == ["a"]


def test_other_code_refused_or_redone_as_configured(env, tmp_path):
    """``pipeline.reuse_other_code``: ``refuse`` stops with the output and both versions named
    (in the driver's check before anything is written, and in ``run_stage``); ``redo``
    deletes the output (per-item files included) and recomputes it."""
    from ovs import provenance
    from pipelines.common import check_reuse

    cfg, client, exp_id, parent = env
    run_stage(STAGES, "a", cfg, False, client, exp_id, parent, "")
    out = resolve(STAGES, "a", cfg).out_dir
    write_manifest(out, {**read_manifest(out), "code": {"git_commit": "", "code_hash": "feedbeef"}})
    (out / "left-by-old-code.txt").write_text("x")
    refuse = load_config(
        None, [f"workdir={tmp_path / 'w'}", "world.num_train=3", "pipeline.reuse_other_code=refuse"]
    )
    check_reuse(STAGES, refuse, ["a"], force=True)  # --force recomputes anyway
    for check in (
        lambda: check_reuse(STAGES, refuse, ["a", "b"], force=False),
        lambda: run_stage(STAGES, "a", refuse, False, client, exp_id, parent, ""),
    ):
        with pytest.raises(PipelineError, match="made by other code: code hash feedbeef"):
            check()
    assert calls == ["a"] and read_manifest(out)["code"]["code_hash"] == "feedbeef"
    redo = load_config(
        None, [f"workdir={tmp_path / 'w'}", "world.num_train=3", "pipeline.reuse_other_code=redo"]
    )
    m = run_stage(STAGES, "a", redo, False, client, exp_id, parent, "")
    assert calls == ["a", "a"] and m["code"] == provenance.current()
    assert not (out / "left-by-old-code.txt").exists()
    check_reuse(
        STAGES, refuse, ["a"], force=False
    )  # made by this code now: reused under any policy


def test_stale_output_reruns_in_place(env):
    """A stage whose ``stale`` names a reason runs again in its directory (not wiped)."""
    cfg, client, exp_id, parent = env
    flag = Path(cfg.workdir_path) / "new-data"

    def grows(ctx):
        calls.append(ctx.name)
        (ctx.out_dir / f"item-{len(list(ctx.out_dir.glob('item-*')))}").write_text("x")
        return {"counts": {"items": len(list(ctx.out_dir.glob("item-*"))), "flag": flag.exists()}}

    def stale(cfg, manifest):
        return "new data" if flag.exists() and not manifest["counts"]["flag"] else None

    stages = {"g": Stage("g", run=grows, stale=stale)}
    run_stage(stages, "g", cfg, False, client, exp_id, parent, "")
    assert run_stage(stages, "g", cfg, False, client, exp_id, parent, "")["counts"]["items"] == 1
    flag.write_text("now")
    assert run_stage(stages, "g", cfg, False, client, exp_id, parent, "")["counts"]["items"] == 2
    run_stage(stages, "g", cfg, False, client, exp_id, parent, "")  # fresh again: skipped
    assert calls == ["g", "g"]


def test_missing_benchmark_fails_before_anything_is_written(tmp_path):
    wd, nope = tmp_path / "w", tmp_path / "no_voc"
    args = [
        "pipelines/full.py",
        f"workdir={wd}",
        f"evaluate.datasets=[{{name: voc21, root: '{nope}'}}]",
    ]
    r = _cli(args, tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr[-2000:]
    assert "evaluate.datasets[0] (voc21)" in r.stderr and str(nope) in r.stderr
    assert not wd.exists() and not (tmp_path / "ml.db").exists()
    # Stages other than evaluate are not held up by evaluate's data.
    from pipelines.common import preflight

    cfg = load_config(None, args[1:])
    preflight(cfg, ["world", "download", "train"])
    with pytest.raises(ValueError, match=r"evaluate.datasets\[0\] \(voc21\)"):
        preflight(cfg, ["train", "evaluate"])
