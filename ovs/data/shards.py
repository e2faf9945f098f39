"""Read img2dataset's webdataset output: ``00000.tar`` + ``00000_stats.json`` per shard.

Only finished shards count: img2dataset writes ``<shard>_stats.json`` after the tar is closed,
so a shard without it is a partial write of a killed job and is never read.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path


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
            if ext not in wanted:
                continue
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if ext == "txt":
                current[ext] = data.decode("utf-8", errors="replace")
            elif ext == "json":
                current[ext] = json.loads(data or b"{}")
            else:
                current[ext] = data
    if current is not None:
        yield current
