"""The rewritten distributed pieces of the S-Seg step against the code they replace.

* ``SSegObjective`` now sends both embeddings and the matched-mask count in one all-gather;
  :class:`_Reference` is the previous forward (two gathers + a count all-reduce).
* :func:`ovs.methods.sseg.ddp.wrap_ddp` averages the token table's gradient over its used rows only;
  the reference is plain ``DistributedDataParallel``.
Two gloo ranks on loopback, the micro model, real DDP; losses and every gradient must agree.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from ovs.methods.sseg.config import SSegLossConfig
from ovs.methods.sseg.ddp import wrap_ddp
from ovs.methods.sseg.losses import mask_loss
from ovs.methods.sseg.matching import hungarian_match, label_maps_to_masks
from ovs.methods.sseg.model import SSeg
from ovs.methods.sseg.objective import SSegObjective
from ovs.train.contrastive import contrastive_loss, gather_with_grad
from tests.unit.test_models import _micro_config, _toy_batch

_WORLD = 2


def _old_num_masks(n: int) -> float:
    t = torch.tensor(float(n))
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return max(float(t), 1.0)


def _old_contrastive(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
    rank = dist.get_rank() if dist.is_initialized() else 0
    labels = torch.arange(img.shape[0]) + rank * img.shape[0]
    i2t = scale * img.float() @ all_txt.float().T
    t2i = scale * txt.float() @ all_img.float().T
    f = torch.nn.functional.cross_entropy
    return f(i2t, labels) + f(t2i, labels)


class _Reference(SSegObjective):
    """The objective's forward as it was (mask + InfoNCE terms), three collectives a step."""

    def forward(self, images, labels, tokens, *unused):  # type: ignore[override]
        model, cfg = self.model, self.cfg
        masks, feats = model(images)
        targets, valid = label_maps_to_masks(labels, masks.shape[-2:], cfg.num_pseudo_masks)
        indices = hungarian_match(masks.detach(), targets, valid, cfg.dice_weight,
                                  cfg.focal_weight, cfg.focal_alpha, cfg.focal_gamma)  # fmt: skip
        n = sum(len(p) for p, _ in indices)
        ml = mask_loss(masks, targets, indices, cfg.dice_weight, cfg.focal_weight,
                       cfg.focal_alpha, cfg.focal_gamma, num_masks=_old_num_masks(n))  # fmt: skip
        scale = model.logit_scale()
        cl = _old_contrastive(model.image_embedding(feats), model.encode_text(tokens), scale)
        return {"loss": cfg.mask_weight * ml["loss"] + cfg.contrastive_weight * cl}


def _rank_batch(model: SSeg, rank: int) -> tuple[torch.Tensor, ...]:
    images, labels, captions = _toy_batch()
    sl = slice(2 * rank, 2 * rank + 2)
    if rank == 1:  # another image mix and other words: different rows of the token table
        images, captions = images.flip(0), [c + " with a red boat" for c in captions]
    return images[sl], labels[sl], model.tokenize(captions)[sl]


def _grads(net: torch.nn.Module, obj: SSegObjective, batch: tuple) -> tuple[float, dict]:
    out = net(*batch)
    out["loss"].backward()
    loss = out["loss"].detach().clone()
    dist.all_reduce(loss)
    grads = {n: p.grad.clone() for n, p in obj.model.named_parameters() if p.grad is not None}
    return float(loss) / _WORLD, grads


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cfg = SSegLossConfig(num_pseudo_masks=4)
        results = {}
        for name in ("reference", "new"):
            torch.manual_seed(0)
            model = SSeg(_micro_config()).eval()  # BN running stats: identical forwards
            if name == "reference":
                obj: SSegObjective = _Reference(model, cfg)
                net: torch.nn.Module = DistributedDataParallel(obj)
            else:
                obj = SSegObjective(model, cfg)
                net = wrap_ddp(obj)
            results[name] = _grads(net, obj, _rank_batch(model, rank))
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_wrap_ddp_and_one_gather_give_the_old_losses_and_gradients(tmp_path):
    # fork, not spawn: the workers inherit the imported modules (a spawned worker re-imports
    # torch and ovs.methods for many seconds on a loaded box); as in test_pacl.
    args = (str(tmp_path / "rdzv"), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=_WORLD, join=True, start_method="fork")
    per_rank = [torch.load(tmp_path / f"{r}.pt") for r in range(_WORLD)]
    for got in per_rank:
        ref_loss, ref_grads = got["reference"]
        new_loss, new_grads = got["new"]
        assert new_loss == pytest.approx(ref_loss, rel=1e-6)
        assert new_grads.keys() == ref_grads.keys()
        # float rounding only (other bucketing, strided matmul operands): 1e-6 of the largest
        # gradient (some are zero in exact arithmetic, e.g. attention key biases, and hold
        # rounding noise); a dropped or mis-scaled contribution is orders of magnitude larger
        scale = max(g.abs().max().item() for g in ref_grads.values())
        for name, g in ref_grads.items():
            torch.testing.assert_close(new_grads[name], g, rtol=1e-4, atol=1e-6 * scale, msg=name)
    # the token table: both ranks hold the same averaged gradient, non-zero on the rows that
    # either rank used (rank 1's extra words included), zero elsewhere
    name = "text.token_embedding.weight"
    g0, g1 = per_rank[0]["new"][1][name], per_rank[1]["new"][1][name]
    torch.testing.assert_close(g0, g1, rtol=0, atol=0)
    used = SSeg(_micro_config()).tokenize(["a red boat"])[0, 1:4]
    assert (g0[used].abs().sum(1) > 0).all()
    assert g0.abs().sum(1).count_nonzero() < 200


def test_objective_single_process_equals_reference():
    """One worker: the new forward computes the same loss and gradients as the old one."""
    torch.manual_seed(0)
    model = SSeg(_micro_config()).eval()
    cfg = SSegLossConfig(num_pseudo_masks=4)
    batch = _rank_batch(model, 0)
    losses, grads = [], []
    for obj in (_Reference(model, cfg), SSegObjective(model, cfg)):
        model.zero_grad(set_to_none=True)
        loss = obj(*batch)["loss"]
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[1] == losses[0]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=0, msg=name)


def test_wrap_ddp_is_identity_without_a_process_group():
    obj = SSegObjective(SSeg(_micro_config()), SSegLossConfig())
    assert wrap_ddp(obj) is obj


def test_contrastive_loss_pre_gathered_is_the_same():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    scale = torch.tensor(3.0)
    assert contrastive_loss(img, txt, scale, gathered=(img, txt)) == contrastive_loss(
        img, txt, scale
    )
