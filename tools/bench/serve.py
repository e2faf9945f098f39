"""Requests per second and latency of the served model (``tools.serve``) on loopback, with 1
and 8 concurrent clients, batched (``serve.batch`` up to 8) against unbatched (batch size 1).

    python -m tools.bench serve [--requests 64] [--seconds 60] [--model tiny] [--size 64]

A real Ray Serve application on a local Ray and a real HTTP client (httpx, one connection per
client thread); every request is a fresh random PNG with the same class list, so requests
that meet on the replica share a forward. Each (mode, clients) cell stops after ``--requests``
requests or ``--seconds``, whichever comes first. Prints one JSON line last: per cell
``req_per_s``, ``p50_ms``, ``p99_ms``, ``n``, and ``batched_over_unbatched`` at 1 and 8 clients.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CLASSES = "sky,tree|bush,grass,building,road,person|people,car,water"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_clients(url: str, clients: int, requests: int, seconds: float, size: int) -> dict:
    """``clients`` threads posting until ``requests`` are done or ``seconds`` passed."""
    import httpx

    from ovs.codecs import png_bytes

    rng = np.random.default_rng(0)
    bodies = [png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(16)]
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    counter = iter(range(requests))

    def client(_: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            for i in counter:  # shared: stops at `requests` in all
                if time.perf_counter() > deadline:
                    return
                t = time.perf_counter()
                r = c.post("/segment", content=bodies[i % len(bodies)], params={"classes": CLASSES},
                           headers={"Content-Type": "image/png"})  # fmt: skip
                r.raise_for_status()
                latencies.append(time.perf_counter() - t)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "n": len(lat),
        "req_per_s": len(lat) / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench serve")
    p.add_argument("--requests", type=int, default=64, help="per cell")
    p.add_argument("--seconds", type=float, default=60.0, help="per cell")
    p.add_argument("--model", default="tiny", help="open_clip model of the MaskCLIP served")
    p.add_argument("--size", type=int, default=64, help="request image side, px")
    p.add_argument("--num-cpus", type=float, default=1.0, help="of the one replica")
    args = p.parse_args(argv)

    import torch
    from ray import serve

    from ovs.serving import ServeConfig
    from tools.serve.__main__ import start

    torch.set_num_threads(1)
    model = {"method": "maskclip", "model": args.model, "pretrained": None, "device": "cpu"}
    port = _port()
    out: dict = {"bench": "serve", "model": f"maskclip/{args.model} (random init)",
                 "image_px": args.size}  # fmt: skip
    for mode, batch in (("batched", 8), ("unbatched", 1)):
        cfg = ServeConfig(port=port, protocol="tiny", short_side=args.size,
                          max_long_side=args.size, max_batch_size=batch,
                          batch_wait_timeout_s=0.01, num_cpus=args.num_cpus)  # fmt: skip
        url = start(model, cfg, name=f"bench-{mode}")
        run_clients(url, 1, 2, 30, args.size)  # warm-up
        for clients in (1, 8):
            cell = run_clients(url, clients, args.requests, args.seconds, args.size)
            out[f"{mode}.{clients}"] = cell
            print(f"{mode:9s} {clients} clients: {json.dumps(cell)}", flush=True)
        serve.delete(f"bench-{mode}")
    for clients in (1, 8):
        b, u = out[f"batched.{clients}"], out[f"unbatched.{clients}"]
        out[f"batched_over_unbatched.{clients}"] = b["req_per_s"] / u["req_per_s"]
    serve.shutdown()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
