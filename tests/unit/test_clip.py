"""The ``clip`` method: open_clip's classes built from the config, its loss against a written-out
symmetric InfoNCE, and its three evaluation rows against the harness interface (shapes,
probabilities, known answers on the trained weights)."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovs.eval.method import SegMethod
from ovs.methods.clip import SPEC
from ovs.methods.clip.adapters import maskclip, pm_clip, seg_method
from ovs.methods.clip.config import ClipConfig, paper
from ovs.methods.clip.model import build_clip, build_model, tokenizer
from ovs.methods.clip.objective import ClipObjective
from ovs.methods.spec import RowOptions
from ovs.pseudo_masks.masker import PseudoMaskConfig

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def test_build_clip_is_open_clip_seeded_and_tokenized() -> None:
    cfg = ClipConfig()
    a, b = build_clip(cfg, 3), build_clip(cfg, 3)
    assert type(a) is open_clip.CLIP
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    assert not torch.equal(build_clip(cfg, 4).visual.proj, a.visual.proj)
    tokens = tokenizer(cfg)(["a red boat", "sky"])
    assert tokens.shape == (2, cfg.text.context_length) and tokens.dtype == torch.int64
    assert a.logit_scale.exp().item() == pytest.approx(1 / cfg.init_temperature)
    assert SPEC.is_trainable(cfg) and not SPEC.is_trainable(paper())


def test_config_validation_names_the_key() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        ClipConfig(vision=ClipConfig().vision.__class__(image_size=60, patch_size=8)).validate()
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipConfig(model="ViT-Nope-1").validate()
    with pytest.raises(ValueError, match="local checkpoint"):
        build_clip(ClipConfig(pretrained="openai"), 0)


def _reference_infonce(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    """Symmetric InfoNCE written out: mean over pairs of -log softmax, both directions, halved."""
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        row = [scale * float(img[i] @ txt[j]) for j in range(n)]
        col = [scale * float(txt[i] @ img[j]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    return total / (2 * n)


def test_objective_is_symmetric_infonce() -> None:
    model = build_model(ClipConfig(), 0)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 64, 64, generator=g)
    tokens = model.tokenize(["a cat", "a dog on grass", "sky", "a red boat", "a tree"])
    out = ClipObjective(model)(images, None, tokens)
    with torch.no_grad():
        img = F.normalize(model.clip.encode_image((images - model.mean) / model.std), dim=-1)
        txt = F.normalize(model.clip.encode_text(tokens), dim=-1)
        ref = _reference_infonce(img, txt, 1 / 0.07)
    assert out["loss"].item() == pytest.approx(ref, rel=1e-5)
    out["loss"].backward()
    assert model.clip.logit_scale.grad is not None


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("row", ["clip", "maskclip", "pm_clip"])
def test_rows_meet_the_interface(row: str) -> None:
    model = build_model(ClipConfig(), 0)
    options = RowOptions(PseudoMaskConfig(image_size=32, k=4))
    method = seg_method(model, CPU) if row == "clip" else SPEC.rows[row](model, CPU, options)
    assert isinstance(method, SegMethod)
    texts = ["cat", "dog", "sky"]
    emb = method.text_embeddings(texts)
    with torch.no_grad():  # the trained text tower itself
        want = F.normalize(model.clip.encode_text(model.tokenize(texts)), dim=-1)
    torch.testing.assert_close(emb, want)
    probs = method.dense_probs(_images(), emb)
    assert probs.shape == (2, 3, 40, 56)
    assert probs.min() >= 0
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 40, 56))


@pytest.mark.parametrize("mode", ["clip", "maskclip"])
def test_dense_rows_run_on_the_trained_weights(mode: str) -> None:
    """Known answer: in ``clip`` mode the class token at the native size is the model's own
    image embedding; MaskCLIP's last block is the value path of the same weights."""
    model = build_model(ClipConfig(), 5)
    method = seg_method(model, CPU) if mode == "clip" else maskclip(model, CPU, RowOptions())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    tokens = method.encode_tokens(x)  # [B, 1 + 64, E]
    if mode == "clip":
        with torch.no_grad():
            torch.testing.assert_close(F.normalize(tokens[:, 0], dim=-1), model(x))
    else:
        v = model.clip.visual
        with torch.no_grad():
            h = v.ln_pre(
                torch.cat(
                    [
                        v.class_embedding.expand(2, 1, -1),
                        v.conv1((x - model.mean) / model.std).flatten(2).transpose(1, 2),
                    ],
                    1,
                )
                + v.positional_embedding
            )
            blocks = list(v.transformer.resblocks)
            for blk in blocks[:-1]:
                h = blk(h)
            attn = blocks[-1].attn
            w = attn.embed_dim
            val = F.linear(
                blocks[-1].ln_1(h), attn.in_proj_weight[2 * w :], attn.in_proj_bias[2 * w :]
            )
            want = v.ln_post(attn.out_proj(val)) @ v.proj
        torch.testing.assert_close(tokens, want)


def test_pseudo_mask_clip_paints_each_segment_with_its_masked_image_class() -> None:
    """Known answer: a left/right two-colour image, pixel K-means with k=2 gives the halves; the
    'names' are CLIP's embeddings of the two masked images, so each half gets its own."""
    model = build_model(ClipConfig(), 0)
    image = torch.zeros(1, 3, 64, 64)
    image[:, 0, :, :32] = 0.9  # red left half
    image[:, 2, :, 32:] = 0.9  # blue right half
    method = pm_clip(model, CPU, RowOptions(PseudoMaskConfig(image_size=32, k=2)))
    seg = method.segments(image)[0]
    assert len(torch.unique(seg[:, :32])) == 1 and len(torch.unique(seg[:, 32:])) == 1
    assert seg[0, 0] != seg[0, 63]
    left, right = image.clone(), image.clone()
    left[..., 32:], right[..., :32] = 0, 0
    with torch.no_grad():
        names = model(torch.cat([left, right]))  # [2, E]
    probs = method.dense_probs(image, names)[0]  # [2, 64, 64]
    label = probs.argmax(0).numpy()
    assert (label[:, :32] == 0).all() and (label[:, 32:] == 1).all()
    np.testing.assert_allclose(probs[:, :, :32].std(dim=(1, 2)).numpy(), 0, atol=1e-6)
