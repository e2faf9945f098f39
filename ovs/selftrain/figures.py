"""The pictures of S-Seg+: side-by-side panel grids of images, predictions and pseudo-labels.

``overlay_grid``: held-out images | S-Seg | S-Seg+ | ground truth, with a class legend.
``label_examples``: target images | pseudo-label after the confidence rule | ground truth.
All panels are ``uint8[H, W, 3]``; the grids are ``uint8`` RGB arrays ready for a PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def panel_grid(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Rows of equally sized ``uint8[H, W, 3]`` panels side by side, rows stacked, white gaps."""
    lines = []
    for panels in rows:
        sep = np.full((panels[0].shape[0], gap, 3), 255, np.uint8)
        parts = [x for p in panels for x in (p, sep)][:-1]
        lines.append(np.concatenate(parts, axis=1))
    width = max(line.shape[1] for line in lines)
    out = []
    for line in lines:
        out += [line, np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def overlay_grid(rows: list, names: list[str]) -> np.ndarray:
    """``rows`` of (image, S-Seg labels, S-Seg+ labels, GT labels) -> image | S-Seg | S-Seg+ |
    ground truth panels, with a legend of the class ``names``."""
    from ovs.eval.visualize import colorize, legend, with_legend

    grid = panel_grid(
        [[image, colorize(sseg), colorize(plus), colorize(gt)] for image, sseg, plus, gt in rows]
    )
    return with_legend(grid, legend(names))


def label_examples(files: list[Path], thresholds: np.ndarray, n: int = 8) -> np.ndarray | None:
    """Up to ``n`` ok images of the first pseudo-label shard: target image | pseudo-label after
    the confidence rule (ignored pixels show the image) | ground truth (grey when the target
    has none). None when the shard has no ok image."""
    import pyarrow.parquet as pq

    from ovs.codecs import decode_label_png, read_image
    from ovs.eval.visualize import colorize, overlay
    from ovs.selftrain.labeler import STATUS_OK
    from ovs.selftrain.pseudo_labels import apply_confidence_rule

    rows: list[list[np.ndarray]] = []
    for f in files[:1]:
        for r in pq.read_table(f).slice(0, 4 * n).to_pylist():
            if r["status"] != STATUS_OK or len(rows) >= n:
                continue
            image = read_image(r["image_path"])
            ruled = apply_confidence_rule(
                decode_label_png(r["label_png"]), decode_label_png(r["conf_png"]), thresholds
            )
            gt = (
                colorize(decode_label_png(r["gt_png"])) if r["gt_png"] else np.full_like(image, 128)
            )
            rows.append([image, overlay(image, ruled, alpha=1.0), gt])
    return panel_grid(rows) if rows else None
