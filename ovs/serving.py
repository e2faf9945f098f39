"""Serving a trained model: request checks, batched prediction and the response, without Ray.

A request is an encoded image (PNG/JPEG/WebP bytes), a class list (synonyms of one class
joined with ``|``, classes with ``,``: ``"cat|kitten,dog"``) and an optional background
threshold. :func:`parse_request` turns it into a :class:`Request` or raises
:class:`BadRequest` (HTTP status + message: not an image, truncated, above the pixel limit,
empty or over-long class list, wrong content type). :class:`Segmenter` holds the model
(loaded once) and answers a list of requests at once: images are resized to the serving
resolution and requests with the same class list and size share every forward (one
``dense_probs`` over all their crops), which is what ``serve.batch`` buys. The response
holds the label map PNG (uint8 ids; 0 = background when a threshold is given), an overlay
PNG with a legend and per-class pixel fractions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


@dataclass
class ServeConfig:
    """The ``serve`` settings: limits of a request, batching, replicas and their resources."""

    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    max_pixels: int = 4096 * 4096  # above: 413
    max_bytes: int = 32 * 2**20
    max_classes: int = 64
    max_class_chars: int = 2000  # the whole class list
    short_side: int = 224  # serving resolution (short side, long side capped below)
    max_long_side: int = 896
    protocol: str = "mask_free"
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.02
    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    device: str = "cpu"

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"serve.port must be 1..65535, got {self.port}")
        for name in ("max_pixels", "max_bytes", "max_classes", "max_class_chars", "short_side",
                     "max_long_side", "max_batch_size", "num_replicas"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_long_side < self.short_side:
            raise ValueError("serve.max_long_side must be >= serve.short_side")
        if self.batch_wait_timeout_s < 0 or self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("serve timeouts and resources must be >= 0")


class BadRequest(ValueError):
    """A request the server refuses: ``status`` (4xx) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Request:
    image: np.ndarray  # uint8[H, W, 3]
    classes: list[list[str]]  # display name first, then synonyms
    bg_threshold: float | None = None


@dataclass
class Response:
    classes: list[str]  # label id -> display name (id 0 = "background" with a threshold)
    label_png: bytes
    overlay_png: bytes
    fractions: dict[str, float] = field(default_factory=dict)


def parse_classes(text: str, cfg: ServeConfig) -> list[list[str]]:
    if len(text) > cfg.max_class_chars:
        raise BadRequest(
            400, f"class list is {len(text)} characters; at most {cfg.max_class_chars}"
        )
    classes = [[n.strip() for n in item.split("|") if n.strip()] for item in text.split(",")]
    classes = [c for c in classes if c]
    if not classes:
        raise BadRequest(400, "empty class list: give classes as 'cat,dog|puppy,grass'")
    if len(classes) > cfg.max_classes:
        raise BadRequest(400, f"{len(classes)} classes; at most {cfg.max_classes}")
    return classes


