"""Atomic file writes: a reader sees either the whole file or no file, never a partial one.

Every stage output goes through these helpers so that a killed job leaves at most a
``*.tmp-*`` file behind, which readers ignore and the next run overwrites.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar


def _tmp_path(path: str) -> str:
    """A fresh temporary name beside ``path`` (``.<name>.tmp-<8 hex>``, which readers ignore)."""
    folder, base = os.path.split(path)
    return os.path.join(folder, f".{base}.tmp-{uuid.uuid4().hex[:8]}")


P = TypeVar("P", bound="str | os.PathLike[str]")


def atomic_write_bytes(path: P, data: bytes) -> P:
    """Write ``data`` to ``path`` via a temporary file in the same directory + ``os.replace``;
    returns ``path``. Plain strings inside, not ``pathlib``: a ``Path`` interns every name it
    parses, and a stage writing one file per sample (the world's images) grew the interpreter's
    interned-string table by ~7 MB per 8,000 samples that way."""
    name = path if isinstance(path, str) else os.fspath(path)
    os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    tmp = _tmp_path(name)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: P, text: str) -> P:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: P, obj: Any) -> P:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(path: str | os.PathLike, table: Any) -> Path:
    """Write a ``pyarrow.Table`` atomically."""
    with atomic_parquet_writer(path, table.schema) as writer:
        writer.write_table(table)
    return Path(path)


@contextmanager
def atomic_parquet_writer(path: str | os.PathLike, schema: Any) -> Iterator[Any]:
    """A ``pyarrow.parquet.ParquetWriter`` whose file appears at ``path`` only when the
    ``with`` body ends without an error (tables written batch by batch: memory stays one
    batch whatever the row count)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(str(path))
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            yield writer
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
