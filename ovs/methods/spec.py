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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
