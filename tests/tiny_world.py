"""Config overrides shared by the stage tests: a tiny synthetic world at 32 px in ``tmp_path/w``."""

from __future__ import annotations

from pathlib import Path


def tiny_world(
    tmp_path: Path, *, num_train: int, num_eval: int, per_shard: int, oracle_images: int = 0
) -> list[str]:
    """``key=value`` overrides: world -> download -> pseudo_masks at 32 px, the S-Seg model at
    32 px with batch 4 on 1-CPU workers. Stage tests add what their own stage needs."""
    return [
        f"workdir={tmp_path / 'w'}",
        f"world.num_train={num_train}",
        f"world.num_eval={num_eval}",
        f"world.num_val={num_eval}",
        "world.image_size=32",
        "download.image_size=32",
        f"download.number_sample_per_shard={per_shard}",
        "pseudo_masks.image_size=32",
        f"pseudo_masks.oracle_images={oracle_images}",
        "train.sseg.model.input_size=32",
        "train.augment.size=32",
        "train.batch_size=4",
        "train.cpus_per_worker=1",
    ]


def tiny_upstream(tmp_path: Path) -> list[str]:
    """The session's one tiny world (24 training images in 2 shards, 4 eval images, the
    pseudo-mask oracle on those 4): every stage test that only needs world -> download ->
    entities -> pseudo_masks as input uses it, so ``tests/upstream.py`` builds them once a
    session (train, train_stream, evaluate, self_train, pairs, compare, the SIGKILL train
    drill)."""
    return tiny_world(tmp_path, num_train=24, num_eval=4, per_shard=12, oracle_images=4)


def tiny_trained(tmp_path: Path) -> list[str]:
    """The tiny world and 2-step S-Seg model the evaluate, self_train and pairs stage tests
    consume: one config, so ``tests/upstream.py`` computes these upstream stages once a session."""
    return [
        *tiny_upstream(tmp_path),
        "train.steps=2",
        "train.warmup_steps=1",
        "train.checkpoint_every=2",
    ]
