import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from ovs.methods.sseg.checkpoint import from_checkpoint, save_checkpoint
from ovs.methods.sseg.config import SSegConfig, SSegLossConfig, paper_sseg
from ovs.methods.sseg.matching import hungarian_match, label_maps_to_masks
from ovs.methods.sseg.model import SSeg
from ovs.methods.sseg.objective import SSegObjective
from ovs.models.maskformer import Backbone, MaskFormer, MaskFormerConfig, mask_pool
from ovs.models.text import TextConfig, TextTransformer, tokenize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> SSeg:
    torch.manual_seed(0)
    return SSeg(SSegConfig()).eval()


def test_maskformer_shapes_resnet():
    cfg = MaskFormerConfig()
    masks, feats = MaskFormer(cfg)(torch.randn(2, 3, 64, 96))
    assert masks.shape == (2, cfg.num_queries, 16, 24)
    assert feats.shape == (2, cfg.num_queries, cfg.hidden_dim)


def test_maskformer_nhwc_backbone_single_memory_level():
    """Swin (timm returns NHWC features) at a non-training size, MaskFormer's 1-level memory."""
    cfg = MaskFormerConfig(
        backbone="swin_tiny_patch4_window7_224",
        backbone_kwargs={
            "embed_dim": 16,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1],
            "strict_img_size": False,
        },
        memory_levels=1,
        dec_layers=1,
    )
    m = MaskFormer(cfg)
    assert m.backbone.nhwc and m.backbone.channels == [16, 32, 64, 128]
    masks, feats = m(torch.randn(1, 3, 96, 64))
    assert masks.shape == (1, cfg.num_queries, 24, 16) and feats.shape == (1, 16, 64)


def test_backbone_loads_local_checkpoint(tmp_path):
    kw = {"channels": [8, 16, 32, 64], "stem_width": 8}
    src = timm.create_model("resnet10t", **kw)
    torch.save(src.state_dict(), tmp_path / "backbone.pth")
    bb = Backbone("resnet10t", checkpoint=str(tmp_path / "backbone.pth"), kwargs=kw)
    torch.testing.assert_close(bb.net.conv1[0].weight, src.conv1[0].weight)
    torch.testing.assert_close(bb.net.layer4[0].conv1.weight, src.layer4[0].conv1.weight)
    fresh = Backbone("resnet10t", kwargs=kw)
    assert not torch.equal(fresh.net.conv1[0].weight, src.conv1[0].weight)


def test_tokenizer_offline_clip_bpe():
    tok = tokenize(["a photo of a dog", "x " * 100], context_length=16)
    assert tok.shape == (2, 16) and tok.dtype == torch.int64
    assert tok[0, 0] == 49406 and tok[0].argmax() == 6 and tok[0, 6] == 49407
    assert tok[0, 7:].eq(0).all()
    assert tok[1, -1] == 49407  # truncated, still ends with [EOT]


def test_text_transformer_eot_pooling_and_causality():
    torch.manual_seed(0)
    cfg = TextConfig(context_length=16, width=32, layers=2, heads=2)
    net = TextTransformer(cfg).eval()
    tok = tokenize(["a red car", "two dogs playing in the park"], 16)
    out = net(tok)
    assert out.shape == (2, 32)
    noisy = tok.clone()
    eot = tok.argmax(-1)
    for i in range(2):  # garbage after [EOT] must not change the pooled feature (causal mask)
        noisy[i, eot[i] + 1 :] = torch.randint(1, 49406, (16 - eot[i] - 1,))
    torch.testing.assert_close(net(noisy), out)
    changed = tok.clone()
    changed[0, 1] = 500  # a real token before [EOT] does change it
    assert not torch.allclose(net(changed)[0], out[0])


def test_sseg_forward_and_embeddings(model):
    imgs = torch.rand(3, 3, 64, 64)
    masks, feats = model(imgs)
    n, e = model.cfg.maskformer.num_queries, model.cfg.embed_dim
    assert masks.shape == (3, n, 16, 16) and feats.shape == (3, n, e)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3, n))
    img_emb = model.image_embedding(feats)
    torch.testing.assert_close(img_emb, F.normalize(feats.mean(1), dim=-1))
    txt = model.encode_text(model.tokenize(["a cat", "the sky"]))
    assert txt.shape == (2, e)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    assert model.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)
        assert model.logit_scale().item() == pytest.approx(100.0)
        model.log_logit_scale.fill_(math.log(1 / 0.07))


