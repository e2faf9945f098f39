import numpy as np
import torch

from ovs.data.augment import AugmentConfig, augment_pair, resized_crop, sample_crop


def test_sample_crop_bounds_and_constraints():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = sample_crop(48, 80, (0.2, 0.9), (0.5, 2.0), rng)
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 80
        assert 0.5 - 0.1 <= w / h <= 2.0 + 0.1
        assert 0.2 * 48 * 80 * 0.8 <= h * w <= 0.9 * 48 * 80 * 1.2
    # impossible area -> centre-crop fallback with the ratio clamped
    top, left, h, w = sample_crop(10, 100, (1.0, 1.0), (1.0, 1.0), np.random.default_rng(0))
    assert (h, w) == (10, 10) and (top, left) == (0, 45)


def test_seeded_and_varied():
    img = torch.rand(3, 32, 32)
    lab = torch.randint(0, 8, (32, 32))
    cfg = AugmentConfig(size=16)
    a = augment_pair(img, lab, cfg, np.random.default_rng(7))
    b = augment_pair(img, lab, cfg, np.random.default_rng(7))
    c = augment_pair(img, lab, cfg, np.random.default_rng(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (3, 16, 16) and a[1].shape == (16, 16) and a[1].dtype == lab.dtype


def test_full_crop_and_flip_is_exact():
    img = torch.rand(3, 20, 20)
    lab = torch.randint(0, 5, (20, 20), dtype=torch.uint8)
    cfg = AugmentConfig(size=20, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)
    out_img, out_lab = augment_pair(img, lab, cfg, np.random.default_rng(0))
    torch.testing.assert_close(out_img, img.flip(-1))
    assert torch.equal(out_lab, lab.flip(-1))
    cfg.hflip = 0.0
    out_img, out_lab = augment_pair((img * 255).to(torch.uint8), lab, cfg, np.random.default_rng(0))
    torch.testing.assert_close(out_img, (img * 255).to(torch.uint8).float() / 255)
    assert torch.equal(out_lab, lab)


def _coordinate_image(h: int, w: int) -> torch.Tensor:
    """Channels 0/1 are the x/y pixel-centre coordinates in [0,1] (linear ramps survive
    bilinear resizing), channel 2 is constant."""
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    return torch.stack([xs[None].expand(h, w), ys[:, None].expand(h, w), torch.full((h, w), 0.5)])


def test_image_and_label_get_the_same_geometry():
    """Label = 8x8 block id of the pixel (given at the coarse 8x8 grid, as pseudo-masks are);
    after augmentation the block id read from the image's coordinate channels must agree with
    the label almost everywhere (only pixels near block borders may differ)."""
    h = w = 64
    img = _coordinate_image(h, w)
    grid = torch.arange(64, dtype=torch.uint8).view(8, 8)  # coarse label map
    cfg = AugmentConfig(size=32, scale=(0.2, 1.0))
    rng = np.random.default_rng(3)
    flips = 0
    for _ in range(20):
        out, lab = augment_pair(img, grid, cfg, rng)
        bx = (out[0] * 8).floor().clamp(0, 7).long()
        by = (out[1] * 8).floor().clamp(0, 7).long()
        agree = ((by * 8 + bx) == lab.long()).float().mean().item()
        assert agree > 0.85, agree
        flips += int(out[0, 0, 0] > out[0, 0, -1])
    assert 0 < flips < 20  # both flipped and unflipped samples were checked


def test_resized_crop_nearest_labels_keep_ids():
    lab = torch.randint(0, 3, (10, 10)) * 7
    img = torch.rand(3, 10, 10)
    _, out = resized_crop(img, lab, (2, 1, 5, 7), 23)
    assert set(out.unique().tolist()) <= {0, 7, 14}
