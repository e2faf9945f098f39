import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ovs.methods.sseg.losses import class_loss, dice_loss, mask_loss, sigmoid_focal_loss
from ovs.train.contrastive import contrastive_loss, noun_contrastive_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _ref_focal(lg, tg, alpha=0.25, gamma=2.0):
    out = []
    for row_l, row_t in zip(lg, tg):
        tot = 0.0
        for x, t in zip(row_l, row_t):
            p = _sig(x)
            pt = p if t == 1 else 1 - p
            a = alpha if t == 1 else 1 - alpha
            tot += -a * (1 - pt) ** gamma * math.log(pt)
        out.append(tot / len(row_l))
    return out


def _ref_dice(lg, tg):
    out = []
    for row_l, row_t in zip(lg, tg):
        p = [_sig(x) for x in row_l]
        inter = sum(a * b for a, b in zip(p, row_t))
        out.append(1 - (2 * inter + 1) / (sum(p) + sum(row_t) + 1))
    return out


def _data(seed=0, m=4, p=12):
    g = torch.Generator().manual_seed(seed)
    lg = torch.randn(m, p, generator=g, dtype=torch.float64) * 2
    tg = (torch.rand(m, p, generator=g) > 0.5).double()
    return lg, tg


def test_focal_matches_loop():
    lg, tg = _data()
    assert sigmoid_focal_loss(lg, tg).tolist() == pytest.approx(
        _ref_focal(lg.tolist(), tg.tolist())
    )
    got = sigmoid_focal_loss(lg, tg, alpha=0.5, gamma=0.0).tolist()
    assert got == pytest.approx(_ref_focal(lg.tolist(), tg.tolist(), 0.5, 0.0))


def test_dice_matches_loop():
    lg, tg = _data(1)
    assert dice_loss(lg, tg).tolist() == pytest.approx(_ref_dice(lg.tolist(), tg.tolist()))


def test_mask_loss_matched_pairs_only():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(2, 3, 3, 4, generator=g) > 0.5).double()
    indices = [(torch.tensor([0, 3]), torch.tensor([2, 0])), (torch.tensor([4]), torch.tensor([1]))]
    out = mask_loss(logits, targets, indices, dice_weight=1.0, focal_weight=20.0)
    dice_sum = focal_sum = 0.0
    pairs = [(0, 0, 2), (0, 3, 0), (1, 4, 1)]
    for b, q, k in pairs:
        lg = [logits[b, q].flatten().tolist()]
        tg = [targets[b, k].flatten().tolist()]
        dice_sum += _ref_dice(lg, tg)[0]
        focal_sum += _ref_focal(lg, tg)[0]
    assert out["dice"].item() == pytest.approx(dice_sum / 3)
    assert out["focal"].item() == pytest.approx(focal_sum / 3)
    assert out["loss"].item() == pytest.approx(dice_sum / 3 + 20 * focal_sum / 3)
    out["loss"].backward()
    unmatched = [(0, 1), (0, 2), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3)]
    for b, q in unmatched:  # unmatched predictions are not penalised
        assert logits.grad[b, q].abs().max() == 0
    assert logits.grad[0, 0].abs().max() > 0
    # explicit normaliser
    out2 = mask_loss(logits, targets, indices, num_masks=6.0)
    assert out2["loss"].item() == pytest.approx(out["loss"].item() / 2)


def test_mask_loss_no_matches_is_zero_with_graph():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64)
    out = mask_loss(logits, torch.zeros(2, 2, 4, 4), [(empty, empty), (empty, empty)])
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert logits.grad.abs().max() == 0


def _ref_infonce(img, txt, scale):
    n = len(img)
    sims = [
        [scale * sum(a * b for a, b in zip(img[i], txt[j])) for j in range(n)] for i in range(n)
    ]
    i2t = t2i = 0.0
    for i in range(n):
        i2t += -sims[i][i] + math.log(sum(math.exp(s) for s in sims[i]))
        t2i += -sims[i][i] + math.log(sum(math.exp(sims[j][i]) for j in range(n)))
    return i2t / n + t2i / n


def test_contrastive_matches_loop():
    g = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    got = contrastive_loss(img, txt, torch.tensor(7.0, dtype=torch.float64))
    assert got.item() == pytest.approx(_ref_infonce(img.tolist(), txt.tolist(), 7.0), rel=1e-5)


