"""The pseudo-mask oracle (S-Seg Table 1) on labelled benchmarks.

    python -m tools.oracle --config conf/cc12m.yaml [--benchmark voc21 ...] [--limit N] [--out DIR]
        [key.sub=value ...]

Each image of a benchmark's eval split is masked with the config's ``pseudo_masks`` settings
(the same :class:`~ovs.pseudo_masks.masker.PseudoMasker` the stage runs: extractor, K, image
size, seeds by image id), every pseudo segment takes its majority ground-truth label, and the
mIoU of those labels over the split is the oracle (:mod:`ovs.pseudo_masks.oracle`; the paper:
78.8 VOC / 66.3 Context for DINO ViT-S/8, 49.5 / 43.3 for K-means on pixels).

Benchmarks are the config's ``evaluate.datasets`` entries (every one by default; ``--benchmark``
picks by name), read in their own layouts (VOC, Context, COCO, ADE: ``ovs.eval.datasets``).
An entry with ``from_stage: world`` is read under the ``world`` stage's output of this config,
which must have run. ``--limit`` caps images per benchmark (default: the entry's
``max_images``, else all). Memory is one batch of images plus a ``[C, C]`` confusion per
benchmark.

Writes ``DIR/oracle.json`` (per benchmark: ``oracle_miou``, ``images``, ``skipped``) and
``DIR/oracle_<name>.png`` (image | pseudo-mask | oracle labels | ground truth); the last stdout
line is the same JSON. Exit code 0, or 2 with one ``error:`` line (unknown benchmark, missing
data, bad config) and nothing written. Unreadable images are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tools import cli
from tools.cli import UsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.oracle", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="experiment config (default: the defaults)")
    p.add_argument("--benchmark", action="append", default=[], help="evaluate.datasets name")
    p.add_argument("--limit", type=int, default=None, help="images per benchmark")
    p.add_argument("--out", default="oracle", help="output directory (default: ./oracle)")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return p


def _benchmarks(cfg: Any, names: list[str]) -> list[tuple[Any, str]]:
    """``[(evaluate.datasets entry, root)]`` of the requested benchmarks, data checked."""
    from ovs.eval.datasets import missing_reason
    from ovs.stage import resolve
    from pipelines.evaluate import dataset_root
    from pipelines.graph import STAGES

    entries = list(cfg.evaluate.datasets)
    known = [d.name for d in entries]
    for n in names:
        if n not in known:
            raise UsageError(f"--benchmark {n}: not among evaluate.datasets {known}")
    chosen = [d for d in entries if not names or d.name in names]
    if not chosen:
        raise UsageError("no benchmark: evaluate.datasets is empty")
    out = []
    for d in chosen:
        world_dir = None
        if d.from_stage == "world":
            world_dir = resolve(STAGES, "world", cfg).out_dir
            if not world_dir.is_dir():
                raise UsageError(
                    f"benchmark {d.name}: from_stage world, but the world stage has not run "
                    f"({world_dir} does not exist): run `python pipelines/full.py "
                    f"pipeline.stages=[world]` with this config first"
                )
        root = dataset_root(d, world_dir)
        why = missing_reason(d.name, root, d.split or None)
        if why is not None:
            raise UsageError(f"benchmark {d.name} (root {root!r}): {why}")
        out.append((d, root))
    return out


def oracle_on(
    dataset: Any, masker: Any, limit: int | None, batch_size: int, figure_rows: int
) -> tuple[dict[str, float], Any]:
    """``({oracle_miou, images, skipped}, figure)`` of ``dataset`` under ``masker``."""
    from ovs.codecs import decode_label_png
    from ovs.pseudo_masks.oracle import (
        oracle_confusion,
        oracle_miou_from_confusion,
        pseudo_mask_figure,
    )

    c = dataset.num_classes
    n = len(dataset) if limit is None else min(limit, len(dataset))
    conf = np.zeros((c, c), dtype=np.int64)
    shown: dict[str, list] = {"images": [], "maps": [], "gts": []}
    done = skipped = 0
    for start in range(0, n, batch_size):
        batch = []
        for i in range(start, min(start + batch_size, n)):
            try:
                batch.append(dataset[i])
            except (OSError, ValueError) as e:
                print(f"skipped {dataset.samples[i].id}: {e}", file=sys.stderr)
                skipped += 1
        if not batch:
            continue
        pngs = masker({"key": [s["id"] for s in batch], "image": [s["image"] for s in batch]})
        for s, png in zip(batch, pngs["label_png"], strict=True):
            if not png:
                skipped += 1
                continue
            pseudo = decode_label_png(bytes(png))
            conf += oracle_confusion(pseudo, s["label"], c)
            done += 1
            if len(shown["images"]) < figure_rows:
                shown["images"].append(s["image"])
                shown["maps"].append(pseudo)
                shown["gts"].append(s["label"])
        print(f"{dataset.name}: {done + skipped}/{n} images", file=sys.stderr, flush=True)
    fig = None
    if shown["images"]:
        fig = pseudo_mask_figure(shown["images"], shown["maps"], shown["gts"], c, figure_rows)
    miou = oracle_miou_from_confusion(conf) if done else float("nan")
    return {"oracle_miou": miou, "images": float(done), "skipped": float(skipped)}, fig


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    from ovs.config import ConfigError
    from pipelines.graph import load_config

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, OSError, ValueError) as e:
        raise UsageError(str(e)) from e
    benchmarks = _benchmarks(cfg, args.benchmark)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: parent directory {out.parent} does not exist")

    from ovs.eval.datasets import build_dataset
    from ovs.io import atomic_write_bytes
    from ovs.pseudo_masks.masker import ImageMasker

    pm = cfg.pseudo_masks
    masker = ImageMasker(pm).masker
    results: dict[str, dict[str, float]] = {}
    figures = {}
    t0 = time.perf_counter()
    for d, root in benchmarks:
        ds = build_dataset(d.name, root, d.split or None)
        limit = args.limit if args.limit is not None else d.max_images
        results[d.name], figures[d.name] = oracle_on(
            ds, masker, limit, max(1, pm.batch_size), pm.figure_images
        )
    out.mkdir(exist_ok=True)
    for name, fig in figures.items():
        if fig is not None:
            import io

            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            atomic_write_bytes(out / f"oracle_{name}.png", buf.getvalue())
    line = {
        "bench": "oracle",
        "extractor": pm.extractor,
        "k": pm.k,
        "image_size": pm.image_size,
        "seconds": round(time.perf_counter() - t0, 1),
        "benchmarks": results,
    }
    atomic_write_bytes(out / "oracle.json", (json.dumps(line, indent=1) + "\n").encode())
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
