"""Segment your own images with any class names.

    python -m ovs.segment IMAGE... --classes "cat,dog,grass" --method maskclip --out DIR
    python -m ovs.segment IMAGE... --classes "cat,dog" --checkpoint PATH --out DIR

``--classes``: comma-separated; synonyms of one class joined with ``|``
(``"tv|television,sofa|couch"``). ``--bg-threshold T`` adds a "background" class 0 that
takes every pixel whose best class probability is below T (classes are then 1..N).

Per image ``<stem>``: ``DIR/<stem>_overlay.png`` (overlay + legend) and
``DIR/<stem>_label.png`` (uint8 class ids). Exit code 0 when every image was written,
1 when some image could not be read (it is reported and skipped), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovs.eval.method import MethodSpec, load_method
from ovs.eval.protocol import build_classifier, get_protocol, predict_label
from ovs.eval.visualize import legend, make_palette, overlay, png_bytes, with_legend
from ovs.io import atomic_write_bytes


def parse_classes(text: str) -> list[list[str]]:
    """``"a|b,c"`` → ``[["a", "b"], ["c"]]``; empty names dropped."""
    classes = []
    for item in text.split(","):
        names = [n.strip() for n in item.split("|") if n.strip()]
        if names:
            classes.append(names)
    return classes


def read_image(path: Path) -> np.ndarray:
    """``uint8[H, W, 3]``; raises ``ValueError`` with the path for unreadable files."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ovs.segment", description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--classes", required=True, help='e.g. "cat,dog,grass" ("tv|television")')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="S-Seg checkpoint file, pipeline workdir or run id")
    src.add_argument("--method", choices=("clip", "maskclip"), help="training-free baseline")
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name ('tiny': debug)")
    p.add_argument("--pretrained", default="openai", help="open_clip tag; 'none' = random")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--protocol", default="mask_free", help="mask_free | training_free | tiny")
    p.add_argument("--templates", default=None, help="override: single | imagenet80")
    p.add_argument("--bg-threshold", type=float, default=None, help="add a background class")
    p.add_argument("--device", default="cpu")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    classes = parse_classes(args.classes)
    if not classes:
        parser.error("--classes is empty: give at least one class name, e.g. 'cat,dog'")
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        parser.error(f"image file(s) not found: {', '.join(missing)}")
    protocol = get_protocol(args.protocol)
    protocol.names = "synonyms"  # user classes: every given name, max over synonyms
    if args.templates:
        protocol.templates = args.templates
    has_bg = args.bg_threshold is not None
    if has_bg:
        classes = [["background"], *classes]
        protocol.background_text = False
    pretrained = None if str(args.pretrained).lower() in ("none", "") else args.pretrained
    spec = MethodSpec(args.method, args.checkpoint, args.model, pretrained, args.device)
    try:
        method = load_method(spec)
    except (FileNotFoundError, ValueError, NotImplementedError) as e:
        parser.error(str(e))
    classifier = build_classifier(method, classes, has_bg, protocol, "", args.bg_threshold)
    display = [c[0] for c in classes]
    palette = make_palette(max(len(display), 2))
    legend_img = legend(display, palette)
    failures, seen = 0, set[str]()
    for path in args.images:
        stem = path.stem if path.stem not in seen else f"{path.stem}_{len(seen)}"
        seen.add(stem)
        try:
            image = read_image(path)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        label = predict_label(method, image, classifier, protocol)
        picture = with_legend(overlay(image, label, palette, args.alpha), legend_img)
        atomic_write_bytes(args.out / f"{stem}_overlay.png", png_bytes(picture))
        atomic_write_bytes(args.out / f"{stem}_label.png", png_bytes(label))
        print(f"{path} -> {args.out / (stem + '_overlay.png')}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