# ----------------------------------------------------------------------------- 2 workers

_WORLD, _PER = 2, 3


class _Towers(torch.nn.Module):
    """Linear image/text encoders + a learnable log-scale: enough to check gradients."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.img = torch.nn.Linear(8, 4)
        self.txt = torch.nn.Linear(6, 4)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, x, y):
        img = torch.nn.functional.normalize(self.img(x), dim=-1)
        txt = torch.nn.functional.normalize(self.txt(y), dim=-1)
        return contrastive_loss(img, txt, self.log_scale.exp())


def _global_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(_WORLD * _PER, 8, generator=g), torch.randn(_WORLD * _PER, 6, generator=g)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=_WORLD)
    try:
        model = _Towers()
        x, y = _global_batch()
        sl = slice(rank * _PER, (rank + 1) * _PER)
        loss = model(x[sl], y[sl])
        loss.backward()
        # What DDP does: average the loss (for logging) and the gradients over workers.
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        grads = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            grads[name] = p.grad / _WORLD
        torch.save({"loss": loss / _WORLD, "grads": grads}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_gathered_infonce_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=_WORLD, join=True)
    model = _Towers()
    x, y = _global_batch()
    ref = model(x, y)
    ref.backward()
    for rank in range(_WORLD):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert got["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
        for name, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6)
    # A gather that drops the gradient of remote rows would not match: make sure the test can
    # tell (the remote rows contribute a sizeable part of the gradient).
    local = _Towers()
    sum(local(x[s : s + _PER], y[s : s + _PER]) / _WORLD for s in (0, _PER)).backward()
    assert not torch.allclose(local.img.weight.grad, model.img.weight.grad, atol=1e-4)


def test_class_loss_matches_loop():
    g = torch.Generator().manual_seed(3)
    feats = torch.nn.functional.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    classes = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1)
    indices = [(torch.tensor([0, 3]), torch.tensor([2, 0])), (torch.tensor([4]), torch.tensor([1]))]
    scale = torch.tensor(7.0)
    terms = []
    for b, (preds, tgts) in enumerate(indices):
        for p, t in zip(preds.tolist(), tgts.tolist()):
            logits = [float(scale * (feats[b, p] * classes[c]).sum()) for c in range(3)]
            log_z = math.log(sum(math.exp(v) for v in logits))
            terms.append(log_z - logits[t])
    expected = sum(terms) / len(terms)
    assert class_loss(feats, classes, indices, scale).item() == pytest.approx(expected, rel=1e-5)
    empty = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))] * 2
    feats.requires_grad_(True)
    zero = class_loss(feats, classes, empty, scale)
    assert zero.item() == 0.0 and zero.requires_grad


def test_noun_contrastive_matches_loop():
    g = torch.Generator().manual_seed(5)
    img = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)
    nouns = torch.nn.functional.normalize(
        torch.randn(3, 6, generator=g, dtype=torch.float64), dim=1
    )
    # image 2 names no noun (no image->noun term); noun 1 is shared by images 0 and 3
    t = [[1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]]
    scale = 4.0
    s = [[scale * sum(a * b for a, b in zip(img[i].tolist(), nouns[u].tolist())) for u in range(3)]
         for i in range(4)]  # fmt: skip

    def soft_ce(rows, targets):
        terms = []
        for logits, pos in zip(rows, targets):
            if not any(pos):
                continue
            log_z = math.log(sum(math.exp(v) for v in logits))
            terms.append(sum(p * (log_z - v) for v, p in zip(logits, pos)) / sum(pos))
        return sum(terms) / len(terms)

    cols = [[s[i][u] for i in range(4)] for u in range(3)]
    t_cols = [[t[i][u] for i in range(4)] for u in range(3)]
    expected = soft_ce(s, t) + soft_ce(cols, t_cols)
    got = noun_contrastive_loss(img, nouns, torch.tensor(t, dtype=torch.bool), torch.tensor(scale))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    img.requires_grad_(True)
    none = noun_contrastive_loss(
        img, nouns, torch.zeros(4, 3, dtype=torch.bool), torch.tensor(scale)
    )
    assert none.item() == 0.0 and none.requires_grad
