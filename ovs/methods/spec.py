"""What a trainable segmentation method is to the rest of ``ovs``: one :class:`MethodSpec`.

The training loop, the shard mappers and the evaluation harness hold a spec, never a method's
classes (torchtitan's ``TrainSpec`` idea; the name -> spec table is :data:`ovs.methods.METHODS`).
A spec is data: the method's typed config class, its named flavours, and the callables that
build, train, checkpoint and adapt its model. Each callable's contract:

* ``build_model(cfg, seed, num_classes)`` -> the randomly initialised model, identical for one
  seed; ``num_classes`` is the label count of a closed-vocabulary method, ``None`` for an
  open-vocabulary one.
* ``objective(model, cfg)`` -> an ``nn.Module`` holding the model whose forward takes one batch
  and returns a dict of scalar tensors, ``loss`` the one to backpropagate.
* ``optimizer(model, settings)`` -> the method's optimiser (its parameter groups), at the
  learning rate, weight decay and betas of ``settings`` (:class:`OptimizerSettings`).
* ``wrap_ddp(objective)`` -> the module each worker steps: DDP where distributed.
* ``save_checkpoint(model, path, extra)`` writes ``{"method": name, ...}``;
  ``from_checkpoint(state)`` rebuilds the model from the loaded dict
  (:func:`ovs.methods.load_checkpoint` reads any method's file).
* ``seg_method(model, device)`` -> the model as the harness's
  :class:`~ovs.eval.method.SegMethod`; ``pair_scorer(model, device, image_size, batch_size)``
  -> a :class:`~ovs.pairs.maker.MaskScorer` (None: the method cannot score masks);
  ``image_backbone(model)`` -> its image backbone module (None: none to reuse).
* ``rows``: further evaluation rows of the same trained model, row name ->
  ``(model, device, RowOptions) -> SegMethod`` (CLIP: ``maskclip``, ``pm_clip``); the row named
  like the method is always ``seg_method``.
* ``requires`` / ``bind``: methods whose trained checkpoints this one needs (PACL: ``clip``);
  ``bind(cfg, {name: checkpoint path})`` returns the config with them filled in. The
  ``train`` stage trains the requirements first, in the same run.
* ``trainable(cfg)``: whether the ``train`` stage trains it (None: always); when False,
  ``build_model`` already gives the final weights (pretrained) and no step runs.
* ``context_length(cfg)`` / ``input_size(cfg)``: the caption token context and training crop of
  a method trained on caption batches (None: a method with its own ``Task``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from ovs.eval.method import SegMethod
    from ovs.pairs.maker import MaskScorer


class OptimizerSettings(Protocol):
    """The stage-level optimiser settings a recipe reads (``train``/``self_train`` sections)."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]


def plain_ddp(objective: nn.Module) -> nn.Module:
    """``DistributedDataParallel(objective)`` inside a group of several workers, else the
    objective itself: the default ``wrap_ddp``."""
    from torch.nn.parallel import DistributedDataParallel

    from ovs.train.contrastive import is_distributed

    return DistributedDataParallel(objective) if is_distributed() else objective


@dataclass(frozen=True)
class RowOptions:
    """What an evaluation row may need beyond its trained model: the run's ``pseudo_masks``
    section (a :class:`~ovs.pseudo_masks.masker.PseudoMaskConfig`; Baseline 1 segments test
    images with it), None outside a pipeline run."""

    pseudo_masks: Any = None


def open_vocabulary(name: str, num_classes: int | None) -> None:
    """The ``build_model`` guard of an open-vocabulary method: it has no class count."""
    if num_classes is not None:
        raise ValueError(f"{name} is open-vocabulary: build it without num_classes")


M = TypeVar("M", bound=nn.Module)  # the method's model class
C = TypeVar("C")  # the method's config class


@dataclass(frozen=True)
class MethodSpec(Generic[M, C]):
    """One method's entry in :data:`ovs.methods.METHODS` (see the module docstring), generic in
    its model class ``M`` and config class ``C``. ``optimizer`` takes the stage section that
    holds the optimiser settings (at least :class:`OptimizerSettings`); ``wrap_ddp`` takes the
    module ``objective`` built."""

    name: str
    config: type[C]  # the typed config class of the method's section
    flavors: Mapping[str, Callable[[], C]]  # "tiny", "paper" -> a config instance
    build_model: Callable[[C, int, int | None], M]
    objective: Callable[[M, C], nn.Module]
    optimizer: Callable[[M, Any], torch.optim.Optimizer]
    save_checkpoint: Callable[[M, str | Path, dict[str, Any] | None], Path]
    from_checkpoint: Callable[[dict[str, Any]], M]
    seg_method: Callable[[M, torch.device], SegMethod]
    wrap_ddp: Callable[[Any], nn.Module] = plain_ddp
    pair_scorer: Callable[[M, torch.device, int, int], MaskScorer] | None = None
    image_backbone: Callable[[M], nn.Module] | None = None
    rows: Mapping[str, Callable[[M, torch.device, RowOptions], SegMethod]] = field(
        default_factory=dict
    )
    requires: tuple[str, ...] = ()
    bind: Callable[[C, Mapping[str, Path]], C] | None = None
    trainable: Callable[[C], bool] | None = None
    context_length: Callable[[C], int] | None = None
    input_size: Callable[[C], int] | None = None

    def is_trainable(self, cfg: C) -> bool:
        """Whether the ``train`` stage runs steps for ``cfg`` (see ``trainable``)."""
        return self.trainable is None or self.trainable(cfg)

    def evaluation_rows(self) -> tuple[str, ...]:
        """The row names a trained model of this method is evaluated as: its own, then
        ``rows``."""
        return (self.name, *self.rows)
