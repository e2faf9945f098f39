"""PACL (``ovs.methods.pacl``): the compatibility and loss against plain loops (explicit
softmaxes), the loss over two gloo workers against one process, the frozen CLIP, the dense
adapter against a per-patch loop, and ``bind`` to a ``clip`` checkpoint."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ovs.methods import METHODS
from ovs.methods.pacl.losses import compatibility, pacl_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _ref_phi(v: list, t: list) -> float:
    """One image's patches ``v [P][E]`` against one caption ``t [E]``, written out."""
    dots = [sum(a * b for a, b in zip(p, t)) for p in v]
    z = sum(math.exp(d) for d in dots)
    w = [math.exp(d) / z for d in dots]
    pooled = [sum(w[p] * v[p][e] for p in range(len(v))) for e in range(len(t))]
    norm = math.sqrt(sum(x * x for x in pooled))
    return sum(pooled[e] / norm * t[e] for e in range(len(t)))


def _ref_loss(v: list, t: list, scale: float) -> float:
    n = len(v)
    logits = [[scale * _ref_phi(v[i], t[j]) for j in range(n)] for i in range(n)]
    i2t = sum(-logits[i][i] + math.log(sum(math.exp(x) for x in logits[i])) for i in range(n))
    t2i = sum(
        -logits[j][j] + math.log(sum(math.exp(logits[i][j]) for i in range(n))) for j in range(n)
    )
    return i2t / n + t2i / n


def test_compatibility_matches_loop() -> None:
    v, t = _unit(3, 5, 4, seed=0), _unit(2, 4, seed=1)
    got = compatibility(v, t)
    assert got.shape == (3, 2)
    for b in range(3):
        for j in range(2):
            assert got[b, j].item() == pytest.approx(_ref_phi(v[b].tolist(), t[j].tolist()), 1e-5)


def test_pacl_loss_matches_loop() -> None:
    v, t = _unit(4, 6, 5, seed=2), _unit(4, 5, seed=3)
    got = pacl_loss(v, t, torch.tensor(9.0, dtype=torch.float64))
    assert got.item() == pytest.approx(_ref_loss(v.tolist(), t.tolist(), 9.0), rel=1e-5)


# ----------------------------------------------------------------------------- 2 workers

_WORLD, _PER, _P = 2, 3, 4


