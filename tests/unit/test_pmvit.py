"""The pseudo-mask ViT (``ovs.methods.pmvit``, S-Seg's baseline 2): segment pooling, the image
embedding and the loss against plain loops (explicit softmaxes), the painting of segment
classes, and the adapter's test-time segments from the pseudo-mask extractor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovs.methods import METHODS
from ovs.methods.pmvit.model import segment_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**model_overrides):
    spec = METHODS["pmvit"]
    cfg = spec.config()
    for k, v in model_overrides.items():
        setattr(cfg.model, k, v)
    cfg.model.test_masks.k = cfg.model.num_segments
    return spec, cfg, spec.build_model(cfg, 0, None)


def test_segment_weights_match_loop() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 16, 16), generator=g)  # id 3 >= k: ignored
    got = segment_weights(labels, 3, (16, 16), 4)
    assert got.shape == (2, 3, 16)
    for b in range(2):
        for k in range(3):
            for t in range(16):
                r, c = divmod(t, 4)
                patch = labels[b, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
                assert got[b, k, t].item() == pytest.approx((patch == k).sum().item() / 16)
    # Coarser labels are resized nearest to the input first: one label cell = 2 x 2 pixels.
    coarse = labels[:, ::2, ::2]
    up = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)
    torch.testing.assert_close(
        segment_weights(coarse, 3, (16, 16), 4), segment_weights(up, 3, (16, 16), 4)
    )


@torch.no_grad()
def test_segment_features_and_loss_match_loops() -> None:
    spec, cfg, model = _tiny(num_segments=3)
    model.eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 64, 64, generator=g)
    labels = torch.randint(0, 2, (3, 64, 64), generator=g)  # segment 2 is empty everywhere
    labels[0, :8, :24] = 2  # except in image 0: the top 8 rows of 3 patches
    tokens = model.tokens(images)  # [B, 64, D], 8 x 8 patches of 8 px
    feats, present = model(images, labels)
    assert present.tolist() == [[True, True, True], [True, True, False], [True, True, False]]
    for b in range(3):
        for k in range(3):
            num, den = torch.zeros(tokens.shape[-1]), 0.0
            for t in range(64):
                r, c = divmod(t, 8)
                frac = (labels[b, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] == k).float().mean()
                num, den = num + frac * tokens[b, t], den + float(frac)
            if den == 0:
                assert torch.count_nonzero(feats[b, k]) == 0
                continue
            ref = F.normalize(model.image_proj(num / den), dim=-1)
            torch.testing.assert_close(feats[b, k], ref, rtol=1e-4, atol=1e-5)
    # Image embedding: the normalised mean of the present segments only.
    img = []
    for b in range(3):
        rows = [feats[b, k] for k in range(3) if present[b, k]]
        img.append(F.normalize(sum(rows) / len(rows), dim=0).tolist())
    texts = ["a red boat", "a cat on grass", "a blue car"]
    txt = model.encode_text(model.tokenize(texts)).tolist()
    s = model.logit_scale().item()
    sims = [[s * sum(a * c for a, c in zip(img[i], txt[j])) for j in range(3)] for i in range(3)]
    ref = sum(-sims[i][i] + math.log(sum(math.exp(x) for x in sims[i])) for i in range(3)) / 3
    ref += (
        sum(-sims[j][j] + math.log(sum(math.exp(sims[i][j]) for i in range(3))) for j in range(3))
        / 3
    )
    out = spec.objective(model, cfg)(images, labels, model.tokenize(texts))
    assert out["loss"].item() == pytest.approx(ref, rel=1e-5)
    assert out["segments"].item() == pytest.approx(7 / 3)


@torch.no_grad()
def test_segment_probs_paint_each_segment_class() -> None:
    _, _, model = _tiny()
    model.eval()
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 36, 52, generator=g)  # not multiples of the 8-px patch
    labels = torch.randint(0, 8, (2, 10, 14), generator=g)
    text = model.text_embeddings(["cat", "dog", "grass", "sky"])
    probs = model.segment_probs(images, labels, text)
    assert probs.shape == (2, 4, 36, 52)
    # The ViT sees the image resized to the next multiples of the patch (40 x 56).
    resized = F.interpolate(images, size=(40, 56), mode="bilinear", align_corners=False)
    feats, _ = model(resized, labels)
    s = model.logit_scale().item()
    for b, y, xx in ((0, 0, 0), (0, 35, 51), (1, 17, 30)):
        k = int(labels[b, y * 10 // 36, xx * 14 // 52])  # nearest: floor(index * in / out)
        logits = [s * float(feats[b, k] @ text[m]) for m in range(4)]
        z = sum(math.exp(v) for v in logits)
        for m in range(4):
            assert probs[b, m, y, xx].item() == pytest.approx(math.exp(logits[m]) / z, rel=1e-4)


def test_adapter_segments_come_from_the_pseudo_mask_extractor() -> None:
    spec, _, model = _tiny()
    method = spec.seg_method(model, torch.device("cpu"))
    images = torch.rand(2, 3, 64, 64)
    segs = method.segments(images)
    assert segs.shape == (2, 64, 64) and int(segs.max()) < model.cfg.num_segments
    probs = method.dense_probs(images, method.text_embeddings(["cat", "dog"]))
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 64, 64), atol=1e-5)
    for b in range(2):  # one class distribution per extractor segment
        for k in segs[b].unique():
            inside = probs[b][:, segs[b] == k]
            assert torch.allclose(inside, inside[:, :1].expand_as(inside), atol=1e-6)
