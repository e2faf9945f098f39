"""Segment your own images with any class names.

    python -m tools.segment IMAGE... --classes "cat,dog,grass" --method maskclip --out DIR
    python -m tools.segment IMAGE... --classes "cat,dog" --checkpoint PATH|WORKDIR|RUN_ID --out DIR

``--checkpoint``: a trained method's checkpoint file (:mod:`ovs.methods`; the file names its
method), a directory holding one (a pipeline ``workdir``:
its newest ``latest.pt``), or an MLflow run id: the ``train`` stage run (its ``model``
artifact), a skipped stage run (followed to the run that made the output) or a pipeline run
(its newest child run with a ``model`` artifact), looked up at ``--tracking-uri`` (default
``$MLFLOW_TRACKING_URI`` or ``sqlite:///<repo>/mlflow.db``).

``--classes``: comma-separated; synonyms of one class joined with ``|``
(``"tv|television,sofa|couch"``). ``--bg-threshold T`` adds a "background" class 0 that
takes every pixel whose best class probability is below T (classes are then 1..N).

Per image ``<stem>``: ``DIR/<stem>_overlay.png`` (overlay + legend) and
``DIR/<stem>_label.png`` (uint8 class ids). An image whose longer side exceeds ``--max-side``
(default 2048) is decoded at a JPEG DCT scale and resized to it first, and both files are written
at that size: working memory is bounded by the bound, not by the photo (an 8000x6000 JPEG costs
what a 2048x1536 one does). Exit code 0 when every image was written,
1 when some image could not be read (it is reported and skipped), 2 for bad arguments (an
empty class list, missing image files, a checkpoint or run id that does not exist or is not a
method's checkpoint, an unknown protocol, an output directory that cannot be written: one
``error:`` line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ovs.codecs import png_bytes, read_image_bounded
from ovs.eval.method import MethodRef, is_run_id, load_method
from ovs.eval.protocol import build_classifier, get_protocol, predict_label
from ovs.eval.visualize import legend, make_palette, overlay, with_legend
from ovs.io import atomic_write_bytes
from pipelines.tracking import default_tracking_uri
from tools import cli
from tools.cli import UsageError

REPO_ROOT = Path(__file__).resolve().parents[1]
# The working resolution bound. The protocols classify at a short side of 448 (mask_free) and
# upsample; past ~4x that a label map holds no more detail, while an 8000x6000 photo decoded,
# converted to float and upsampled per class costs gigabytes. Larger images are decoded at a
# JPEG DCT scale and resized to this longer side; their label and overlay are written at it.
MAX_SIDE = 2048


def parse_classes(text: str) -> list[list[str]]:
    """``"a|b,c"`` → ``[["a", "b"], ["c"]]``; empty names dropped."""
    classes = []
    for item in text.split(","):
        names = [n.strip() for n in item.split("|") if n.strip()]
        if names:
            classes.append(names)
    return classes


def checkpoint_from_run(run_id: str, tracking_uri: str) -> Path:
    """Local directory of the ``model`` artifact of an MLflow run (see module docstring).

    Raises ``ValueError`` when the run does not exist or neither it nor its children logged a
    model.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import TAG_SOURCE_RUN

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[10:]).is_file():
        raise ValueError(f"MLflow run {run_id}: no MLflow database at {tracking_uri}")
    client = MlflowClient(tracking_uri)

    def with_model(rid: str) -> str | None:
        run = client.get_run(rid)
        rid = run.data.tags.get(TAG_SOURCE_RUN) or rid  # a skipped stage: the run that made it
        return rid if any(a.path == "model" for a in client.list_artifacts(rid)) else None

    try:
        run = client.get_run(run_id)
        found = with_model(run_id)
        if found is None:  # a pipeline run: its stage runs, newest first
            children = client.search_runs(
                [run.info.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'",
                order_by=["attributes.start_time DESC"],
            )
            found = next((r for c in children if (r := with_model(c.info.run_id))), None)
        if found is None:
            raise ValueError(f"MLflow run {run_id} (at {tracking_uri}) has no 'model' artifact")
        local = mlflow.artifacts.download_artifacts(
            run_id=found, artifact_path="model", tracking_uri=tracking_uri
        )
    except MlflowException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"MLflow run {run_id} at {tracking_uri}: {first}") from None
    return Path(local)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.segment", description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--classes", required=True, help='e.g. "cat,dog,grass" ("tv|television")')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="trained checkpoint file, pipeline workdir or run id")
    src.add_argument("--method", choices=("clip", "maskclip"), help="training-free baseline")
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name ('tiny': debug)")
    p.add_argument("--pretrained", default="openai", help="open_clip tag; 'none' = random")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--protocol", default="mask_free", help="mask_free | training_free | tiny")
    p.add_argument("--templates", default=None, help="override: single | imagenet80")
    p.add_argument("--bg-threshold", type=float, default=None, help="add a background class")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tracking-uri", default=None, help="MLflow store for a run id --checkpoint")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument(
        "--max-side",
        type=int,
        default=MAX_SIDE,
        help=f"longer side an image is scaled down to before segmenting (default {MAX_SIDE}; "
        "0 = as stored)",
    )
    return p