def test_dense_probs_is_maskformer_semantic_inference(model):
    imgs = torch.rand(2, 3, 50, 70)  # not multiples of 32: padded inside
    names = ["cat", "dog", "grass", "sky"]
    te = model.text_embeddings(names)
    assert te.shape == (4, model.cfg.embed_dim)
    torch.testing.assert_close(te.norm(dim=-1), torch.ones(4))
    probs = model.dense_probs(imgs, te)
    assert probs.shape == (2, 4, 50, 70)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 50, 70))
    # plain loop reference on the padded input
    with torch.no_grad():
        masks, feats = model(_pad_mean(imgs, model))
        up = F.interpolate(masks, size=(64, 96), mode="bilinear")[..., :50, :70].sigmoid()
        scale = model.logit_scale()
        ref = torch.zeros(2, 4, 50, 70)
        for b in range(2):
            for q in range(feats.shape[1]):
                cls = torch.softmax(scale * feats[b, q] @ te.T, dim=0)
                for m in range(4):
                    ref[b, m] += up[b, q] * cls[m]
            ref[b] /= up[b].sum(0)
    torch.testing.assert_close(probs, ref, rtol=1e-4, atol=1e-5)
    model.cfg.dense_normalize = False
    try:
        raw = model.dense_probs(imgs, te)
    finally:
        model.cfg.dense_normalize = True
    torch.testing.assert_close(raw, ref * up.sum(1, keepdim=True), rtol=1e-4, atol=1e-5)


def _pad_mean(imgs: torch.Tensor, model: SSeg) -> torch.Tensor:
    """Pad in pixel space with the mean colour = zero padding after normalisation."""
    mean = model.pixel_mean.expand(imgs.shape[0], 3, 64, 96).clone()
    mean[..., :50, :70] = imgs
    return mean


def test_checkpoint_roundtrip(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "m.pt", extra={"step": 3})
    loaded = from_checkpoint(torch.load(path, weights_only=True)).eval()
    assert loaded.cfg == model.cfg
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_paper_config_builds():
    cfg = paper_sseg()
    assert cfg.maskformer.backbone == "swin_small_patch4_window7_224"
    assert (cfg.maskformer.num_queries, cfg.maskformer.dec_layers, cfg.maskformer.hidden_dim) == (
        64,
        6,
        256,
    )
    assert (cfg.text.layers, cfg.text.width, cfg.text.context_length, cfg.text.vocab_size) == (
        12,
        256,
        77,
        49408,
    )
    assert (cfg.embed_dim, cfg.input_size) == (256, 224)
    m = SSeg(cfg).eval()
    assert 80e6 < sum(p.numel() for p in m.parameters()) < 90e6  # Swin-S 49M + text 22M + rest
    with torch.no_grad():  # small input keeps the test fast; Swin runs at any multiple of 32
        masks, feats = m(torch.rand(1, 3, 64, 96))
    assert masks.shape == (1, 64, 16, 24) and feats.shape == (1, 64, 256)


def _toy_batch() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """4 images of flat-coloured regions; labels = the regions on an 8x8 grid (pseudo-mask
    style), 2-4 regions per image."""
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(4, 8, 8, dtype=torch.long)
    labels[0, :, 4:] = 1
    labels[1, 4:, :] = 2
    labels[1, :4, :3] = 1
    labels[2, 2:6, 2:6] = 3
    labels[3, :, :2] = 1
    labels[3, :, 6:] = 2
    labels[3, 3:5, 3:5] = 3
    palette = torch.rand(4, 4, 3, generator=g)
    big = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = torch.stack([palette[i][big[i]].permute(2, 0, 1) for i in range(4)])
    images = (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    captions = ["red square", "blue sky over grass", "a cat on a mat", "three stripes"]
    return images, labels, captions


def _micro_config() -> SSegConfig:
    """An even smaller flavour than the tiny default so that 40 steps take a few seconds."""
    return SSegConfig(
        maskformer=MaskFormerConfig(
            backbone="resnet10t",
            backbone_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16},
            pixel_dim=32,
            mask_dim=32,
            hidden_dim=32,
            ffn_dim=64,
            num_queries=8,
        ),
        text=TextConfig(context_length=16, width=32, layers=1, heads=2),
        embed_dim=32,
    )


