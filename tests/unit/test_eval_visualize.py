"""Palette, overlays, grids, legend and the IoU bar chart."""

import numpy as np
import pytest
from PIL import Image

from ovs.codecs import png_bytes
from ovs.eval.visualize import (
    colorize,
    comparison_grid,
    confusion_chart,
    figure_to_png,
    iou_bar_chart,
    legend,
    make_palette,
    overlay,
    row_normalize,
    with_legend,
)


def test_palette_is_voc_colormap():
    pal = make_palette(256)
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]  # VOC "person"
    assert len({tuple(c) for c in pal}) == 256


def test_colorize_and_overlay():
    label = np.array([[0, 1], [255, 2]], np.uint8)
    col = colorize(label)
    assert col.shape == (2, 2, 3) and col[1, 0].tolist() == [255, 255, 255]
    assert col[0, 1].tolist() == [128, 0, 0]
    img = np.full((2, 2, 3), 100, np.uint8)
    ov = overlay(img, label, alpha=0.5)
    assert ov[1, 0].tolist() == [100, 100, 100]  # ignore keeps the image
    assert ov[0, 1].tolist() == [114, 50, 50]  # (100 + 128) / 2, (100 + 0) / 2
    assert (overlay(img, label, alpha=0.0) == img).all()


def test_comparison_grid_shapes():
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 256, (10, 20, 3), dtype=np.uint8), np.zeros((10, 20), np.uint8), None)
    b = (
        rng.integers(0, 256, (20, 10, 3), dtype=np.uint8),
        np.ones((20, 10), np.uint8),
        np.full((20, 10), 255, np.uint8),
    )
    grid = comparison_grid([a, b], gap=2)
    assert grid.dtype == np.uint8 and grid.shape == (10 + 2 + 40, 3 * 20 + 4, 3)
    assert grid[0, 2 * 20 + 4].tolist() == [128, 128, 128]  # missing GT → grey
    big = comparison_grid([a, b], gap=2, panel_width=200)  # legible panels for tiny images
    assert big.shape == (100 + 2 + 400, 3 * 200 + 4, 3)
    # labels are upscaled nearest: the prediction panel of row b is exactly class 1's colour
    assert (big[102:, 202:402] == colorize(np.ones((1, 1), np.uint8))[0, 0]).all()


def test_legend_and_pngs(tmp_path):
    leg = legend(["cat", "dog", "a much longer class name"])
    assert leg.ndim == 3 and leg.shape[0] >= 3 * 16
    pic = with_legend(np.zeros((8, 8, 3), np.uint8), leg)
    assert pic.shape[0] == leg.shape[0] and pic.shape[1] == 8 + 4 + leg.shape[1]
    (tmp_path / "x.png").write_bytes(png_bytes(pic))
    assert np.asarray(Image.open(tmp_path / "x.png")).shape == pic.shape


def test_iou_bar_chart(tmp_path):
    fig = iou_bar_chart({"cat": 0.5, "dog": None, "sky": 0.25}, title="world")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "sky"]
    assert [round(p.get_width(), 3) for p in ax.patches] == [50.0, 0.0, 25.0]
    assert "mIoU 37.5" in ax.get_title()
    data = figure_to_png(fig)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_chart_rows_are_where_each_class_went():
    conf = np.array([[6, 2, 0], [0, 0, 0], [1, 1, 8]])
    frac = row_normalize(conf)
    expected = [[6 / 8, 2 / 8, 0], [0, 0, 0], [0.1, 0.1, 0.8]]  # absent class: zero row
    assert np.allclose(frac, expected)
    fig = confusion_chart(conf, ["cat", "dog", "sky"], title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "sky"]
    assert np.allclose(ax.images[0].get_array(), 100 * np.array(expected))
    cells = sorted(t.get_text() for t in ax.texts)  # labelled cells: >= 5%
    assert cells == ["10", "10", "25", "75", "80"]
    assert figure_to_png(fig)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="2 names"):
        confusion_chart(conf, ["cat", "dog"])