def _check_out(out: Path) -> None:
    """``out`` exists as a writable directory or can be created (nothing is created here)."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {probe} is not writable")


def main(argv: list[str] | None = None) -> int:
    return cli.run(_run, build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    classes = parse_classes(args.classes)
    if not classes:
        raise UsageError("--classes is empty: give at least one class name, e.g. 'cat,dog'")
    if args.max_side < 0:
        raise UsageError(f"--max-side must be >= 0 (0 = as stored), got {args.max_side}")
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise UsageError(f"image file(s) not found: {', '.join(missing)}")
    _check_out(args.out)
    try:
        protocol = get_protocol(args.protocol)
    except (KeyError, ValueError) as e:
        raise UsageError(f"--protocol: {e.args[0] if e.args else e}") from None
    protocol.names = "synonyms"  # user classes: every given name, max over synonyms
    if args.templates:
        protocol.templates = args.templates
    has_bg = args.bg_threshold is not None
    if has_bg:
        classes = [["background"], *classes]
        protocol.background_text = False
    pretrained = None if str(args.pretrained).lower() in ("none", "") else args.pretrained
    try:
        checkpoint = args.checkpoint
        if checkpoint and not Path(checkpoint).exists() and is_run_id(checkpoint):
            uri = args.tracking_uri or default_tracking_uri(REPO_ROOT)
            checkpoint = str(checkpoint_from_run(checkpoint, uri))
        spec = MethodRef(args.method, checkpoint, args.model, pretrained, args.device)
        method = load_method(spec)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    classifier = build_classifier(method, classes, has_bg, protocol, "", args.bg_threshold)
    display = [c[0] for c in classes]
    palette = make_palette(max(len(display), 2))
    legend_img = legend(display, palette)
    failures, seen = 0, set[str]()
    for path in args.images:
        stem = path.stem if path.stem not in seen else f"{path.stem}_{len(seen)}"
        seen.add(stem)
        try:
            image, stored = read_image_bounded(path, args.max_side or None)
        except OSError as e:
            print(f"error: cannot read image {path}: {e}", file=sys.stderr)
            failures += 1
            continue
        label = predict_label(method, image, classifier, protocol)
        picture = with_legend(overlay(image, label, palette, args.alpha), legend_img)
        atomic_write_bytes(args.out / f"{stem}_overlay.png", png_bytes(picture))
        atomic_write_bytes(args.out / f"{stem}_label.png", png_bytes(label))
        scaled = (
            ""
            if image.shape[:2] == stored
            else (
                f" (scaled from {stored[1]}x{stored[0]} to {image.shape[1]}x{image.shape[0]}: --max-side)"
            )
        )
        print(f"{path} -> {args.out / (stem + '_overlay.png')}{scaled}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