@pytest.mark.timeout(120)
def test_tiny_sseg_overfits_fixed_batch():
    torch.manual_seed(0)
    images, labels, captions = _toy_batch()
    m = SSeg(_micro_config())
    obj = SSegObjective(m, SSegLossConfig(num_pseudo_masks=4))
    tokens = m.tokenize(captions)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    hist = []
    for _ in range(40):
        out = obj(images, labels, tokens)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append({k: float(v.detach()) for k, v in out.items()})
    assert hist[0]["matched"] == pytest.approx(11 / 4)  # every non-empty region matched
    first, last = hist[0], min(hist[-5:], key=lambda h: h["mask"])
    assert last["mask"] < 0.4 * first["mask"], (first, last)
    assert last["contrastive"] < 0.25 * first["contrastive"], (first, last)
    # the learned masks segment the regions: argmax over matched queries recovers the labels
    with torch.no_grad():  # train mode: BatchNorm batch statistics, as during the steps
        masks, _ = m(images)
    targets, valid = label_maps_to_masks(labels, masks.shape[-2:], 4)
    acc = []
    for b, (p, t) in enumerate(hungarian_match(masks, targets, valid)):
        pred = t[masks[b, p].argmax(0)]
        gt = F.interpolate(labels[b][None, None].float(), size=masks.shape[-2:])[0, 0].long()
        acc.append((pred == gt).float().mean().item())
    assert sum(acc) / len(acc) > 0.75 and min(acc) > 0.5, acc


def test_train_step_bench_prints_json_last(capsys):
    import json

    from tools.bench.train_step import main

    argv = ["--config", "tiny", "--batch", "2", "--steps", "1", "--warmup", "0"]
    assert main([*argv, "--scaling", "off"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["config"] == "tiny" and result["device"] == "cpu"
    assert result["img_per_s"] > 0 and result["gemm_flops_per_s"] > 1e8
    # FLOPs scale with the batch: ~7 GFLOP for 16 images -> ~0.9 GFLOP for 2
    assert 0.3e9 < result["flops_per_step"] < 3e9
    assert 0 < result["achieved_flops_per_s"] < 10 * result["gemm_flops_per_s"]


def test_objective_class_supervision_adds_weighted_ce():
    """Supervised upper bound: the same objective plus CE of matched mask features against the
    class-name texts; the text tower gets gradients from it."""
    torch.manual_seed(0)
    images, labels, captions = _toy_batch()
    m = SSeg(_micro_config()).eval()  # no dropout / BN batch stats: identical forwards
    tokens = m.tokenize(captions)
    class_tokens = m.tokenize(["a photo of a zero.", "one", "two", "three"])
    base = SSegObjective(m, SSegLossConfig(num_pseudo_masks=4))(images, labels, tokens)
    sup = SSegObjective(m, SSegLossConfig(num_pseudo_masks=4, class_weight=0.5))
    out = sup(images, labels, tokens, class_tokens)
    assert "class" not in base and out["class"] > 0
    assert out["loss"].item() == pytest.approx(base["loss"].item() + 0.5 * out["class"].item())
    m.zero_grad()
    (out["loss"] - base["loss"].detach()).backward()
    assert m.text.token_embedding.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_train_step_scaling_runs_two_ray_train_workers(ray_local):
    from tools.bench.train_step import scaling_efficiency

    out = scaling_efficiency(batch=2, steps=2, warmup=1)
    assert out["workers1_img_per_s"] > 0 and out["workers2_img_per_s"] > 0
    expected = out["workers2_img_per_s"] / (2 * out["workers1_img_per_s"])
    assert out["scaling_efficiency"] == pytest.approx(expected)


def test_mask_pool_matches_loop_and_pooled_features_follow_their_mask():
    g = torch.Generator().manual_seed(1)
    logits, emb = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 6, 4, 5, generator=g)
    got = mask_pool(logits, emb)
    for b in range(2):
        for q in range(3):
            w = [float(torch.sigmoid(logits[b, q, y, x])) for y in range(4) for x in range(5)]
            ref = [
                sum(w[y * 5 + x] * float(emb[b, c, y, x]) for y in range(4) for x in range(5))
                / sum(w)
                for c in range(6)
            ]
            assert torch.allclose(got[b, q], torch.tensor(ref), atol=1e-5)
    # "pooled" mask features depend on the image only through their mask's pixels
    cfg = MaskFormerConfig(num_queries=4, mask_features="pooled")
    assert MaskFormer(cfg).pool_proj is not None
    assert MaskFormer(MaskFormerConfig(num_queries=4, mask_features="query")).pool_proj is None
    with pytest.raises(ValueError, match="mask_features"):
        MaskFormer(MaskFormerConfig(mask_features="mean"))


def test_noun_prompts_targets_cover_every_caption_noun():
    from ovs.data.train_data import Sample
    from ovs.training import noun_prompts

    img, mask = np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2), np.uint8)
    samples = [
        Sample("a", img, mask, "t", ("cat", "lawn", "sky", "dog")),
        Sample("b", img, mask, "t", ()),
        Sample("c", img, mask, "t", ("cat",)),
    ]
    texts, targets = noun_prompts(samples, 2, "a photo of a {}.", np.random.default_rng(0))
    nouns = [t.removeprefix("a photo of a ").removesuffix(".") for t in texts]
    assert len(nouns) == len(set(nouns)) and 1 <= len(nouns) <= 3  # 2 from "a", "cat" from "c"
    assert all(n in {"cat", "lawn", "sky", "dog"} for n in nouns)
    assert targets.shape == (3, len(nouns)) and not targets[1].any()
    for u, n in enumerate(nouns):
        assert targets[0, u] and targets[2, u] == (n == "cat")
    empty_texts, empty = noun_prompts(samples[1:2], 2, "{}", np.random.default_rng(0))
    assert empty_texts == [] and empty.shape == (1, 0)


