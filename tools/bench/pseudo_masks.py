"""Benchmark of the pseudo-mask stage: batched stage path vs a naive one-image-at-a-time loop.

    python -m tools.bench pseudo_masks [--batch-size 16 --batches 2 --naive-images 4 ...]

Defaults follow the paper's setting: random-init ``dino_vits8`` at 224x224, K = 8. Images are
synthetic-world scenes rendered at 224. Both paths start from decoded uint8 images and use the
same weights:

- stage path (``img_per_s``): ``PseudoMasker`` on batches — the extractor forward in the
  config's runtime (``--runtime``, default ``auto``: oneDNN Graph on CPU, see
  ``ovs.pseudo_masks.runtimes``) and compute dtype (``--autocast``, default ``auto``: bfloat16 where the
  machine runs it natively, float32 elsewhere; the JSON line's ``dtype`` is what ran and
  ``precision`` what the machine supports, :func:`ovs.precision.describe`), batched torch
  K-means, PNG encoding of the label maps;
- stage path from JPEG bytes (``jpeg_img_per_s``): the same, starting from ``--jpeg-size``
  JPEGs decoded and resized in the masker (``decode: device``: TorchCodec, nvJPEG on GPUs);
- naive path (``naive_img_per_s``): per image, a float32 forward of the timm model, then
  scikit-learn ``KMeans(k)`` (k-means++, ``n_init="auto"``) on the L2-normalised tokens.

Timed rounds interleave the two paths, a forward-only pass and a plain GEMM, so that load from
other processes hits all of them alike; each reported rate is total work / total time over the
rounds. ``forward_flops_per_s`` = FLOPs of the extractor forward (counted by torch's
``FlopCounterMode`` with attention in its matmul form) / forward-only time;
``gemm_flops_per_s`` = the faster of two plain matmuls in the forward's compute dtype, a square
one (``--gemm-size``) and one of the ViT MLP's shape ([B*tokens, C] @ [C, 4C]). ``--oracle N``
also reports oracle mIoU of ``pixels`` and of the benchmarked extractor on N world images.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch

from ovs import precision
from ovs.codecs import decode_label_png
from ovs.pseudo_masks.kmeans import kmeans
from ovs.pseudo_masks.masker import (
    AUTOCAST_CHOICES,
    PseudoMaskConfig,
    PseudoMasker,
    cpu_threads,
    image_seed,
)
from ovs.pseudo_masks.oracle import oracle_miou
from ovs.pseudo_masks.runtimes import RUNTIMES

T = TypeVar("T")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.bench pseudo_masks", description=__doc__)
    p.add_argument("--extractor", default="dino_vits8")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=1, help="stage batches per round")
    p.add_argument("--naive-images", type=int, default=4, help="naive images per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--autocast",
        default="auto",
        choices=AUTOCAST_CHOICES,
        help="compute dtype; auto = bfloat16 where native, else float32 (ovs.precision)",
    )
    p.add_argument("--runtime", default="auto", choices=RUNTIMES)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch/sklearn threads (0: default)")
    p.add_argument("--jpeg-size", type=int, default=256, help="side of the encoded JPEGs")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--oracle", type=int, default=0, help="world images for oracle mIoU (0: off)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """(seconds, result) of ``fn()``, with the device synchronised on both ends."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


