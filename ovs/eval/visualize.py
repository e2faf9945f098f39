"""Pictures of segmentations: palette colouring, overlays, comparison grids, legends, IoU bars,
confusion matrices.

Pure functions: arrays in, ``uint8[H, W, 3]`` arrays or matplotlib ``Figure`` objects out
(built without pyplot, so no global state and no display backend). Saving is the caller's
job (``figure_to_png`` + :func:`ovs.io.atomic_write_bytes`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IGNORE_COLOR = (255, 255, 255)


def make_palette(n: int = 256) -> np.ndarray:
    """``uint8[n, 3]`` PASCAL VOC colour map (bit-interleaved; index 0 is black)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def colorize(label: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """``uint8[H, W]`` ids → ``uint8[H, W, 3]`` colours; 255 (ignore) is white."""
    pal = make_palette(256) if palette is None else np.asarray(palette, dtype=np.uint8)
    if len(pal) < 256:
        pal = np.concatenate([pal, np.zeros((256 - len(pal), 3), np.uint8)])
    out = pal[label.astype(np.uint8)].copy()
    out[label == 255] = IGNORE_COLOR
    return out


def overlay(
    image: np.ndarray,
    label: np.ndarray,
    palette: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend the colourised ``label`` onto ``image`` (both ``[H, W, ...]``); ignore pixels
    keep the image. Returns ``uint8[H, W, 3]``."""
    color = colorize(label, palette).astype(np.float32)
    img = image.astype(np.float32)
    out = (1 - alpha) * img + alpha * color
    out[label == 255] = img[label == 255]
    return out.round().clip(0, 255).astype(np.uint8)


def comparison_grid(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    palette: np.ndarray | None = None,
    gap: int = 4,
    panel_width: int | None = None,
) -> np.ndarray:
    """Rows of (image, prediction, ground truth or None) side by side, stacked.

    Every row is resized (nearest for labels) to ``panel_width`` per panel (default: the first
    row's width; small eval images need ~192+ px to judge a mask by eye).
    Returns ``uint8[H_total, 3*W + 2*gap, 3]``; missing ground truth is a grey panel.
    """
    if not rows:
        raise ValueError("no rows")
    w = panel_width or rows[0][0].shape[1]
    panels_rows = []
    for image, pred, gt in rows:
        h = max(1, round(image.shape[0] * w / image.shape[1]))
        panels = [
            _resize(image, h, w, Image.Resampling.BILINEAR),
            _resize(colorize(pred, palette), h, w),
        ]
        gt_panel = np.full((h, w, 3), 128, np.uint8) if gt is None else colorize(gt, palette)
        panels.append(_resize(gt_panel, h, w))
        sep = np.full((h, gap, 3), 255, np.uint8)
        panels_rows.append(np.concatenate([panels[0], sep, panels[1], sep, panels[2]], axis=1))
        panels_rows.append(np.full((gap, panels_rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(panels_rows[:-1], axis=0)


def _resize(
    a: np.ndarray, h: int, w: int, resample: Image.Resampling = Image.Resampling.NEAREST
) -> np.ndarray:
    if a.shape[:2] == (h, w):
        return a
    return np.asarray(Image.fromarray(a).resize((w, h), resample))


def legend(names: list[str], palette: np.ndarray | None = None, row_h: int = 16) -> np.ndarray:
    """A colour-swatch legend, ``uint8[len(names)*row_h + 4, width, 3]`` on white."""
    pal = make_palette(max(len(names), 1)) if palette is None else palette
    font = ImageFont.load_default()
    text_w = max(
        (ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font) for n in names), default=0
    )
    img = Image.new("RGB", (int(text_w) + row_h + 12, len(names) * row_h + 4), "white")
    draw = ImageDraw.Draw(img)
    for i, name in enumerate(names):
        y = 2 + i * row_h
        draw.rectangle([2, y + 1, row_h - 1, y + row_h - 2], fill=tuple(int(c) for c in pal[i]))
        draw.text((row_h + 4, y + 2), name, fill="black", font=font)
    return np.asarray(img)


def with_legend(picture: np.ndarray, legend_img: np.ndarray) -> np.ndarray:
    """``picture`` with ``legend_img`` to its right (white padding to a common height)."""
    h = max(picture.shape[0], legend_img.shape[0])

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255)

    sep = np.full((h, 4, 3), 255, np.uint8)
    return np.concatenate([pad(picture), sep, pad(legend_img)], axis=1)


def iou_bar_chart(per_class_iou: dict[str, float | None], title: str = ""):
    """Horizontal bar chart of per-class IoU (in %) as a matplotlib ``Figure``.

    Classes with IoU ``None``/NaN (absent) are shown without a bar and marked "n/a".
    """
    from matplotlib.figure import Figure

    names = list(per_class_iou)
    vals = [float("nan") if v is None else 100.0 * float(v) for v in per_class_iou.values()]
    fig = Figure(figsize=(6, max(2.0, 0.22 * len(names) + 1)))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(vals, nan=0.0), color="tab:blue")
    for yi, v in zip(y, vals):
        ax.text(
            0.5 if np.isnan(v) else v + 0.5,
            float(yi),
            "n/a" if np.isnan(v) else f"{v:.1f}",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    finite = [v for v in vals if not np.isnan(v)]
    miou = f"mIoU {np.mean(finite):.1f}" if finite else "mIoU n/a"
    ax.set_title(f"{title}  {miou}".strip())
    fig.tight_layout()
    return fig


def row_normalize(confusion: np.ndarray | list) -> np.ndarray:
    """``M[g, p] / sum_p M[g, p]``: where the pixels of each ground-truth class went (rows of
    absent classes stay 0)."""
    conf = np.asarray(confusion, dtype=np.float64)
    totals = conf.sum(axis=1, keepdims=True)
    return np.divide(conf, totals, out=np.zeros_like(conf), where=totals > 0)


def confusion_chart(confusion: np.ndarray | list, names: list[str], title: str = ""):
    """Heat map of the row-normalised confusion matrix (ground truth down, prediction across)
    as a matplotlib ``Figure``; cells >= 5% carry their percentage. Shows at a glance which
    classes a model mixes up, e.g. one text that absorbs every stuff region."""
    from matplotlib.figure import Figure

    frac = row_normalize(confusion)
    if frac.shape != (len(names), len(names)):
        raise ValueError(f"{len(names)} names for a {frac.shape} confusion matrix")
    side = max(3.0, 0.32 * len(names) + 1.5)
    fig = Figure(figsize=(side + 0.8, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(100 * frac, cmap="Blues", vmin=0, vmax=100)
    for g, p in zip(*np.nonzero(frac >= 0.05)):
        v = 100 * frac[g, p]
        ax.text(p, g, f"{v:.0f}", ha="center", va="center", fontsize=6,
                color="white" if v > 60 else "black")  # fmt: skip
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title or "confusion (% of each ground-truth class)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of class pixels")
    fig.tight_layout()
    return fig


def figure_to_png(fig) -> bytes:
    """PNG bytes of a matplotlib figure (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
