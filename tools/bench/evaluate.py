"""Benchmark: images/s of sliding-window evaluation (one process, no Ray).

    python -m tools.bench evaluate [--method maskclip|clip|sseg] [--model tiny|ViT-B-16|paper]
                                 [--checkpoint PATH] [--protocol tiny|mask_free]
                                 [--images 8] [--height 64 --width 96] [--device cpu]

Runs ``predict_label`` + confusion accumulation on random images against the VOC-21 class
list (background thresholded), after one warm-up image. Methods: a random-init open_clip
baseline (``--model`` an open_clip name or ``tiny``), or a trained method (``sseg``, through
its spec in :data:`ovs.methods.METHODS`): a checkpoint, else random
init of its tiny (``--model tiny``) or paper (``--model paper``) flavour. Prints a JSON
line last.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ovs.eval.baselines import build_clip_baseline
from ovs.eval.metrics import confusion_matrix
from ovs.eval.names import load_class_names
from ovs.eval.protocol import (
    build_classifier,
    get_protocol,
    predict_label,
    resize_short_side,
    window_boxes,
)


def build_method(name: str, model: str, checkpoint: str | None, device: str):
    """The benchmarked :class:`~ovs.eval.method.SegMethod` (random weights unless a
    checkpoint is given)."""
    from ovs.eval.method import load_trained, resolve_checkpoint
    from ovs.methods import METHODS

    if name not in METHODS:
        return build_clip_baseline(name, model, None, device)
    if checkpoint:
        return load_trained(resolve_checkpoint(checkpoint), device)
    spec = METHODS[name]
    if model not in spec.flavors:
        raise SystemExit(f"--method {name}: --model must be one of {sorted(spec.flavors)}")
    return spec.seg_method(spec.build_model(spec.flavors[model](), 0, None), torch.device(device))


def run(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print and return the result dict."""
    p = argparse.ArgumentParser(prog="python -m tools.bench evaluate")
    p.add_argument("--model", default="tiny")
    p.add_argument("--method", default="maskclip", choices=("clip", "maskclip", "sseg"))
    p.add_argument("--checkpoint", default=None, help="S-Seg checkpoint (--method sseg)")
    p.add_argument("--protocol", default="tiny")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    method = build_method(args.method, args.model, args.checkpoint, args.device)
    protocol = get_protocol(args.protocol)
    classes = load_class_names("voc21")
    t0 = time.perf_counter()
    classifier = build_classifier(method, classes, True, protocol, "voc21")
    text_s = time.perf_counter() - t0
    images = rng.integers(0, 256, (args.images + 1, args.height, args.width, 3), dtype=np.uint8)
    labels = rng.integers(0, len(classes), (args.images + 1, args.height, args.width))
    conf = np.zeros((len(classes), len(classes)), dtype=np.int64)

    def step(i: int) -> None:
        nonlocal conf
        pred = predict_label(method, images[i], classifier, protocol)
        conf += confusion_matrix(pred, labels[i], len(classes))

    step(0)  # warm-up (not counted)
    conf[:] = 0
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(1, args.images + 1):
        step(i)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    x = resize_short_side(
        torch.zeros(1, 3, args.height, args.width),
        protocol.short_side,
        protocol.max_long_side,
    )
    rh, rw = int(x.shape[-2]), int(x.shape[-1])
    result = {
        "bench": "evaluate",
        "model": args.model,
        "method": args.method,
        "protocol": protocol.name,
        "device": args.device,
        "image_hw": [args.height, args.width],
        "resized_hw": [rh, rw],
        "windows_per_image": len(window_boxes(rh, rw, protocol.window, protocol.stride)),
        "images": args.images,
        "text_setup_s": round(text_s, 3),
        "seconds": round(dt, 3),
        "img_per_s": round(args.images / dt, 3),
        "pixels_counted": int(conf.sum()),
    }
    print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    main()
