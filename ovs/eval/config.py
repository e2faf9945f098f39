"""Config section of the evaluation stage (wired into the top-level ``Config`` elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ovs.eval.protocol import ProtocolConfig, tiny


@dataclass
class EvalDatasetConfig:
    """One benchmark: a key of ``ovs.eval.datasets.DATASETS`` and where it lives.

    ``split=""`` uses the dataset's default eval split; ``max_images=None`` evaluates all.
    """

    name: str = "world"
    root: str = ""
    split: str = ""
    max_images: int | None = None


@dataclass
class EvalConfig:
    """What to evaluate and how.

    Tiny default: the synthetic world, ``tiny`` protocol, 2 shards. Paper scale:
    ``datasets`` = voc21, context60, coco_object (+ voc20, context59, coco_stuff171,
    cityscapes19, ade150 without background), ``protocol`` = ``mask_free()``
    (``ovs.eval.protocol``), ``num_shards`` = number of GPU workers, ``num_examples`` = 8.
    """

    datasets: list[EvalDatasetConfig] = field(default_factory=lambda: [EvalDatasetConfig()])
    protocol: ProtocolConfig = field(default_factory=tiny)
    num_shards: int = 2
    num_examples: int = 4
