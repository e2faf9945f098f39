"""S-Seg's DDP wrapper: bucket-view gradients, and the text tower's token table averaged over
its used rows only (the other rows' gradients are zero on every worker)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ovs.methods.sseg.objective import SSegObjective
from ovs.train.contrastive import is_distributed


class _SparseRowAllReduce:
    """Averages the gradient of an embedding table over workers by its used rows only.

    Only the rows whose ids some worker looked up this step can have a non-zero gradient on any
    worker, so averaging those rows (and leaving the rest at zero) is exactly DDP's dense
    average. For the text tower's 49,408 x 64 token table (half of the tiny model's 6.6M
    parameters) a step touches a few hundred rows: two small collectives (the union of ids,
    then the rows) replace 12.6 MB of the gradient all-reduce. They run on their own process
    group, so their order cannot interleave with DDP's bucket all-reduces.
    """

    def __init__(self, embedding: nn.Embedding, group: dist.ProcessGroup | None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.used = torch.zeros(embedding.num_embeddings, dtype=torch.uint8)
        embedding.register_forward_pre_hook(self._record)
        embedding.weight.register_post_accumulate_grad_hook(self._reduce)

    def _record(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if torch.is_grad_enabled():
            ids = args[0]
            if self.used.device != ids.device:
                self.used = self.used.to(ids.device)
            self.used[ids.flatten()] = 1

    def _reduce(self, weight: torch.Tensor) -> None:
        grad = weight.grad
        assert grad is not None
        dist.all_reduce(self.used, op=dist.ReduceOp.MAX, group=self.group)
        rows = self.used.nonzero().flatten()
        part = grad.index_select(0, rows).div_(self.world)  # DDP's order: divide, then sum
        dist.all_reduce(part, group=self.group)
        grad.index_copy_(0, rows, part)
        self.used.zero_()


def wrap_ddp(objective: SSegObjective, **ddp_kwargs: object) -> nn.Module:
    """``DistributedDataParallel(objective)`` with the options that make the tiny CPU step
    scale, gradients unchanged (the same average over workers):

    * ``gradient_as_bucket_view=True``: gradients live in DDP's buckets (no copy per step);
    * the text tower's token embedding is left out of DDP and averaged over its used rows
      only (:class:`_SparseRowAllReduce`), which halves the all-reduced bytes of the tiny model.

    Every worker must call it (it creates a process group) and every step must look up the
    token table (captions always are). ``ddp_kwargs`` override or extend the options.
    Not distributed: returns ``objective`` itself.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not is_distributed():
        return objective
    table = objective.model.text.token_embedding
    name = next(n for n, p in objective.named_parameters() if p is table.weight)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, [name])
    group = dist.new_group(backend=dist.get_backend())
    assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    _SparseRowAllReduce(table, group)
    options: dict = {"gradient_as_bucket_view": True, **ddp_kwargs}
    return DistributedDataParallel(objective, **options)
