"""Serve a trained model over HTTP with Ray Serve (API + a web page at ``/``).

    python -m tools.serve --checkpoint PATH|WORKDIR|RUN_ID [--host 127.0.0.1] [--port 8000]
        [--replicas 1] [--num-cpus 1] [--max-batch-size 8] [--max-pixels N] ...
    python -m tools.serve --method maskclip --model ViT-B-16 --pretrained openai   (a baseline)

The checkpoint is resolved once, here (a file; a pipeline workdir: its newest ``train``
``latest.pt``; an MLflow run id: its ``model`` artifact, as ``tools.segment`` does), and fixed
for the server's life. Runs on the Ray at ``$RAY_ADDRESS`` if set, else a local one; binds
127.0.0.1 unless ``--host`` says otherwise. ``infra/serve_config.yaml`` and
``infra/kuberay/rayservice.yaml`` deploy the same application on a cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from ovs.serving import ServeConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.serve", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint file, pipeline workdir or MLflow run id")
    src.add_argument("--method", choices=("clip", "maskclip"), help="training-free baseline")
    p.add_argument("--model", default="ViT-B-16", help="open_clip model of a baseline")
    p.add_argument("--pretrained", default="openai", help="open_clip tag; 'none' = random")
    p.add_argument("--tracking-uri", default=None, help="MLflow store for a run id")
    for f in fields(ServeConfig):
        flag = "--" + {"num_replicas": "replicas"}.get(f.name, f.name).replace("_", "-")
        p.add_argument(flag, dest=f.name, type=type(f.default), default=f.default)
    return p


def resolve_model(args: argparse.Namespace) -> dict:
    """The :class:`ovs.eval.method.MethodRef` fields of the served model (checkpoint as a file)."""
    from ovs.eval.method import is_run_id, resolve_checkpoint

    if args.method:
        pretrained = None if str(args.pretrained).lower() in ("none", "") else args.pretrained
        return {"method": args.method, "model": args.model, "pretrained": pretrained,
                "device": args.device}  # fmt: skip
    ref = args.checkpoint
    if not Path(ref).exists() and is_run_id(ref):
        from pipelines.tracking import default_tracking_uri
        from tools.segment import checkpoint_from_run

        ref = str(checkpoint_from_run(ref, args.tracking_uri or default_tracking_uri(REPO_ROOT)))
    path = resolve_checkpoint(ref).resolve()
    from ovs.methods import load_checkpoint

    load_checkpoint(path)  # ValueError naming the file now, not in a replica after Ray started
    return {"checkpoint": str(path), "device": args.device}


def start(model: dict, cfg: ServeConfig, name: str = "ovs") -> str:
    """Start (or join) Ray, start Serve's HTTP proxy on ``cfg.host:cfg.port`` and run the
    application; returns its URL."""
    import ray
    from ray import serve

    from tools.serve.app import build_app

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"])
        else:
            path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
            ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(model, cfg), name=name, route_prefix="/")
    return f"http://{cfg.host}:{cfg.port}/"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig)})
    try:
        cfg.validate()
        model = resolve_model(args)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    url = start(model, cfg)
    print(f"serving {model.get('checkpoint') or model['method']} at {url}  (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
