"""GroupViT: Gumbel assignment (soft/hard, straight-through), grouping shapes, the loss against
a plain reference, group-classified dense probabilities and the paper model's size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovs.methods.groupvit import SPEC, config
from ovs.methods.groupvit.grouping import GroupingEncoder, gumbel_assign, patch_to_groups
from ovs.methods.groupvit.objective import GroupViTObjective

pytestmark = pytest.mark.usefixtures("one_thread")


def test_soft_assignment_is_the_softmax_over_groups() -> None:
    logits = torch.randn(2, 5, 7)
    assign, soft = gumbel_assign(logits, tau=0.5, hard=False, gumbel=False)
    ref = torch.exp(logits / 0.5) / torch.exp(logits / 0.5).sum(dim=1, keepdim=True)
    torch.testing.assert_close(soft, ref)
    assert assign is soft


def test_hard_assignment_is_one_hot_with_the_soft_gradient() -> None:
    logits = torch.randn(2, 5, 7, requires_grad=True)
    assign, soft = gumbel_assign(logits, hard=True, gumbel=False)
    assert set(assign.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(assign.detach().sum(dim=1), torch.ones(2, 7))
    assert torch.equal(assign.detach().argmax(dim=1), logits.detach().argmax(dim=1))
    w = torch.randn(2, 5, 7)
    (g_hard,) = torch.autograd.grad((assign * w).sum(), logits)
    logits2 = logits.detach().clone().requires_grad_(True)
    (g_soft,) = torch.autograd.grad((gumbel_assign(logits2, gumbel=False)[1] * w).sum(), logits2)
    torch.testing.assert_close(g_hard, g_soft)  # straight-through


def test_gumbel_noise_is_drawn_and_seeded() -> None:
    logits = torch.zeros(1, 4, 200)  # all groups tie: only the noise picks one
    a1, _ = gumbel_assign(logits, generator=torch.Generator().manual_seed(1))
    a2, _ = gumbel_assign(logits, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a1, a2)
    counts = a1.sum(dim=2)[0]
    assert (counts > 20).all()  # every group wins some tokens (uniform ~50 each)
    plain, _ = gumbel_assign(logits, gumbel=False)
    assert plain[0, 0].sum() == 200  # without noise argmax ties go to group 0


def test_grouping_encoder_shapes_and_hard_maps() -> None:
    cfg = config.GroupingConfig()  # 64 px, patch 8 -> 64 patches, 8 then 4 groups
    enc = GroupingEncoder(cfg).eval()
    groups, assigns, softs = enc(torch.randn(3, 3, 64, 64))
    assert groups.shape == (3, 4, cfg.width)
    assert [a.shape for a in assigns] == [(3, 8, 64), (3, 4, 8)]
    maps = patch_to_groups(assigns)
    assert maps.shape == (3, 4, 64)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(3, 64))  # each patch: one group
    assert set(maps.unique().tolist()) <= {0.0, 1.0}
    for s in softs:
        torch.testing.assert_close(s.sum(dim=1), torch.ones(s.shape[0], s.shape[2]))
    soft_cfg = config.GroupingConfig(hard_assignment=False)
    _, soft_assigns, _ = GroupingEncoder(soft_cfg).eval()(torch.randn(1, 3, 64, 64))
    assert not set(soft_assigns[0].unique().tolist()) <= {0.0, 1.0}


def _ref_infonce(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    b, total = img.shape[0], 0.0
    for i in range(b):
        row = [scale * float(img[i] @ txt[j]) for j in range(b)]
        col = [scale * float(txt[i] @ img[j]) for j in range(b)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    return total / b


def _ref_noun(img: torch.Tensor, nouns: torch.Tensor, targets: torch.Tensor, scale: float) -> float:
    logits = [
        [scale * float(img[i] @ nouns[u]) for u in range(nouns.shape[0])] for i in range(len(img))
    ]

    def soft_ce(rows: list[list[float]], pos: list[list[bool]]) -> float:
        terms = []
        for r, p in zip(rows, pos, strict=True):
            if any(p):
                lse = math.log(sum(math.exp(v) for v in r))
                terms.append(-sum(v - lse for v, q in zip(r, p, strict=True) if q) / sum(p))
        return sum(terms) / len(terms)

    t = targets.tolist()
    cols = [list(c) for c in zip(*logits, strict=True)]
    return soft_ce(logits, t) + soft_ce(cols, [list(c) for c in zip(*t, strict=True)])


def test_objective_matches_plain_reference() -> None:
    cfg = SPEC.config()
    model = SPEC.build_model(cfg, 0, None).eval()  # eval: no Gumbel noise, same embeddings
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = model.tokenize(["a red boat", "a cat on grass", "sky"])
    nouns = model.tokenize(["a photo of a boat.", "a photo of a cat.", "a photo of a sky."])
    targets = torch.tensor([[True, False, False], [False, True, False], [False, False, False]])
    out = GroupViTObjective(model, cfg.loss)(images, None, tokens, None, nouns, targets)
    with torch.no_grad():
        img, _, _ = model.encode_image(images)
        txt, nn_ = model.encode_text(tokens), model.encode_text(nouns)
        scale = float(model.logit_scale())
    c, n = _ref_infonce(img, txt, scale), _ref_noun(img, nn_, targets, scale)
    assert out["contrastive"].item() == pytest.approx(c, rel=1e-5)
    assert out["noun"].item() == pytest.approx(n, rel=1e-5)
    assert out["loss"].item() == pytest.approx(c + n, rel=1e-5)
    # the image embedding is the projection of the final groups' mean (GroupViT's pooling)
    groups, _, _ = model.image((images - model.pixel_mean) / model.pixel_std)
    torch.testing.assert_close(img, F.normalize(model.image_proj(groups.mean(1)), dim=-1))


def test_dense_probs_give_each_pixel_its_groups_class_distribution() -> None:
    model = SPEC.build_model(SPEC.config(), 0, None).eval()
    text = model.text_embeddings(["cat", "dog", "grass", "sky"])
    images = torch.rand(2, 3, 44, 60)  # not multiples of the patch: padded, cropped back
    probs = model.dense_probs(images, text)
    assert probs.shape == (2, 4, 44, 60)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 44, 60))
    groups, onehot = model.group_maps(images)
    cls = (model.logit_scale() * groups @ text.T).softmax(-1)  # [B,S,M]
    g = onehot.argmax(dim=1)  # [B,H,W]
    torch.testing.assert_close(probs[0, :, 5, 7], cls[0, g[0, 5, 7]])
    torch.testing.assert_close(probs[1, :, 40, 50], cls[1, g[1, 40, 50]])


def test_paper_flavour_has_groupvit_s_sizes() -> None:
    """GroupViT-S's trunk is ViT-S (12 blocks x 384: 6 + 3 + 3); DeiT/ViT-S is published at
    22M parameters (22.05M with its 1000-class head of 0.385M): the patch embedding and the 12
    blocks must come within 3 % of the headless 21.67M."""
    with torch.device("meta"):  # sizes only: no memory, no random init
        model = SPEC.build_model(config.paper(), 0, None)
    enc = model.image
    trunk = sum(p.numel() for p in enc.patch_embed.parameters())
    trunk += sum(p.numel() for s in enc.stages for p in s.parameters())
    assert trunk == pytest.approx(22.05e6 - 0.385e6, rel=0.03)
    assert [len(s) for s in enc.stages] == [6, 3, 3]
    assert [t.shape[1] for t in enc.group_token_params] == [64, 8]
    assert model.cfg.image.patch_size == 16 and model.cfg.embed_dim == 256
    # text: 12 CLIP blocks of width w = 256 (12 w^2 + 13 w each), the 49408-token table, 77
    # positions and the final LayerNorm
    w = 256
    text = sum(p.numel() for p in model.text.parameters())
    assert text == 12 * (12 * w * w + 13 * w) + 49408 * w + 77 * w + 2 * w


def test_paper_config_file_is_the_paper_flavour() -> None:
    from pipelines.graph import load_config

    train = load_config("conf/groupvit_cc12m.yaml", []).train
    assert train.method == "groupvit" and train.groupvit.model == config.paper_groupvit()


MODEL_SIZES = (
    "embed_dim",
    "proj_hidden",
    *(f"image.{k}" for k in ("depths", "group_tokens", "output_groups", "heads", "width")),
    *(f"image.{k}" for k in ("input_size", "patch_size")),
    *(f"text.{k}" for k in ("context_length", "heads", "layers", "width")),
)


def test_tiny_sibling_differs_only_in_sizes_and_locations() -> None:
    from tests.unit.test_sibling_config import not_allowed, resolved

    diff = not_allowed(resolved("groupvit_cc12m.yaml"), resolved("groupvit_cc12m_local.yaml"))
    assert set(diff) <= {f"train.groupvit.model.{k}" for k in MODEL_SIZES}, sorted(diff)
