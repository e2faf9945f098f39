import itertools
import math

import pytest
import torch

from ovs.methods.sseg.matching import (
    batch_dice_cost,
    batch_focal_cost,
    hungarian_match,
    label_maps_to_masks,
    match_cost,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _ref_dice(lg: list[float], tg: list[float]) -> float:
    p = [_sig(v) for v in lg]
    inter = sum(a * b for a, b in zip(p, tg))
    return 1 - (2 * inter + 1) / (sum(p) + sum(tg) + 1)


def _ref_focal(lg: list[float], tg: list[float], alpha: float = 0.25, gamma: float = 2.0) -> float:
    tot = 0.0
    for x, t in zip(lg, tg):
        p = _sig(x)
        if t == 1:
            tot += -alpha * (1 - p) ** gamma * math.log(p)
        else:
            tot += -(1 - alpha) * p**gamma * math.log(1 - p)
    return tot / len(lg)


def test_costs_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(2, 3, 10, generator=g, dtype=torch.float64) * 2
    tg = (torch.rand(2, 4, 10, generator=g) > 0.5).double()
    dice, focal = batch_dice_cost(lg, tg), batch_focal_cost(lg, tg)
    assert dice.shape == focal.shape == (2, 3, 4)
    for b, n, k in itertools.product(range(2), range(3), range(4)):
        assert dice[b, n, k].item() == pytest.approx(
            _ref_dice(lg[b, n].tolist(), tg[b, k].tolist())
        )
        assert focal[b, n, k].item() == pytest.approx(
            _ref_focal(lg[b, n].tolist(), tg[b, k].tolist())
        )


def _brute_force(cost: torch.Tensor, valid_cols: list[int]) -> float:
    n = cost.shape[0]
    k = len(valid_cols)
    best = math.inf
    if n >= k:  # every valid target gets a distinct prediction
        for preds in itertools.permutations(range(n), k):
            best = min(best, sum(cost[p, c].item() for p, c in zip(preds, valid_cols)))
    else:  # every prediction gets a distinct valid target
        for cols in itertools.permutations(valid_cols, n):
            best = min(best, sum(cost[p, c].item() for p, c in enumerate(cols)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_hungarian_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 6, (1,), generator=g))
    k = int(torch.randint(1, 4, (1,), generator=g))
    b = 3
    logits = torch.randn(b, n, 6, 6, generator=g) * 3
    targets = (torch.rand(b, k, 6, 6, generator=g) > 0.6).float()
    valid = torch.rand(b, k, generator=g) > 0.3
    targets[~valid] = 0.0  # padded / vanished pseudo-masks are empty
    out = hungarian_match(logits, targets, valid)
    cost = match_cost(logits, targets)
    for i, (p, t) in enumerate(out):
        cols = valid[i].nonzero().flatten().tolist()
        assert len(p) == len(t) == min(n, len(cols))
        assert set(t.tolist()) <= set(cols)
        assert len(set(p.tolist())) == len(p) and len(set(t.tolist())) == len(t)
        got = sum(cost[i, a, c].item() for a, c in zip(p.tolist(), t.tolist()))
        assert got == pytest.approx(_brute_force(cost[i], cols), abs=1e-5)


def test_default_valid_skips_empty_targets_and_all_empty_image():
    logits = torch.randn(2, 4, 5, 5)
    targets = torch.zeros(2, 3, 5, 5)
    targets[0, 1, :2] = 1
    out = hungarian_match(logits, targets)
    assert out[0][1].tolist() == [1] and len(out[0][0]) == 1
    assert out[1][0].numel() == 0 and out[1][1].numel() == 0


def test_label_maps_to_masks():
    labels = torch.tensor([[[0, 0, 2, 2], [0, 0, 2, 2], [5, 5, 255, 255], [5, 5, 255, 255]]])
    masks, valid = label_maps_to_masks(labels, num_masks=4)
    assert masks.shape == (1, 4, 4, 4)
    assert valid.tolist() == [[True, False, True, False]]
    assert masks[0, 0].sum() == 4 and masks[0, 2, 0, 2] == 1 and masks.sum() == 8
    small, valid2 = label_maps_to_masks(labels, size=(2, 2), num_masks=4)
    assert small[0, 0].tolist() == [[1, 0], [0, 0]] and small[0, 2].tolist() == [[0, 1], [0, 0]]
    _, v = label_maps_to_masks(labels)  # default K = max id (255 ignored) + 1
    assert v.shape == (1, 6) and v[0, 5]
