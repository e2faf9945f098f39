"""The stage table: every stage the pipeline knows, by name. Adding a stage = one line here."""

from __future__ import annotations

from ovs.stage import Stage
from pipelines import (
    download,
    entities,
    evaluate,
    pairs,
    pseudo_masks,
    self_train,
    train,
    world,
)

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        world.STAGE,
        download.STAGE,
        entities.STAGE,
        pseudo_masks.STAGE,
        train.STAGE,
        evaluate.STAGE,
        pairs.STAGE,
        self_train.STAGE,
    )
}
