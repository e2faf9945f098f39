"""Read img2dataset's webdataset output: ``00000.tar`` + ``00000_stats.json`` per shard.

Only finished shards count: img2dataset writes ``<shard>_stats.json`` after the tar is closed,
so a shard without it is a partial write of a killed job and is never read.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def list_shards(directory: str | Path) -> list[Path]:
    """Finished shard tars under ``directory``, sorted by name."""
    directory = Path(directory)
    return sorted(
        p for p in directory.glob("*.tar") if (p.parent / f"{p.stem}_stats.json").exists()
    )


def iter_shard(
    tar_path: str | Path, members: Sequence[str] = ("jpg", "txt", "json")
) -> Iterator[dict]:
    """Yield one dict per sample key: ``{"key": str, <ext>: payload}``.

    Only the requested member extensions are read (e.g. ``("txt",)`` never touches image bytes
    beyond skipping them in the tar stream). ``txt`` is decoded as UTF-8 (invalid bytes
    replaced), ``json`` parsed, everything else returned as ``bytes``. Samples arrive in tar
    order; img2dataset writes a sample's members contiguously.
    """
    wanted = set(members)
    current: dict | None = None
    with tarfile.open(tar_path, "r") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            key, _, ext = name.partition(".")
            if current is not None and current["key"] != key:
                yield current
                current = None
            if current is None:
                current = {"key": key}
            if ext in wanted:
                current[ext] = _payload(tar, info, ext)
    if current is not None:
        yield current


def iter_shard_by_key(
    tar_path: str | Path, members: Sequence[str] = ("jpg", "txt", "json")
) -> Iterator[dict]:
    """:func:`iter_shard` in key order. img2dataset writes a shard's samples as their downloads
    finish, an order that differs from run to run; whatever batches samples (training, the pairs
    scorer) reads them this way so that its results do not. Members are read by their offsets
    (one header pass, then random access): no sample is held beyond the current one."""
    wanted = set(members)
    with tarfile.open(tar_path, "r") as tar:
        by_key: dict[str, list[tarfile.TarInfo]] = {}
        for info in tar.getmembers():
            if not info.isfile():
                continue
            key, _, ext = info.name.rsplit("/", 1)[-1].partition(".")
            group = by_key.setdefault(key, [])
            if ext in wanted:
                group.append(info)
        for key in sorted(by_key):
            sample: dict = {"key": key}
            for info in by_key[key]:
                ext = info.name.rsplit("/", 1)[-1].partition(".")[2]
                sample[ext] = _payload(tar, info, ext)
            yield sample


def _payload(tar: tarfile.TarFile, info: tarfile.TarInfo, ext: str) -> Any:
    """A member's payload: ``txt`` as UTF-8 (invalid bytes replaced), ``json`` parsed, else bytes."""
    f = tar.extractfile(info)
    data = f.read() if f is not None else b""
    if ext == "txt":
        return data.decode("utf-8", errors="replace")
    if ext == "json":
        return json.loads(data or b"{}")
    return data
