"""Feature extractors by name: shapes, grids, prefix tokens, weight-loading rules (no network)."""

import pytest
import torch

from ovs.pseudo_masks.features import (
    EXTRACTORS,
    TIMM_NAMES,
    ExtractorArgs,
    PixelFeatures,
    ViTFeatures,
    WeightsUnavailableError,
    build_extractor,
)

RANDOM = ExtractorArgs(random_init=True, image_size=32)


def test_table_names():
    assert set(EXTRACTORS) == {"pixels", *TIMM_NAMES}
    assert TIMM_NAMES["dino_vits8"] == "vit_small_patch8_224.dino"  # the paper's backbone
    with pytest.raises(KeyError, match="unknown feature extractor"):
        build_extractor("dino_vitb8")


def test_pixels_colour_and_position():
    ext = build_extractor("pixels", ExtractorArgs(pixel_stride=2, pixel_pos_weight=0.5))
    assert isinstance(ext, PixelFeatures)
    img = torch.zeros(2, 3, 8, 6)
    img[:, 0, :4] = 1.0  # top half red
    feats, (h, w) = ext(img)
    assert (h, w) == (4, 3) and feats.shape == (2, 12, 5)
    grid = feats.view(2, 4, 3, 5)
    assert torch.all(grid[:, :2, :, 0] == 1.0) and torch.all(grid[:, 2:, :, 0] == 0.0)
    assert torch.allclose(grid[0, :, 0, 3], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]) * 0.5)  # y
    assert torch.allclose(grid[0, 0, :, 4], torch.tensor([0.0, 0.5, 1.0]) * 0.5)  # x


@pytest.mark.parametrize(
    ("name", "size", "grid", "prefix"),
    [
        ("dino_vits8", 32, (4, 4), 1),
        ("dino_vits16", 32, (2, 2), 1),
        ("dinov2_vits14", 28, (2, 2), 1),
        ("dinov2_vits14_reg", 28, (2, 2), 5),
    ],
)
def test_vit_tokens_without_prefix(name, size, grid, prefix):
    torch.manual_seed(0)
    ext = build_extractor(name, ExtractorArgs(random_init=True, image_size=size))
    assert isinstance(ext, ViTFeatures) and ext.num_prefix_tokens == prefix
    assert all(blk.attn.fused_attn for blk in ext.model.blocks)  # SDPA
    x = torch.rand(2, 3, size, size)
    with torch.inference_mode():
        feats, hw = ext(x)
        full = ext.model.forward_features((x - ext.mean) / ext.std)
    assert hw == grid
    assert feats.shape == (2, grid[0] * grid[1], 384)
    assert torch.equal(feats, full[:, prefix:])


def test_random_weights_need_explicit_opt_in():
    with pytest.raises(ValueError, match="random_init"):
        build_extractor("dino_vits16", ExtractorArgs(pretrained=False, image_size=32))


def test_offline_hub_gives_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-ovs-test-cache")
    with pytest.raises(WeightsUnavailableError, match="checkpoint: PATH"):
        build_extractor("dino_vits16", ExtractorArgs(image_size=32))


def test_checkpoint_loading(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_extractor("dino_vits16", ExtractorArgs(checkpoint=str(tmp_path / "missing.pth")))
    torch.manual_seed(1)
    src = build_extractor("dino_vits16", ExtractorArgs(random_init=True, image_size=224))
    path = tmp_path / "dino_vits16.pth"
    torch.save(src.model.state_dict(), path)  # 14x14 position grid, as the released weights
    # Loading at another image size resamples the position embeddings.
    for size in (224, 32):
        loaded = build_extractor(
            "dino_vits16", ExtractorArgs(checkpoint=str(path), image_size=size)
        )
        x = torch.rand(1, 3, size, size)
        with torch.inference_mode():
            a, _ = src(x)
            b, _ = loaded(x)
        assert torch.allclose(a, b, atol=1e-4) if size == 224 else a.shape == b.shape
    assert torch.equal(loaded.model.blocks[3].mlp.fc1.weight, src.model.blocks[3].mlp.fc1.weight)


def test_random_init_is_seeded():
    a = build_extractor("dino_vits16", ExtractorArgs(random_init=True, image_size=32, seed=3))
    b = build_extractor("dino_vits16", ExtractorArgs(random_init=True, image_size=32, seed=3))
    c = build_extractor("dino_vits16", ExtractorArgs(random_init=True, image_size=32, seed=4))
    wa, wb, wc = (e.model.blocks[0].attn.qkv.weight for e in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