def _world_images(n: int, size: int, offset: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    from ovs.data.world import WorldConfig, render

    cfg = WorldConfig(image_size=size)
    scenes = [render(cfg, offset + i, "eval") for i in range(n)]
    return np.stack([s[0] for s in scenes]), [s[1] for s in scenes]


def _jpegs(n: int, size: int) -> list[bytes]:
    """n world scenes rendered at ``size`` and JPEG-encoded (quality 90)."""
    import io

    from PIL import Image

    out = []
    for img in _world_images(n, size)[0]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _forward_flops(masker: PseudoMasker, size: int) -> float:
    """FLOPs of one image's extractor forward (attention counted in its matmul form)."""
    from torch.utils.flop_counter import FlopCounterMode

    ext = masker.extractor
    # timm Attention modules: ``fused_attn`` is their flag, not a Module attribute.
    attn: list[Any] = [m for m in ext.modules() if hasattr(m, "fused_attn")]
    for m in attn:
        m.fused_attn = False  # SDPA kernels are not all counted; the math path is
    try:
        x = torch.rand(1, 3, size, size, device=masker.device)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            ext(x)
        return float(counter.get_total_flops())
    finally:
        for m in attn:
            m.fused_attn = True


class _Naive:
    """The straightforward loop: float32 forward of one image, then scikit-learn KMeans."""

    def __init__(self, masker: PseudoMasker, k: int, seed: int) -> None:
        import copy

        ext = copy.deepcopy(masker.extractor).float()
        self.extractor = ext.to(memory_format=torch.contiguous_format)
        self.device = masker.device
        self.k, self.seed = k, seed
        self.metric = masker.metric
        self.sklearn_s = 0.0  # time spent inside KMeans.fit_predict
        self.last_feats: list[np.ndarray] = []

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0).to(self.device)
        with torch.no_grad():
            feats, (h, w) = self.extractor(x)
        feats = feats[0].float()
        if self.metric == "cosine":
            feats = torch.nn.functional.normalize(feats, dim=-1)
        points = feats.cpu().numpy()
        self.last_feats.append(points)
        start = time.perf_counter()
        labels = self.cluster(points, self.seed)
        self.sklearn_s += time.perf_counter() - start
        return labels.reshape(h, w).astype(np.uint8)

    def cluster(self, points: np.ndarray, seed: int) -> np.ndarray:
        from sklearn.cluster import KMeans

        return KMeans(self.k, random_state=seed, n_init="auto").fit_predict(points)


