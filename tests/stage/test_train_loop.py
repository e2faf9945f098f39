"""The training loop's pieces that need no Ray: set-up order of both stages' tasks on a device
stand-in, every caption method's training task (what its Ray Train worker runs, in-process),
resume-state loading (``weights_only``), exact data-stream resume, device-side metric windows,
the schedules, the section checks, the incomplete-stage rule and the training precision."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ovs.data.augment import AugmentConfig
from ovs.eval.method import load_trained
from ovs.methods import load_checkpoint
from ovs.methods.sseg.config import SSegLossConfig
from ovs.precision import training_dtype
from ovs.pseudo_masks.masker import PseudoMaskConfig
from ovs.selftrain.training import LabelledRow, SelfTrainConfig, batches
from ovs.stage import StageIncomplete
from ovs.train.loop_config import LoopConfig
from ovs.train.schedules import cosine_schedule, poly_schedule, warmup_cosine, warmup_poly
from ovs.train.step import train_step
from ovs.training import SampleSource, TrainConfig
from pipelines.loop import LoopJob, progress_line, setup
from pipelines.ray_train import Window, check_complete, load_state, rank_state
from pipelines.self_train import SegmenterTaskFactory
from pipelines.train import SSegData, SSegTaskFactory
from tests.unit.test_shards import make_shard

pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")

META = torch.device("meta")  # a device that is not the CPU, without a GPU


def _tiny_train_cfg(**kw) -> TrainConfig:
    from pipelines.graph import load_config

    cfg = load_config(None, ["train.sseg.model.input_size=32", "train.augment.size=32"]).train
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _trained_state(model: torch.nn.Module, opt, sched, step: int) -> dict:
    """A real CPU training state after ``step`` optimiser steps, as the loop saves it."""
    for _ in range(step):
        opt.zero_grad()
        torch.stack([(p.float() ** 2).sum() for p in model.parameters()]).sum().backward()
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
        | {"step": step, "ranks": []},
        buf,
    )
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _assert_on(device: torch.device, model: torch.nn.Module, opt: torch.optim.Optimizer):
    assert {p.device.type for p in model.parameters()} == {device.type}
    moments = [
        v for st in opt.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")
    ]
    assert moments, "the resumed optimiser has Adam moments"
    assert {v.device.type for v in moments} == {device.type}, "optimizer state off-device"
    for p, st in opt.state.items():
        assert st["exp_avg"].device == p.device


def _job(cfg, task) -> LoopJob:
    return LoopJob(loop=cfg, task=task, seed=0, out_dir="", run=None)


def test_train_setup_moves_model_before_loading_optimizer_state():
    cfg = _tiny_train_cfg()
    data = SSegData("", "", "", 32, 10, "local")  # set-up reads no data
    job = _job(cfg, SSegTaskFactory(cfg, SSegLossConfig(), data, None))
    cpu = torch.device("cpu")
    task, opt, sched, start = setup(job, cpu, 0, 1, None)
    assert start == 0 and not opt.state
    state = _trained_state(task.model, opt, sched, 2)
    task, opt, sched, start = setup(job, META, 0, 1, state)
    assert start == 2 and sched.last_epoch == 2
    _assert_on(META, task.model, opt)
    assert {p.device.type for p in task.objective().parameters()} == {"meta"}


def test_self_train_setup_moves_model_before_loading_optimizer_state():
    cfg = SelfTrainConfig()
    job = _job(cfg, SegmenterTaskFactory(cfg, 3, [], [], ""))
    task, opt, sched, start = setup(job, torch.device("cpu"), 0, 1, None)
    state = _trained_state(task.model, opt, sched, 1)
    task, opt, sched, start = setup(job, META, 0, 1, state)
    assert start == 1
    _assert_on(META, task.model, opt)


# The train stage's caption methods on its SSegTask, at the tiny world's 32 px. OVSegmentor
# brings its own task (masked captions, cross-image partners from the entities stage): it is
# trained through the stage in tests/stage/test_compare_stage.py.
SSEG_TASK = {
    "sseg": ["train.sseg.model.input_size=32"],
    "clip": ["train.clip.vision.image_size=32"],
    "pacl": ["train.pacl.model.input_size=32"],
    "pmvit": ["train.pmvit.model.input_size=32", "train.pmvit.model.test_masks.image_size=32"],
    "groupvit": ["train.groupvit.model.image.input_size=32"],
}


def test_sseg_task_covers_every_caption_method():
    assert {*SSEG_TASK, "ovsegmentor"} == set(TrainConfig.method_sections())


@pytest.fixture
def captioned(tmp_path) -> Path:
    """2 shards of 4 captioned samples (random 16-px images, 4-class pseudo-masks, caption nouns
    for the noun losses), laid out as the download, pseudo_masks and entities outputs."""
    shards, masks, texts = tmp_path / "s", tmp_path / "m", tmp_path / "t"
    for d in (shards, masks, texts):
        d.mkdir()
    rng = np.random.default_rng(0)
    captions = [("a red boat on water", ["boat", "water"]), ("a cat on grass", ["cat", "grass"])]
    for s in range(2):
        keys = [f"{s:05d}{i:04d}" for i in range(4)]
        text = [captions[i % 2][0] for i in range(4)]
        nouns = [captions[i % 2][1] for i in range(4)]
        jpgs = []
        for _ in keys:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
            jpgs.append(buf.getvalue())
        make_shard(
            shards, f"{s:05d}", [(k, {"jpg": j, "txt": t}) for k, j, t in zip(keys, jpgs, text)]
        )
        labels = [_png(rng.integers(0, 4, (16, 16), dtype=np.uint8)) for _ in keys]
        pq.write_table(
            pa.table({"key": keys, "label_png": labels, "status": ["ok"] * 4}),
            masks / f"{s:05d}.parquet",
        )
        pq.write_table(
            pa.table(
                {"key": keys, "text": text, "keep": [True] * 4, "status": ["ok"] * 4}
                | {"nouns": nouns}
            ),
            texts / f"{s:05d}.parquet",
        )
    return tmp_path


@pytest.mark.parametrize("method", sorted(SSEG_TASK))
def test_every_caption_method_trains_through_its_task(method, captioned, tmp_path):
    """What a ``train`` Ray Train worker of a caption method runs, in-process on the CPU: the
    task the loop's :func:`setup` builds, two :func:`train_step` s on its in-memory batches
    (noun prompts where the method's loss has them) that change the weights, its data state
    (``weights_only``-loadable), its counts and its inference checkpoint, loaded back by the
    generic loader and evaluated as each of its evaluation rows."""
    from pipelines.graph import load_config

    cfg = load_config(
        None,
        [
            f"train.method={method}",
            *SSEG_TASK[method],
            "train.augment.size=32",
            "train.batch_size=4",
            "train.steps=2",
            "train.warmup_steps=1",
        ],
    ).train
    loss = cfg.sseg.loss if method == "sseg" else getattr(cfg.method_config, "loss", None)
    data = SSegData(
        str(captioned / "s"), str(captioned / "m"), str(captioned / "t"), 32, 4, "local"
    )
    job = _job(cfg, SSegTaskFactory(cfg, loss, data, None))
    cpu = torch.device("cpu")
    torch.set_num_threads(1)
    task, opt, sched, start = setup(job, cpu, 0, 1, None)
    assert start == 0
    objective, batches = task.objective(), task.batches(start, None)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    for _ in range(cfg.steps):
        inputs, images = task.inputs(next(batches))
        out, _ = train_step(objective, inputs, task.model, opt, sched, cfg.grad_clip, None, cpu)
        assert images == 4 and torch.isfinite(out["loss"]), out
    after = task.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight moved"
    buf = io.BytesIO()
    torch.save(task.data_state(cfg.steps), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["source"]["batches"] == 2
    assert task.counts() == {"train/join_used": 8}

    path = task.save_model(tmp_path / "latest.pt", {"step": cfg.steps})
    spec, loaded = load_checkpoint(path)
    assert spec.name == method
    loaded_state = loaded.state_dict()
    assert all(torch.equal(after[k], loaded_state[k]) for k in after)
    images = torch.rand(2, 3, 32, 48)
    for row in spec.evaluation_rows():
        seg = load_trained(path, "cpu", row, PseudoMaskConfig(image_size=32))
        with torch.no_grad():
            probs = seg.dense_probs(images, seg.text_embeddings(["cat", "boat", "grass"]))
        assert probs.shape == (2, 3, 32, 48) and torch.isfinite(probs).all(), row


class Payload:
    """Unpickling this runs code (``__reduce__``): what a hostile checkpoint would hold."""

    def __reduce__(self):
        return (Path.touch, (Path("/tmp/ovs-test-never-created"),))


def test_resume_state_loads_only_tensors_and_plain_values(tmp_path):
    good = tmp_path / "good.pt"
    rng = np.random.default_rng([1, 2])
    state = {
        "model": {"w": torch.ones(2)},
        "step": 3,
        "ranks": [{"rng": rng.bit_generator.state, "torch": {"cpu": torch.get_rng_state()}}],
    }
    torch.save(state, good)
    loaded = load_state(good)
    assert loaded["ranks"][0]["rng"] == rng.bit_generator.state
    bad = tmp_path / "bad.pt"
    torch.save({"step": 3, "evil": Payload()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        load_state(bad)
    assert not Path("/tmp/ovs-test-never-created").exists()


def test_rank_state_needs_the_same_world_size():
    state = {"ranks": [{"a": 0}, {"a": 1}]}
    assert rank_state(state, 1, 2) == {"a": 1}
    assert rank_state(None, 0, 1) is None
    with pytest.warns(UserWarning, match="saved by 2 ranks"):
        assert rank_state(state, 0, 3) is None


def _jpg(colour: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def joined(tmp_path) -> tuple[list[Path], Path, Path]:
    """3 shards of 5 samples each, every one joined with a mask and a text."""
    shards, masks, texts = tmp_path / "s", tmp_path / "m", tmp_path / "t"
    for d in (shards, masks, texts):
        d.mkdir()
    for s in range(3):
        keys = [f"{s:05d}{i:04d}" for i in range(5)]
        make_shard(
            shards, f"{s:05d}", [(k, {"jpg": _jpg(10 * i), "txt": k}) for i, k in enumerate(keys)]
        )
        grid = np.zeros((4, 4), np.uint8)
        pq.write_table(
            pa.table({"key": keys, "label_png": [_png(grid)] * 5, "status": ["ok"] * 5}),
            masks / f"{s:05d}.parquet",
        )
        pq.write_table(
            pa.table({"key": keys, "text": keys, "keep": [True] * 5, "status": ["ok"] * 5}),
            texts / f"{s:05d}.parquet",
        )
    return sorted(shards.glob("*.tar")), masks, texts


@pytest.mark.parametrize("cut", [1, 3, 4, 7])  # mid-epoch and at an epoch's end
def test_sample_source_resumes_exactly(joined, cut):
    shards, masks, texts = joined
    cfg = TrainConfig(cache_in_memory=True)
    with pytest.raises(ValueError, match="RankIngest"):  # streaming: the Ray Data ingest
        SampleSource(shards, masks, texts, 8, TrainConfig(cache_in_memory=False), seed=5)

    def source() -> SampleSource:
        return SampleSource(shards, masks, texts, 8, cfg, seed=5)

    def keys(batch) -> list[str]:
        return [s.key for s in batch]

    want = [keys(b) for b, _ in zip(source().batches(4), range(12))]
    first = source()
    it = first.batches(4)
    got = [keys(next(it)) for _ in range(cut)]
    state = first.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    resumed = source()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    it = resumed.batches(4)
    got += [keys(next(it)) for _ in range(12 - cut)]
    assert got == want
    # Every epoch covers the data once: 15 samples -> 3 batches of 4, each key once per epoch.
    epoch = [k for b in want[:3] for k in b]
    assert len(epoch) == len(set(epoch)) == 12


def test_self_train_batch_stream_resumes_exactly():
    rng = np.random.default_rng(0)
    rows = [
        LabelledRow(
            str(i),
            "",
            rng.integers(0, 3, (8, 8), dtype=np.uint8),
            rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
        )
        for i in range(5)
    ]
    aug = AugmentConfig(size=8, scale=(0.5, 1.0))
    want = [b for b, _ in zip(batches(rows, 2, aug, np.random.default_rng(3)), range(6))]
    first = batches(rows, 2, aug, np.random.default_rng(3))
    got = [next(first) for _ in range(3)]
    state = first.state_dict()
    resumed = batches(rows, 2, aug, np.random.default_rng(99))
    resumed.load_state_dict(state)
    got += [next(resumed) for _ in range(3)]
    for (gi, gl), (wi, wl) in zip(got, want):
        assert torch.equal(gi, wi) and torch.equal(gl, wl)
    with pytest.raises(RuntimeError, match="no pseudo-labelled rows"):
        batches([], 2, aug, rng)


def test_window_sums_on_device_equal_a_float_loop():
    values = [torch.tensor(v, dtype=torch.float32) for v in (0.1, 1e-8, 3.3333, 7.25, 1e6)]
    window = Window()
    expected = 0.0
    for v in values:
        window.add({"loss": v * 2, "grad_norm": v}, images=4)
        expected += float(v)
    means = window.means()
    assert means["grad_norm"] == expected / len(values)  # bit for bit, not approximately
    assert means["loss"] == sum(float(v * 2) for v in values) / len(values)
    assert window.images == 20 and window.n == 5


def test_progress_line_counts_this_attempts_steps():
    """Rank 0's console line: a run resumed at step 1000 that did 200 steps in 100 s runs at
    2 steps/s with 1200 to go (not 12 steps/s from step 0)."""
    line = progress_line("train", "sseg", 1200, 1000, 2400, 100.0, 2.34567)
    assert line == "[train] sseg steps: 1200/2400 (50%, 2.0/s, eta 600s) loss 2.3457"
    assert progress_line("self_train", "", 10, 10, 20, 0.0, 1.0).startswith(
        "[self_train] steps: 10/20 (50%, 0.0/s, eta inf"
    )


def test_check_complete_raises_stage_incomplete_with_steps_done():
    check_complete(10, 10, "train", None)
    with pytest.raises(StageIncomplete, match="step 4 of 10") as e:
        check_complete(4, 10, "train", 60.0)
    assert e.value.metrics == {"steps_done": 4.0, "steps": 10.0}
    assert "rerun the same command" in str(e.value)


def test_schedules_warm_up_then_decay():
    cfg = LoopConfig(steps=100, warmup_steps=10, min_lr_ratio=0.0)
    assert warmup_cosine(0, cfg) == warmup_poly(0, cfg, 1.0) == pytest.approx(0.1)
    assert warmup_cosine(9, cfg) == warmup_poly(9, cfg, 1.0) == 1.0
    assert warmup_cosine(55, cfg) == pytest.approx(0.5)  # cosine half-way
    assert warmup_poly(55, cfg, 1.0) == pytest.approx(0.5)  # linear poly half-way
    assert warmup_poly(55, cfg, 2.0) == pytest.approx(0.25)
    floor = TrainConfig(steps=100, warmup_steps=10)
    assert warmup_cosine(100, floor) == warmup_cosine(500, floor) == floor.min_lr_ratio
    assert warmup_poly(100, cfg, 1.0) == 0.0
    params = [torch.nn.Parameter(torch.zeros(1))]
    cosine = cosine_schedule(torch.optim.SGD(params, lr=2.0), cfg)
    poly = poly_schedule(torch.optim.SGD(params, lr=2.0), cfg, 2.0)
    for s in range(1, 4):
        for sched in (cosine, poly):
            sched.optimizer.step()
            sched.step()
        assert cosine.get_last_lr() == [2.0 * warmup_cosine(s, cfg)]
        assert poly.get_last_lr() == [2.0 * warmup_poly(s, cfg, 2.0)]


def test_sections_share_the_loop_config_and_validate_their_names():
    for section in (TrainConfig(), SelfTrainConfig()):
        assert isinstance(section, LoopConfig)
        assert set(LoopConfig.UNHASHED) <= set(type(section).UNHASHED)
        section.validate()
    assert TrainConfig.UNHASHED == (*LoopConfig.UNHASHED, "ingest_executor")
    bad = [
        (TrainConfig(ingest_executor="gpu"), "train.ingest_executor must be"),
        (TrainConfig(supervision="labels"), "train.supervision must be"),
        (TrainConfig(amp_dtype="bf16"), "train.amp_dtype must be one of"),
        (SelfTrainConfig(amp_dtype="fp16"), "self_train.amp_dtype must be one of"),
        (SelfTrainConfig(log_every=0), "self_train.log_every must be at least 1"),
    ]
    for section, message in bad:
        with pytest.raises(ValueError, match=message):
            section.validate()


def test_training_precision_defaults():
    assert TrainConfig().amp_dtype == SelfTrainConfig().amp_dtype == "auto"
    assert TrainConfig().time_limit_s is None and SelfTrainConfig().time_limit_s is None
    assert "time_limit_s" in TrainConfig.UNHASHED and "time_limit_s" in SelfTrainConfig.UNHASHED
    assert training_dtype("auto", torch.device("cpu")) is None
    assert training_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16


def test_a_first_batch_over_the_memory_budget_stops_the_loop_naming_the_batch_key():
    """The loop's own first step (``_train``: the task's inputs, the memory probe, the step)
    on S-Seg's task: a batch whose step needs more than ``train.memory_budget_mb`` raises
    :class:`ovs.train.memory.BatchTooLarge` in the forward, before any parameter changes."""
    from ovs.data.train_data import Sample
    from ovs.train.memory import BatchTooLarge
    from pipelines.loop import _train, step_memory

    torch.set_num_threads(1)
    cfg = _tiny_train_cfg(batch_size=16, memory_budget_mb=110.0, steps=5)  # batch 4 fits
    data = SSegData("", "", "", 32, 10, "local")
    job = _job(cfg, SSegTaskFactory(cfg, SSegLossConfig(), data, None))
    cpu = torch.device("cpu")
    task, opt, sched, start = setup(job, cpu, 0, 1, None)
    rng = np.random.default_rng(0)
    batch = [
        Sample(f"{i:09d}", rng.integers(0, 255, (32, 32, 3), np.uint8),
               rng.integers(0, 4, (4, 4), np.uint8), "a cat on the grass", ("cat", "grass"))
        for i in range(cfg.batch_size)
    ]  # fmt: skip
    before = [p.detach().clone() for p in task.model.parameters()]
    probe = step_memory(cfg, task.model, opt, cpu, 1)
    with pytest.raises(
        BatchTooLarge,
        match=r"^train\.batch_size=16 does not fit in memory: .* the limit is 110 MiB \(train\.memory_budget_mb=110\)",
    ):
        _train(job, task, task.objective(), opt, sched, iter([batch] * 5), start, cpu, 0, 1, probe)
    assert probe.static < 110 * 2**20 < probe.total  # the batch's activations passed the budget
    assert all(torch.equal(p, q) for p, q in zip(task.model.parameters(), before, strict=True))