def test_noun_loss_adds_to_objective_and_reaches_the_text_tower():
    torch.manual_seed(0)
    images, labels, captions = _toy_batch()
    m = SSeg(_micro_config()).eval()
    tokens = m.tokenize(captions)
    b = images.shape[0]
    noun_tokens = m.tokenize(["a photo of a zero.", "a photo of a one."])
    targets = torch.zeros(b, 2, dtype=torch.bool)
    targets[0, 0] = targets[1 % b, 1] = True
    base = SSegObjective(m, SSegLossConfig(num_pseudo_masks=4))(images, labels, tokens)
    obj = SSegObjective(m, SSegLossConfig(num_pseudo_masks=4, noun_weight=0.5))
    out = obj(images, labels, tokens, None, noun_tokens, targets)
    assert "noun" not in base and out["noun"] > 0
    assert out["loss"].item() == pytest.approx(base["loss"].item() + 0.5 * out["noun"].item())
    m.zero_grad()
    (out["loss"] - base["loss"].detach()).backward()
    assert m.text.token_embedding.weight.grad.abs().sum() > 0
    empty = obj(images, labels, tokens, None, noun_tokens[:0], targets[:, :0])
    assert empty["noun"].item() == 0.0


def test_channels_last_max_pool_equals_max_pool_values_and_gradients():
    from ovs.models.maskformer import ChannelsLastMaxPool

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 11, 10, generator=g).relu()  # ties at 0, as after a ReLU
    pool = torch.nn.MaxPool2d(3, 2, 1)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = pool(a), ChannelsLastMaxPool(pool)(b)
    assert yb.is_contiguous() and torch.equal(ya, yb)
    w = torch.randn(ya.shape, generator=g)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)
    backbone = Backbone("resnet18", kwargs={"channels": [8, 8, 8, 8]})
    assert isinstance(backbone.net.maxpool, ChannelsLastMaxPool)
    assert not any(isinstance(m, torch.nn.MaxPool2d) and n.endswith("maxpool")
                   for n, m in backbone.named_modules())  # fmt: skip