def _oracle(args: argparse.Namespace, base: PseudoMaskConfig) -> dict[str, float]:
    images, gts = _world_images(args.oracle, 64)  # = the default world eval split
    keys = [f"o{i}" for i in range(len(images))]
    out = {}
    for name, cfg in (
        ("pixels", replace(base, extractor="pixels", image_size=64, metric="auto")),
        (args.extractor, base),
    ):
        masker = PseudoMasker(cfg)
        maps = []
        for s in range(0, len(images), cfg.batch_size):
            batch = masker(
                {"key": keys[s : s + cfg.batch_size], "image": images[s : s + cfg.batch_size]}
            )
            maps += [decode_label_png(b) for b in batch["label_png"]]
        out[f"oracle_miou_{name}"] = round(oracle_miou(maps, gts, num_classes=16), 4)
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv or [])
    if args.threads:
        torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    cfg = PseudoMaskConfig(
        extractor=args.extractor,
        random_init=True,
        image_size=args.image_size,
        k=args.k,
        batch_size=args.batch_size,
        autocast=args.autocast,
        runtime=args.runtime,
        device=args.device,
        seed=args.seed,
    )
    torch.manual_seed(args.seed)
    masker = PseudoMasker(cfg)
    device = masker.device
    naive = _Naive(masker, args.k, args.seed)
    images, _ = _world_images(args.batch_size, args.image_size)
    keys = [f"{i:09d}" for i in range(len(images))]
    batch = {"key": keys, "image": images}
    jpeg_masker = PseudoMasker(replace(cfg, decode="device"))
    jpeg_batch = {"key": keys, "jpg": _jpegs(args.batch_size, args.jpeg_size)}
    flops_per_img = _forward_flops(masker, args.image_size)
    dtype = masker.autocast_dtype or torch.float32  # what --autocast resolved to here
    gemm_a = torch.randn(args.gemm_size, args.gemm_size, device=device).to(dtype)
    # The ViT MLP's first GEMM: [batch * tokens, C] @ [C, 4C].
    c = int(getattr(masker.extractor, "feat_dim", 384))
    tokens = int(np.prod(masker.extractor.grid_size(args.image_size, args.image_size))) + 1
    mlp_x = torch.randn(args.batch_size * tokens, c, device=device).to(dtype)
    mlp_w = torch.randn(c, 4 * c, device=device).to(dtype)

    limits = threadpool_limits(args.threads) if args.threads else None
    # Warm-up (allocator, oneDNN primitive caches, cuDNN/cuBLAS handles, TorchScript tracing).
    stage_out = masker(batch)
    jpeg_masker(jpeg_batch)
    naive(images[0])
    seeds = [image_seed(cfg.seed, key) for key in keys]
    t = dict.fromkeys(("stage", "jpeg", "naive", "forward", "kmeans", "gemm", "mlp_gemm"), 0.0)
    n = dict.fromkeys(t, 0)
    naive.sklearn_s = 0.0
    for _ in range(args.rounds):
        for _ in range(args.batches):
            t["stage"] += _timed(lambda: masker(batch), device)[0]
            n["stage"] += len(images)
            t["jpeg"] += _timed(lambda: jpeg_masker(jpeg_batch), device)[0]
            n["jpeg"] += len(images)
        seconds, (feats, _) = _timed(lambda: masker.features(images), device)
        t["forward"] += seconds
        n["forward"] += len(images)
        with cpu_threads(device, cfg.kmeans_threads):
            t["kmeans"] += _timed(
                partial(kmeans, feats, cfg.k, seeds=seeds, metric=masker.metric), device
            )[0]
        n["kmeans"] += len(images)
        naive.last_feats = []
        seconds, naive_maps = _timed(
            lambda: [naive(images[i]) for i in range(args.naive_images)], device
        )
        t["naive"] += seconds
        n["naive"] += args.naive_images
        for _ in range(3):
            t["gemm"] += _timed(lambda: gemm_a @ gemm_a, device)[0]
            n["gemm"] += 1
            t["mlp_gemm"] += _timed(lambda: mlp_x @ mlp_w, device)[0]
            n["mlp_gemm"] += 1
    # Agreement of the stage's label maps with the naive ones, next to the agreement of two
    # naive runs that differ only in the K-means seed (random-init features cluster loosely).
    from sklearn.metrics import adjusted_rand_score as ari

    stage_maps = [decode_label_png(b) for b in stage_out["label_png"][: len(naive_maps)]]
    ari_stage = np.mean([ari(a.ravel(), b.ravel()) for a, b in zip(stage_maps, naive_maps)])
    reseeded = [naive.cluster(f, args.seed + 1) for f in naive.last_feats]
    ari_seed = np.mean([ari(a.ravel(), b) for a, b in zip(naive_maps, reseeded)])
    if limits is not None:
        limits.unregister()

    img_per_s = n["stage"] / t["stage"]
    naive_img_per_s = n["naive"] / t["naive"]
    forward_flops_per_s = flops_per_img * n["forward"] / t["forward"]
    square_flops_per_s = 2 * args.gemm_size**3 * n["gemm"] / t["gemm"]
    mlp_flops_per_s = 2 * mlp_x.shape[0] * c * 4 * c * n["mlp_gemm"] / t["mlp_gemm"]
    gemm_flops_per_s = max(square_flops_per_s, mlp_flops_per_s)
    result = {
        "bench": "pseudo_masks",
        "extractor": args.extractor,
        "image_size": args.image_size,
        "k": args.k,
        "batch_size": args.batch_size,
        "autocast": args.autocast,
        "dtype": str(dtype).replace("torch.", ""),
        "precision": precision.describe(device),
        "runtime": masker.runtime,
        "img_per_s": round(img_per_s, 3),
        "jpeg_img_per_s": round(n["jpeg"] / t["jpeg"], 3),
        "naive_img_per_s": round(naive_img_per_s, 3),
        "ratio": round(img_per_s / naive_img_per_s, 3),
        "forward_img_per_s": round(n["forward"] / t["forward"], 3),
        "forward_gflop_per_img": round(flops_per_img / 1e9, 3),
        "forward_flops_per_s": round(forward_flops_per_s, 1),
        "gemm_flops_per_s": round(gemm_flops_per_s, 1),
        "square_gemm_flops_per_s": round(square_flops_per_s, 1),
        "mlp_gemm_flops_per_s": round(mlp_flops_per_s, 1),
        "gemm_dtype": str(dtype).replace("torch.", ""),
        "forward_vs_gemm": round(forward_flops_per_s / gemm_flops_per_s, 3),
        "kmeans_ms_per_img": round(1000 * t["kmeans"] / n["kmeans"], 2),
        "sklearn_ms_per_img": round(1000 * naive.sklearn_s / n["naive"], 2),
        "ari_stage_vs_naive": round(float(ari_stage), 3),
        "ari_naive_vs_reseeded_naive": round(float(ari_seed), 3),
        "threads": torch.get_num_threads(),
        "device": _device_name(device),
    }
    if args.oracle:
        result.update(_oracle(args, cfg))
    print(json.dumps(result))
    return 0
