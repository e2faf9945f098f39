"""The Ray Serve application: one deployment (FastAPI ingress) whose replicas each load the
model once and answer ``POST /segment`` in batches (``serve.batch``), plus the page at ``/``.

    POST /segment?classes=cat|kitten,dog[&bg_threshold=0.4]   body: the image bytes,
    Content-Type: image/png | image/jpeg | image/webp
    -> 200 {"classes": [...], "fractions": {name: fraction}, "width", "height",
            "label_png": base64 (uint8 ids, index into "classes"), "overlay_png": base64}
    -> 4xx {"error": "..."} for bad input (see ovs.serving.parse_request); the server goes on.

The checkpoint is fixed when the application is built; a request cannot choose it.
"""

import asyncio
import base64
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve

from ovs.serving import BadRequest, Request, Response, ServeConfig, parse_request
from tools.serve.page import PAGE

api = FastAPI(title="ovs segment")


@serve.deployment
@serve.ingress(api)
class SegmentServer:
    """One replica: the method loaded once from ``model`` (a :class:`ovs.eval.method.MethodRef`
    as a dict), requests batched up to ``serve.max_batch_size``."""

    def __init__(self, model: dict[str, Any], cfg: dict[str, Any]):
        from ovs.eval.method import MethodRef, load_method
        from ovs.serving import Segmenter

        self.cfg = ServeConfig(**cfg)
        self.segmenter = Segmenter(load_method(MethodRef(**model)), self.cfg)
        self.batch.set_max_batch_size(self.cfg.max_batch_size)  # type: ignore[attr-defined]
        self.batch.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def batch(self, requests: list[Request]) -> list[Response]:
        # off the event loop, so requests keep arriving (and queue up) while a batch runs
        return await asyncio.to_thread(self.segmenter, requests)

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return PAGE

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"ok": True, "max_batch_size": self.cfg.max_batch_size}

    @api.post("/segment")
    async def segment(self, request: HttpRequest) -> JSONResponse:
        try:
            body = await request.body()
            req = parse_request(
                body,
                request.headers.get("content-type", ""),
                request.query_params.get("classes", ""),
                request.query_params.get("bg_threshold"),
                self.cfg,
            )
        except BadRequest as e:
            return JSONResponse({"error": e.message}, status_code=e.status)
        res = await self.batch(req)
        h, w = req.image.shape[:2]
        return JSONResponse(
            {
                "classes": res.classes,
                "fractions": res.fractions,
                "width": w,
                "height": h,
                "label_png": base64.b64encode(res.label_png).decode(),
                "overlay_png": base64.b64encode(res.overlay_png).decode(),
            }
        )


def build_app(model: dict[str, Any], cfg: ServeConfig):
    """The bound application: replicas and their resources from ``cfg``."""
    cfg.validate()
    return SegmentServer.options(  # type: ignore[attr-defined]  # a serve Deployment
        num_replicas=cfg.num_replicas,
        max_ongoing_requests=max(16, 2 * cfg.max_batch_size),
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    ).bind(model, asdict(cfg))


def app_builder(args: dict[str, Any]):
    """``serve run`` / ``serve deploy`` entry (``import_path: tools.serve.app:app_builder``):
    ``args`` = ``{"checkpoint": PATH, **serve settings}`` from the Serve config file."""
    args = dict(args)
    model = {"checkpoint": args.pop("checkpoint"), "device": args.get("device", "cpu")}
    return build_app(model, ServeConfig(**args))
