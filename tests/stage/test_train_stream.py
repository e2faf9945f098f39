"""The train task's streaming batch source (``cache_in_memory: false``): the Ray Data ingest
built as ``SSegTask.batches`` builds it, resumed at a step, equals the uninterrupted stream; the
decode-task executor follows the CPUs the Train workers leave free."""

import pytest
import torch

from ovs.data.augment import AugmentConfig
from ovs.training import TrainConfig, noun_prompts, prompts_for_nouns
from pipelines.train import SSegData, ingest_executor, stream_ingest
from tools.bench.ingest import write_shards

SEED = 4


def _config(dirs, executor, **train) -> tuple[TrainConfig, SSegData]:
    shard_dir, masks, texts = dirs
    cfg = TrainConfig(
        augment=AugmentConfig(size=32, scale=(0.2, 1.0)),
        batch_size=8,
        cache_in_memory=False,
        shuffle_buffer=20,  # 20 / 12 per shard -> windows of 2 shards
        **train,
    )
    return cfg, SSegData(str(shard_dir), str(masks), str(texts), 32, 12, executor)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("stream"), shards=4, per_shard=12, size=64, grid=8)


def _key(b):
    return (b.epoch, b.index, b.keys, b.texts, b.nouns)


def test_stream_source_resumed_at_step_equals_uninterrupted(dirs, ray_local):
    """Real Ray Data executor, two ranks: batches after a resume at step k are batches k.. of
    an uninterrupted source (mid-epoch, at the epoch boundary, in the second epoch)."""
    config = _config(dirs, "ray")
    for rank in (0, 1):
        ingest = stream_ingest(*config, SEED, rank, 2)
        assert ingest.cfg.window_shards == 2 and ingest.rows == 24 and ingest.per_epoch == 3
        full = [b for b, _ in zip(ingest.batches(start_step=0), range(7))]
        assert [(b.epoch, b.index) for b in full] == [(e, i) for e in (0, 1, 2) for i in (0, 1, 2)][
            :7
        ]
        for k in (2, 3, 5):
            resumed = stream_ingest(*config, SEED, rank, 2).batches(start_step=k)
            for want in full[k:]:
                got = next(resumed)
                assert _key(got) == _key(want)
                assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
    other = [b.keys for b, _ in zip(stream_ingest(*config, SEED, 1, 2).batches(), range(3))]
    mine = [b.keys for b, _ in zip(stream_ingest(*config, SEED, 0, 2).batches(), range(3))]
    # ranks read disjoint shards
    assert not {k for b in other for k in b} & {k for b in mine for k in b}


def test_stream_source_local_executor_gives_the_same_batches(dirs, ray_local):
    a = stream_ingest(*_config(dirs, "local"), SEED, 0, 1).batches(start_step=1)
    b = stream_ingest(*_config(dirs, "ray"), SEED, 0, 1).batches(start_step=1)
    for _ in range(3):
        x, y = next(a), next(b)
        assert _key(x) == _key(y) and torch.equal(x.images, y.images)


def test_ingest_executor_follows_free_cpus():
    sib = TrainConfig(cache_in_memory=False, num_workers=1, cpus_per_worker=1)
    assert ingest_executor(sib, 2.0) == "ray"  # conf/cc12m_local.yaml on a 2-CPU head
    full = TrainConfig(cache_in_memory=False, num_workers=1, cpus_per_worker=2)
    with pytest.warns(UserWarning, match="no CPU is left"):
        assert ingest_executor(full, 2.0) == "local"
    with pytest.raises(ValueError, match="reserve 2 .*ingest_executor=local"):
        ingest_executor(
            TrainConfig(cache_in_memory=False, cpus_per_worker=2, ingest_executor="ray"), 2.0
        )
    assert (
        ingest_executor(TrainConfig(cache_in_memory=False, ingest_executor="local"), 64.0)
        == "local"
    )
    assert ingest_executor(TrainConfig(), 64.0) == "local"  # in-memory mode builds no ingest


def test_noun_prompts_of_samples_equal_prompts_of_their_nouns():
    import numpy as np

    class S:
        def __init__(self, nouns):
            self.nouns = nouns

    lists = [("cat", "dog", "sky"), (), ("dog",), ("car", "sky", "grass", "bus")]
    a = noun_prompts([S(n) for n in lists], 2, "a photo of a {}.", np.random.default_rng(1))
    b = prompts_for_nouns(lists, 2, "a photo of a {}.", np.random.default_rng(1))
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[1].shape == (4, len(a[0]))
    assert a[1][0].sum() >= 1 and not a[1][1].any()


@pytest.mark.slow
def test_streaming_train_stage_resumed_equals_uninterrupted(tmp_path, mlflow_uri, ray_local):
    """The real loop in streaming mode (one rank: the second CPU runs the Ray Data decode
    tasks): stopped by a time limit at step 2 and resumed, it ends bit-identical to a fresh
    run, and the ingest's counts reach the manifest."""
    from ovs.stage import StageIncomplete, read_manifest, resolve
    from pipelines.common import connect_mlflow, run_stage
    from pipelines.graph import STAGES, load_config
    from tests.tiny_world import tiny_upstream
    from tests.upstream import run_upstream

    def cfg(*extra):
        return load_config(
            None,
            [
                *tiny_upstream(tmp_path),
                "train.cache_in_memory=false",
                "train.shuffle_buffer=20",
                "train.steps=4",
                "train.warmup_steps=2",
                "train.log_every=2",
                "train.checkpoint_every=2",
                "train.eval_limit=2",
                *extra,
            ],
        )

    client, exp_id, _ = connect_mlflow("train-stream")
    parent = client.create_run(exp_id, run_name="p").info.run_id
    # the session's shared tiny world (tests/upstream.py: computed once per session)
    run_upstream(("world", "download", "entities", "pseudo_masks"), cfg(), client, exp_id, parent)
    with pytest.raises(StageIncomplete, match="stopped at step 2 of 4"):
        run_stage(
            STAGES, "train", cfg("train.time_limit_s=1e-9"), False, client, exp_id, parent, ""
        )
    out = resolve(STAGES, "train", cfg()).out_dir
    assert read_manifest(out) is None
    resumed = run_stage(STAGES, "train", cfg(), False, client, exp_id, parent, "")
    weights = torch.load(out / "model" / "latest.pt", weights_only=True)["model"]
    fresh = run_stage(STAGES, "train", cfg(), True, client, exp_id, parent, "")
    again = torch.load(out / "model" / "latest.pt", weights_only=True)["model"]
    assert weights.keys() == again.keys() and all(
        torch.equal(weights[k], again[k]) for k in weights
    )
    timing = {"train_seconds", "data_wait_fraction"}
    same = [{k: v for k, v in r["metrics"].items() if k not in timing} for r in (resumed, fresh)]
    assert same[0] == same[1] and same[0]["steps_done"] == 4
    assert 0.0 < fresh["metrics"]["data_wait_fraction"] < 1.0
    assert fresh["counts"]["join_used"] == 4 * 4  # 4 steps x batch 4 on the one rank