class _Towers(torch.nn.Module):
    """Linear patch / text encoders and a learnable log-scale: enough to check gradients."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.img = torch.nn.Linear(8, 5)
        self.txt = torch.nn.Linear(6, 5)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        v = F.normalize(self.img(x), dim=-1)
        return pacl_loss(v, F.normalize(self.txt(y), dim=-1), self.log_scale.exp())


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = _WORLD * _PER
    return torch.randn(n, _P, 8, generator=g), torch.randn(n, 6, generator=g)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=_WORLD)
    try:
        model = _Towers()
        x, y = _global_batch()
        sl = slice(rank * _PER, (rank + 1) * _PER)
        loss = model(x[sl], y[sl])
        loss.backward()
        loss = loss.detach().clone()  # what DDP does: average loss and gradients over workers
        dist.all_reduce(loss)
        grads = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            grads[name] = p.grad / _WORLD
        torch.save({"loss": loss / _WORLD, "grads": grads}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_gathered_pacl_loss_equals_single_process(tmp_path) -> None:
    # fork, not spawn: the workers inherit the imported modules (a spawned worker re-imports
    # ovs.methods, every method's dependencies, for many seconds on a loaded box).
    args = (str(tmp_path / "rdzv"), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=_WORLD, join=True, start_method="fork")
    model = _Towers()
    x, y = _global_batch()
    model(x, y).backward()
    ref_loss = _Towers()(x, y).item()
    for rank in range(_WORLD):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert got["loss"].item() == pytest.approx(ref_loss, rel=1e-5)
        for name, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6)
    # Local-only negatives would give another gradient: the test can tell them apart.
    local = _Towers()
    sum(local(x[s : s + _PER], y[s : s + _PER]) / _WORLD for s in (0, _PER)).backward()
    assert not torch.allclose(local.img.weight.grad, model.img.weight.grad, atol=1e-4)


# ----------------------------------------------------------------------------- the model


def _tiny():
    spec = METHODS["pacl"]
    return spec, spec.build_model(spec.config(), 0, None)


def test_clip_is_frozen_and_stays_in_eval_mode() -> None:
    spec, model = _tiny()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("embedder.", "log_logit_scale")) for n in trainable)
    model.train()
    assert model.embedder.training and not model.clip.training
    before = {n: p.clone() for n, p in model.clip.named_parameters()}
    out = spec.objective(model, spec.config())(
        torch.rand(2, 3, 64, 64), None, model.tokenize(["a red boat", "a cat"])
    )
    out["loss"].backward()
    spec.optimizer(model, _Optim()).step()
    assert all(p.grad is None for p in model.clip.parameters())
    for n, p in model.clip.named_parameters():
        torch.testing.assert_close(p, before[n])


class _Optim:
    lr, weight_decay, betas = 1e-2, 0.05, (0.9, 0.999)


def _bilinear(grid: list, y: int, x: int, scale: int) -> float:
    """``grid [h][w]`` upsampled by ``scale`` at output pixel ``(y, x)``: bilinear,
    ``align_corners=False`` (source coordinate ``(i + 0.5) / scale - 0.5``, clamped)."""
    h, w = len(grid), len(grid[0])
    sy, sx = max((y + 0.5) / scale - 0.5, 0.0), max((x + 0.5) / scale - 0.5, 0.0)
    y0, x0 = int(sy), int(sx)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = sy - y0, sx - x0
    return (1 - ly) * ((1 - lx) * grid[y0][x0] + lx * grid[y0][x1]) + ly * (
        (1 - lx) * grid[y1][x0] + lx * grid[y1][x1]
    )


@torch.no_grad()
def test_dense_probs_classify_each_embedded_patch() -> None:
    spec, model = _tiny()
    model.eval()
    method = spec.seg_method(model, torch.device("cpu"))
    text = method.text_embeddings(["cat", "dog", "grass"])
    images = torch.rand(2, 3, 64, 64)
    probs = method.dense_probs(images, text)
    assert probs.shape == (2, 3, 64, 64)
    # Embedded patches: the CLIP's projected patch tokens through Linear + MLP_2, normalised.
    tokens = model.dense.encode_tokens(images)[:, 1:]  # [B, 64, E], 8 x 8 patches of 8 px
    e = model.embedder
    hidden = F.gelu(tokens @ e.mlp.layers[0].weight.T + e.mlp.layers[0].bias)
    ref_v = (tokens @ e.linear.weight.T + e.linear.bias) + (
        hidden @ e.mlp.layers[1].weight.T + e.mlp.layers[1].bias
    )
    v = model.patch_embeddings(images)
    torch.testing.assert_close(v, F.normalize(ref_v, dim=-1), rtol=1e-4, atol=1e-5)
    scale = model.logit_scale().item()
    for b, y, x in ((0, 0, 0), (1, 27, 40), (1, 63, 5)):
        grids = [
            [[float(v[b, 8 * r + c] @ text[m]) for c in range(8)] for r in range(8)]
            for m in range(3)
        ]
        logits = [scale * _bilinear(grids[m], y, x, 8) for m in range(3)]
        z = sum(math.exp(t) for t in logits)
        for m in range(3):
            assert probs[b, m, y, x].item() == pytest.approx(math.exp(logits[m]) / z, rel=1e-4)


def test_bind_uses_the_clip_checkpoint(tmp_path) -> None:
    clip_spec = METHODS["clip"]
    clip_cfg = clip_spec.config()
    clip_cfg.embed_dim = 32  # differs from the PACL default: the build must take the file's
    clip = clip_spec.build_model(clip_cfg, 5, None)
    spec = METHODS["pacl"]
    assert spec.requires == ("clip",) and spec.bind is not None
    cfg = spec.bind(spec.config(), {"clip": tmp_path / "clip.pt"})
    path = clip_spec.save_checkpoint(clip, tmp_path / "clip.pt", None)
    assert cfg.model.clip_checkpoint == str(path)  # bound before the file existed
    model = spec.build_model(cfg, 0, None)
    assert model.cfg.clip.embed_dim == 32  # the checkpoint's CLIP config, not the section's
    for (n, p), q in zip(clip.clip.state_dict().items(), model.clip.state_dict().values()):
        torch.testing.assert_close(p, q, msg=n)
    # The PACL file stands alone: reloading needs neither the clip file nor a download.
    pacl_path = spec.save_checkpoint(model, tmp_path / "pacl.pt", None)
    os.remove(path)
    loaded = spec.from_checkpoint(torch.load(pacl_path, weights_only=True))
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
