"""Config section of the ``evaluate`` stage (``Config.evaluate``) and protocol lookup by name."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from ovs.eval.protocol import PROTOCOLS, ProtocolConfig


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
class EvalMethodConfig:
    """A training-free baseline evaluated beside the trained model (``ovs.eval.baselines``).

    ``name`` prefixes its metrics and artifacts (unique; not ``sseg``); ``method`` is
    ``clip`` or ``maskclip``; ``model`` / ``pretrained`` are open_clip names
    (``pretrained: null`` = random weights, ``model: tiny`` = the debug CLIP).
    ``logit_scale: null`` = the model's own.
    """

    name: str = "maskclip"
    method: str = "maskclip"
    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    logit_scale: float | None = None


@dataclass
class EvalConfig:
    """What the ``evaluate`` stage evaluates and how.

    The trained model (``train`` stage) is always evaluated on the synthetic world's eval
    split when the ``world`` stage is in the pipeline, and on every entry of ``datasets``
    whose data exists. ``protocols``: names of presets (``mask_free``, ``training_free``,
    ``tiny``; :data:`ovs.eval.protocol.PROTOCOLS`) or of ``custom_protocols`` entries (full
    :class:`~ovs.eval.protocol.ProtocolConfig`, unset keys = mask-free values); every protocol
    is evaluated, the first one gives the unprefixed metrics. ``baselines`` run side by side.

    Sharding: ``num_actors`` Ray Data actors (``num_cpus`` / ``num_gpus`` each; GPU actors
    run on ``cuda``), ``batch_size`` images per call. ``num_examples`` images per dataset go
    into the overlay grid. Paper scale: ``datasets`` = voc21, context60, coco_object (+ voc20,
    context59, coco_stuff171, cityscapes19, ade150), ``protocols: [mask_free]``, one actor
    per GPU, ``num_examples: 8``.
    """

    # How the stage runs, not what it computes: left out of the stage hash (ovs.config.hash_view).
    UNHASHED: ClassVar[tuple[str, ...]] = ("num_actors", "num_cpus", "num_gpus")

    datasets: list[EvalDatasetConfig] = field(default_factory=list)
    world_max_images: int | None = None
    protocols: list[str] = field(default_factory=lambda: ["tiny"])
    custom_protocols: list[ProtocolConfig] = field(default_factory=list)
    baselines: list[EvalMethodConfig] = field(default_factory=list)
    num_actors: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 4
    num_examples: int = 4

    def __post_init__(self) -> None:
        from ovs.eval.baselines import BASELINE_MODES
        from ovs.eval.datasets import DATASETS

        self.resolved_protocols()
        for i, d in enumerate(self.datasets):
            if d.name not in DATASETS:
                raise ValueError(
                    f"evaluate.datasets[{i}].name: unknown benchmark {d.name!r}; "
                    f"choose from {sorted(DATASETS)}"
                )
        keys = [d.name for d in self.datasets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"evaluate.datasets: a benchmark is listed twice: {keys}")
        names = [b.name for b in self.baselines]
        if len(set(names)) != len(names) or "sseg" in names:
            raise ValueError(f"evaluate.baselines: names must be unique and not 'sseg': {names}")
        for i, b in enumerate(self.baselines):
            if b.method not in BASELINE_MODES:
                raise ValueError(
                    f"evaluate.baselines[{i}].method: {b.method!r} is not one of {BASELINE_MODES}"
                )
        if self.num_actors < 1 or self.batch_size < 1:
            raise ValueError("evaluate.num_actors and evaluate.batch_size must be >= 1")

    def resolved_protocols(self) -> list[ProtocolConfig]:
        """The :class:`ProtocolConfig` of every name in ``protocols`` (custom entries first).

        Raises ``ValueError`` for an unknown or repeated name.
        """
        custom = {p.name: p for p in self.custom_protocols}
        out = []
        for name in self.protocols:
            if name in custom:
                out.append(replace(custom[name]))
            elif name in PROTOCOLS:
                out.append(PROTOCOLS[name]())
            else:
                raise ValueError(
                    f"evaluate.protocols: unknown protocol {name!r}; presets "
                    f"{sorted(PROTOCOLS)}, custom {sorted(custom)}"
                )
        if not out or len({p.name for p in out}) != len(out):
            raise ValueError(f"evaluate.protocols must be non-empty and unique: {self.protocols}")
        return out
