"""CLIP / MaskCLIP dense baselines on random-init open_clip ViTs."""

import pytest
import torch

from ovs.eval.baselines import build_clip_baseline
from ovs.eval.method import MethodRef, SegMethod, load_method


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    clip = build_clip_baseline("clip", "tiny", None)
    maskclip = build_clip_baseline("maskclip", "tiny", None)
    maskclip.model.load_state_dict(clip.model.state_dict())  # same weights, other head
    return clip, maskclip


@pytest.mark.parametrize("hw", [(64, 64), (40, 56), (45, 50)])
def test_dense_probs_shape_and_normalisation(tiny_pair, hw):
    texts = ["a photo of a cat.", "a photo of a dog.", "grass"]
    for method in tiny_pair:
        assert isinstance(method, SegMethod)
        emb = method.text_embeddings(texts)
        assert emb.shape == (3, 64)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
        probs = method.dense_probs(torch.rand(2, 3, *hw), emb)
        assert probs.shape == (2, 3, *hw)
        assert (probs >= 0).all()
        torch.testing.assert_close(probs.sum(1), torch.ones(2, *hw))


def test_clip_class_token_matches_open_clip(tiny_pair):
    clip, _ = tiny_pair
    x = torch.rand(2, 3, 64, 64)
    ours = clip.encode_tokens(x)[:, 0]
    ref = clip.model.encode_image((x - clip.mean) / clip.std)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_maskclip_is_value_path_of_last_block(tiny_pair):
    clip, maskclip = tiny_pair
    x = torch.rand(1, 3, 64, 64)
    v = clip.model.visual
    captured = {}
    last = v.transformer.resblocks[-1]
    handle = last.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    clip.encode_tokens(x)
    handle.remove()
    tokens_in = captured["x"]  # input of the last block, [1, L, W] (batch first)
    n = tokens_in.shape[1]
    # attention restricted to the diagonal = every token attends only to itself = value path
    diag = torch.full((n, n), float("-inf"))
    diag.fill_diagonal_(0.0)
    y = last.ln_1(tokens_in)
    ref = last.attn(y, y, y, need_weights=False, attn_mask=diag)[0]
    ref = v.ln_post(ref) @ v.proj
    torch.testing.assert_close(maskclip.encode_tokens(x), ref, atol=1e-5, rtol=1e-5)
    # and the two heads really differ
    assert not torch.allclose(clip.encode_tokens(x), ref, atol=1e-3)


def test_logit_scale_override_sharpens():
    torch.manual_seed(1)
    soft = build_clip_baseline("maskclip", "tiny", None, logit_scale=1.0)
    sharp = build_clip_baseline("maskclip", "tiny", None, logit_scale=100.0)
    sharp.model.load_state_dict(soft.model.state_dict())
    emb = soft.text_embeddings(["cat", "dog", "tree", "sky"])
    x = torch.rand(1, 3, 32, 32)
    assert (
        sharp.dense_probs(x, emb).max(1).values.mean()
        > soft.dense_probs(x, emb).max(1).values.mean()
    )


def test_load_method_by_name_and_errors(tmp_path):
    m = load_method(MethodRef(method="clip", model="tiny", pretrained=None))
    assert m.dense_probs(torch.rand(1, 3, 16, 24), m.text_embeddings(["a", "b"])).shape == (
        1,
        2,
        16,
        24,
    )
    with pytest.raises(ValueError):
        load_method(MethodRef())
    with pytest.raises(ValueError):
        load_method(MethodRef(method="nope"))
    with pytest.raises(FileNotFoundError):
        load_method(MethodRef(checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(FileNotFoundError):
        load_method(MethodRef(checkpoint=str(tmp_path)))  # dir without checkpoints
    with pytest.raises(ValueError, match="MLflow run id"):
        load_method(MethodRef(checkpoint="0123456789abcdef0123456789abcdef"))


def test_resolve_checkpoint_in_workdir(tmp_path):
    from ovs.eval.method import resolve_checkpoint

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "step_10.pt").write_bytes(b"x")
    assert resolve_checkpoint(str(tmp_path)).name == "step_10.pt"
    (tmp_path / "ckpt" / "latest.pt").write_bytes(b"x")
    assert resolve_checkpoint(str(tmp_path)).name == "latest.pt"
    assert resolve_checkpoint(str(tmp_path / "ckpt" / "step_10.pt")).name == "step_10.pt"


def test_real_open_clip_architecture_random_weights():
    """The user path: an open_clip model by name (random weights here, no download)."""
    torch.manual_seed(0)
    method = build_clip_baseline("maskclip", "ViT-B-32", pretrained=None)
    emb = method.text_embeddings(["a photo of a cat.", "a photo of a dog."])
    assert emb.shape == (2, 512)
    probs = method.dense_probs(torch.rand(1, 3, 96, 128), emb)
    assert probs.shape == (1, 2, 96, 128)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 96, 128))