def decode_image(data: bytes, content_type: str, cfg: ServeConfig) -> np.ndarray:
    """``uint8[H, W, 3]`` from the request body, or :class:`BadRequest`."""
    from PIL import Image, UnidentifiedImageError

    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in IMAGE_TYPES:
        raise BadRequest(415, f"content type {ctype or '(none)'!r}; send one of {IMAGE_TYPES}")
    if not data:
        raise BadRequest(400, "empty body: send the image bytes")
    if len(data) > cfg.max_bytes:
        raise BadRequest(413, f"image is {len(data)} bytes; at most {cfg.max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > cfg.max_pixels:  # checked on the header, before decoding any pixel
            raise BadRequest(413, f"image is {w}x{h} = {w * h} pixels; at most {cfg.max_pixels}")
        img.load()
    except BadRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise BadRequest(400, "the body is not an image PIL can read (PNG, JPEG, WebP)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRequest(400, f"truncated or corrupt image: {e}") from None
    return np.asarray(img.convert("RGB"))


def parse_request(
    data: bytes, content_type: str, classes: str, bg_threshold: str | None, cfg: ServeConfig
) -> Request:
    names = parse_classes(classes or "", cfg)
    thr = None
    if bg_threshold not in (None, ""):
        try:
            thr = float(bg_threshold)  # type: ignore[arg-type]
        except ValueError:
            raise BadRequest(400, f"bg_threshold {bg_threshold!r} is not a number") from None
        if not 0.0 <= thr <= 1.0:
            raise BadRequest(400, f"bg_threshold must be in [0, 1], got {thr}")
    return Request(decode_image(data, content_type, cfg), names, thr)


class Segmenter:
    """A loaded method answering batches of :class:`Request` (see module docstring)."""

    def __init__(self, method, cfg: ServeConfig):
        from ovs.eval.protocol import get_protocol

        self.method, self.cfg = method, cfg
        self.protocol = get_protocol(cfg.protocol)
        self.protocol.names = "synonyms"  # user classes: every given name, max over synonyms
        self.protocol.short_side, self.protocol.max_long_side = cfg.short_side, cfg.max_long_side
        self._classifiers: dict[tuple, object] = {}

    def classifier(self, classes: list[list[str]], bg: float | None):
        """The text side of a class list (cached: clients repeat their lists)."""
        from ovs.eval.protocol import build_classifier

        key = (tuple(map(tuple, classes)), bg)
        if key not in self._classifiers:
            names = [["background"], *classes] if bg is not None else classes
            self.protocol.background_text = False
            self._classifiers[key] = build_classifier(
                self.method, names, bg is not None, self.protocol, "", bg
            )
            if len(self._classifiers) > 256:
                self._classifiers.pop(next(iter(self._classifiers)))
        return self._classifiers[key]

    @torch.no_grad()
    def labels(self, requests: list[Request]) -> list[np.ndarray]:
        """``uint8[H, W]`` label maps; requests sharing class list and serving size share
        each forward pass."""
        from ovs.eval.protocol import (
            aggregate_names,
            image_to_tensor,
            labels_from_probs,
            resize_short_side,
            window_boxes,
        )

        p = self.protocol
        device = getattr(self.method, "device", torch.device("cpu"))
        xs = [
            resize_short_side(image_to_tensor(r.image).to(device), p.short_side, p.max_long_side)
            for r in requests
        ]
        groups: dict[tuple, list[int]] = {}
        for i, (r, x) in enumerate(zip(requests, xs, strict=True)):
            key = (tuple(map(tuple, r.classes)), r.bg_threshold, tuple(x.shape[-2:]))
            groups.setdefault(key, []).append(i)
        out: list[np.ndarray | None] = [None] * len(requests)
        for (_, bg, (h, w)), idx in groups.items():
            clf = self.classifier(requests[idx[0]].classes, bg)
            emb = clf.emb.to(device)
            boxes = window_boxes(h, w, p.window, p.stride)
            crops = torch.cat([xs[i][:, :, y1:y2, x1:x2] for i in idx for y1, y2, x1, x2 in boxes])
            step = max(1, p.window_batch) * len(idx)
            probs = torch.cat(
                [
                    self.method.dense_probs(crops[j : j + step], emb)
                    for j in range(0, len(crops), step)
                ]
            )
            for n, i in enumerate(idx):
                acc = torch.zeros(emb.shape[0], h, w, device=device)
                count = torch.zeros(1, h, w, device=device)
                for b, (y1, y2, x1, x2) in enumerate(boxes):
                    acc[:, y1:y2, x1:x2] += probs[n * len(boxes) + b].to(acc)
                    count[:, y1:y2, x1:x2] += 1
                cls = aggregate_names(acc / count, clf.name_to_class, clf.num_prompted,
                                      p.logit_aggregation)  # fmt: skip
                ih, iw = requests[i].image.shape[:2]
                cls = F.interpolate(cls[None], size=(ih, iw), mode="bilinear", align_corners=False)
                lab = labels_from_probs(cls[0], clf.offset, clf.bg_threshold)
                out[i] = lab.to(torch.uint8).cpu().numpy()
        return [o for o in out if o is not None]

    def __call__(self, requests: list[Request]) -> list[Response]:
        from ovs.codecs import png_bytes
        from ovs.eval.visualize import legend, make_palette, overlay, with_legend

        responses = []
        for r, label in zip(requests, self.labels(requests), strict=True):
            names = (["background"] if r.bg_threshold is not None else []) + [
                c[0] for c in r.classes
            ]
            palette = make_palette(max(len(names), 2))
            counts = np.bincount(label.ravel(), minlength=len(names))[: len(names)]
            picture = with_legend(overlay(r.image, label, palette), legend(names, palette))
            responses.append(
                Response(
                    classes=names,
                    label_png=png_bytes(label),
                    overlay_png=png_bytes(picture),
                    fractions={
                        n: float(c) / label.size for n, c in zip(names, counts, strict=True)
                    },
                )
            )
        return responses
