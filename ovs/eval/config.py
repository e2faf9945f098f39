"""Config section of the ``evaluate`` stage (``Config.evaluate``) and protocol lookup by name."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from ovs.eval.protocol import PROTOCOLS, ProtocolConfig


class BenchmarkMissing(ValueError):
    """A configured benchmark has no data (raised before any stage runs; names the dataset,
    its root and the config key)."""


@dataclass
class EvalDatasetConfig:
    """One benchmark: a key of ``ovs.eval.datasets.DATASETS`` and where it lives.

    ``split=""`` uses the dataset's default eval split; ``max_images=None`` evaluates all.
    ``optional``: if the data is missing, evaluate the rest (and evaluate this one when a
    later run finds its data) instead of failing before the pipeline starts.
    ``from_stage``: ``""`` = the data exists before the pipeline runs (checked before any
    stage starts); ``"world"`` = the ``world`` stage makes it (checked when ``evaluate`` runs;
    a relative ``root`` is taken under the world stage's output directory).
    """

    name: str = "world"
    root: str = ""
    split: str = ""
    max_images: int | None = None
    optional: bool = False
    from_stage: str = ""


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
    FROM_STAGES: ClassVar[tuple[str, ...]] = ("", "world")

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

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad ``evaluate.*`` setting (called at config load):
        unknown protocol, benchmark or baseline names fail before training, not after."""
        from ovs.eval.baselines import BASELINE_MODES
        from ovs.eval.datasets import DATASETS

        self.resolved_protocols()
        for i, d in enumerate(self.datasets):
            if d.name not in DATASETS:
                raise ValueError(
                    f"evaluate.datasets[{i}].name: unknown benchmark {d.name!r}; "
                    f"choose from {sorted(DATASETS)}"
                )
            if d.from_stage not in self.FROM_STAGES:
                raise ValueError(
                    f"evaluate.datasets[{i}].from_stage: {d.from_stage!r} is not one of "
                    f"{list(self.FROM_STAGES)}"
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


def missing_benchmarks(cfg: EvalConfig) -> list[tuple[int, EvalDatasetConfig, str]]:
    """``(index, entry, why)`` of every entry of ``cfg.datasets`` on disk whose data is
    missing (see :func:`ovs.eval.datasets.missing_reason`); ``from_stage`` entries are left
    out (their data does not exist before the pipeline makes it)."""
    from ovs.eval.datasets import missing_reason

    out = []
    for i, d in enumerate(cfg.datasets):
        if d.from_stage:
            continue
        why = missing_reason(d.name, d.root, d.split or None)
        if why is not None:
            out.append((i, d, why))
    return out


def check_benchmarks(cfg: EvalConfig, world_stage: bool) -> None:
    """Raise :class:`BenchmarkMissing` if a benchmark that is not ``optional`` has no data.

    One message: the first such entry's config key, name, root and why, then the names of
    any others. ``world_stage``: whether the pipeline runs the ``world`` stage, which
    ``from_stage: world`` entries need.
    """
    for i, d in enumerate(cfg.datasets):
        if d.from_stage == "world" and not world_stage:
            raise BenchmarkMissing(
                f"evaluate.datasets[{i}] ({d.name}): from_stage world, but 'world' is not in "
                "pipeline.stages"
            )
    missing = [(i, d, why) for i, d, why in missing_benchmarks(cfg) if not d.optional]
    if not missing:
        return
    i, d, why = missing[0]
    msg = (
        f"evaluate.datasets[{i}] ({d.name}): benchmark data missing at root {d.root!r}: {why}; "
        f"set evaluate.datasets[{i}].root, or optional: true to skip it while it is missing"
    )
    if len(missing) > 1:
        others = ", ".join(f"[{j}] {e.name} ({e.root!r})" for j, e, _ in missing[1:])
        msg += f"; also missing: {others}"
    raise BenchmarkMissing(msg)
