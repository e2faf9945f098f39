"""URL lists as users have them: paths checked before anything runs, bad rows dropped and counted.

Two halves, both pure library code:

- :func:`check` (the driver's preflight, before any stage runs or anything is written): every
  local ``download.url_list`` entry exists (a file, a folder of lists, or a glob that matches),
  the formats are known and one per run, and each file's first rows are readable and have the
  configured columns (``url_col``, ``caption_col``, ``save_additional_columns``). Empty files,
  a header without rows, a missing column, a header-less TSV read as if it had a header, a
  folder mixing formats and an unreadable parquet are each one :class:`UrlListError` naming
  the key, the file and the column.
- :func:`clean` (the download stage, before img2dataset): every row of every local
  parquet / csv / tsv / jsonl list is read once, streaming, and rows img2dataset would
  mis-handle are dropped and counted by reason (:data:`SKIP_REASONS`): no URL, no caption
  (null, empty or ``NaN``), a duplicate of an earlier URL (across all lists of the run), a
  caption longer than :data:`MAX_CAPTION_CHARS` characters, or bytes that are not UTF-8.
  Lists that need no change (have a header, and at most ``download.list_chunk_rows`` rows)
  are given to img2dataset as they are; the others are written, per source file and in order
  (so shard ids stay positional), to ``<out>/_url_lists/<i>-<part>.parquet``, in parts of
  whole shards (img2dataset reads a list file whole: parts bound its memory). The result is
  cached in ``_url_lists/_clean.json`` by the sources' sizes and mtimes, so a resumed
  download does not reread a 12M-row list.
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from ovs.data.download import DownloadConfig

KEY = "download.url_list"
BATCH_ROWS = 65_536  # rows of a list in memory at once while cleaning (at most a part)
MAX_CAPTION_CHARS = 10_000  # CC12M's longest captions are ~1k; 10k+ is a broken row
SKIP_REASONS = ("missing_url", "missing_caption", "duplicate_url", "caption_too_long", "not_utf8")
CLEANABLE = ("parquet", "csv", "csv.gz", "tsv", "tsv.gz", "jsonl", "jsonl.gz")
GLOB_CHARS = "*?["
CACHE = "_clean.json"


class UrlListError(ValueError):
    """A URL list that cannot be read as configured (the message names key, file, column)."""


def _formats() -> tuple[str, ...]:
    from ovs.data.download import URL_LIST_FORMATS

    return URL_LIST_FORMATS


def _infer(path: str) -> str:
    from ovs.data.download import infer_format

    try:
        return infer_format(path)
    except ValueError as e:
        raise UrlListError(f"{KEY}: {e}") from None


def is_remote(path: str) -> bool:
    return "://" in path


def expand(url_list: list[str]) -> list[str]:
    """The list files of ``url_list`` in order: a folder gives its files (sorted, hidden files
    skipped), a glob its sorted matches; remote entries are kept as they are. Raises
    :class:`UrlListError` for a path that does not exist or a glob that matches nothing."""
    out: list[str] = []
    for p in url_list:
        if is_remote(p):
            out.append(p)
        elif any(c in p for c in GLOB_CHARS):
            matches = sorted(m for m in glob.glob(p) if Path(m).is_file())
            if not matches:
                raise UrlListError(f"{KEY}: glob {p!r} matches no file")
            out += matches
        elif Path(p).is_dir():
            files = sorted(
                str(f) for f in Path(p).iterdir() if f.is_file() and not f.name.startswith(".")
            )
            if not files:
                raise UrlListError(f"{KEY}: folder {p} holds no URL list")
            out += files
        elif Path(p).is_file():
            out.append(p)
        else:
            raise UrlListError(f"{KEY}: {p}: no such file or directory")
    return out


def list_format(cfg: DownloadConfig, files: list[str]) -> str:
    """The one format of ``files`` (``cfg.input_format`` or the suffixes); mixed -> error."""
    if cfg.input_format:
        return cfg.input_format
    fmts = {f: _infer(f) for f in files}
    if len(set(fmts.values())) > 1:
        shown = ", ".join(f"{Path(f).name}: {t}" for f, t in sorted(fmts.items()))
        raise UrlListError(
            f"{KEY}: URL lists mix formats ({shown}); img2dataset reads one format per run"
        )
    return next(iter(fmts.values()))


def _first_lines(path: str, n: int = 2) -> list[bytes]:
    opener: Any = gzip.open if path.endswith(".gz") else open
    lines = []
    try:
        with opener(path, "rb") as f:
            for line in f:
                if line.strip():
                    lines.append(line.rstrip(b"\r\n"))
                if len(lines) == n:
                    break
    except OSError as e:
        raise UrlListError(f"{KEY}: {path}: cannot read: {e.strerror or e}") from None
    return lines


def _needed(cfg: DownloadConfig) -> list[str]:
    cols = [cfg.url_col, *([cfg.caption_col] if cfg.caption_col else [])]
    return cols + [c for c in cfg.save_additional_columns if c not in cols]


def _check_columns(path: str, have: list[str], cfg: DownloadConfig, hint: str = "") -> None:
    for col in _needed(cfg):
        if col not in have:
            raise UrlListError(
                f"{KEY}: {path}: no column {col!r} (columns: {have}){hint}; set "
                "download.url_col / download.caption_col / download.save_additional_columns"
            )


def check_file(path: str, fmt: str, cfg: DownloadConfig) -> None:
    """The first rows of one local list: readable, not empty, with the configured columns."""
    if fmt == "parquet":
        try:
            meta = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as e:
            raise UrlListError(f"{KEY}: {path}: not a readable parquet file: {e}") from None
        if meta.metadata.num_rows == 0:
            raise UrlListError(f"{KEY}: {path}: no rows")
        _check_columns(path, meta.schema_arrow.names, cfg)
        return
    lines = _first_lines(path)
    if not lines:
        raise UrlListError(f"{KEY}: {path}: empty file")
    if fmt.startswith(("csv", "tsv")):
        sep = b"\t" if fmt.startswith("tsv") else b","
        first = lines[0].split(sep)
        if not cfg.header:
            if len(first) != len(cfg.columns):
                raise UrlListError(
                    f"{KEY}: {path}: first row has {len(first)} fields, download.columns names "
                    f"{len(cfg.columns)} ({cfg.columns})"
                )
            return
        names = [c.decode("utf-8", "replace").strip().strip('"') for c in first]
        looks_headerless = any("://" in n for n in names)
        hint = (
            " - the first row looks like data: for a list without a header row set "
            "download.header=false download.columns=[url,caption]"
            if looks_headerless
            else ""
        )
        _check_columns(path, names, cfg, hint)
        if len(lines) == 1:
            raise UrlListError(f"{KEY}: {path}: a header row and no rows")
    elif fmt.startswith("jsonl"):
        try:
            row = json.loads(lines[0])
        except ValueError as e:
            raise UrlListError(f"{KEY}: {path}: first line is not JSON: {e}") from None
        if not isinstance(row, dict):
            raise UrlListError(f"{KEY}: {path}: first line is not a JSON object")
        _check_columns(path, list(row), cfg)


def check(cfg: DownloadConfig, produced: tuple[str, ...] = ()) -> None:
    """Preflight of ``download.url_list`` (see the module doc). Paths under a folder in
    ``produced`` (written by an earlier stage of the same run, e.g. ``world.export_dir``)
    are not checked: they do not exist yet."""

    def later(p: str) -> bool:
        return any(Path(p).absolute().is_relative_to(Path(d).absolute()) for d in produced if d)

    local = [p for p in cfg.url_list if not is_remote(p) and not later(p)]
    if not local:
        return
    files = expand(local)
    fmt = list_format(cfg, files)
    if fmt not in _formats():
        raise UrlListError(f"{KEY}: input_format {fmt!r} is not one of {_formats()}")
    for f in files:
        check_file(f, fmt, cfg)


# ----------------------------------------------------------------------------- cleaning


def _batches(path: str, fmt: str, cfg: DownloadConfig, rows: int) -> Iterator[pa.RecordBatch]:
    """The needed columns of one list in batches of at most ``rows`` rows, streamed (a list is
    never read whole); url and caption as raw ``binary`` for text formats (so non-UTF-8 bytes
    are counted, not fatal). Text formats are read in 16 MB blocks, then cut to ``rows``."""
    keep = _needed(cfg)
    if fmt == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=rows, columns=keep)
        return
    text = [cfg.url_col, *([cfg.caption_col] if cfg.caption_col else [])]
    reader: Iterator[pa.RecordBatch]
    if fmt.startswith("jsonl"):
        import pyarrow.json as pjson

        # url and caption typed up front: a streamed reader infers types from its first block,
        # and a first block of null captions would make every later text caption an error
        reader = pjson.open_json(
            path,
            read_options=pjson.ReadOptions(block_size=1 << 24),
            parse_options=pjson.ParseOptions(
                explicit_schema=pa.schema([(c, pa.string()) for c in text])
            ),
        )
    else:
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(
                column_names=None if cfg.header else list(cfg.columns), block_size=1 << 24
            ),
            parse_options=(
                pcsv.ParseOptions(delimiter="\t", quote_char=False)
                if fmt.startswith("tsv")
                else pcsv.ParseOptions(delimiter=",")
            ),
            convert_options=pcsv.ConvertOptions(
                include_columns=keep,
                column_types={c: (pa.binary() if c in text else pa.string()) for c in keep},
            ),
        )
    for block in reader:
        if fmt.startswith("jsonl"):
            block = pa.RecordBatch.from_arrays([block.column(k) for k in keep], names=keep)
        for start in range(0, block.num_rows, rows):
            yield block.slice(start, rows)


def _text(v: Any) -> str | None:
    """A cell as text: ``None`` for null/NaN, raises ``UnicodeDecodeError`` for bad bytes."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


def _reason(url: Any, caption: Any, has_caption: bool) -> tuple[str | None, Any]:
    """Why a row is dropped (``None``: kept) and its ``(url, caption)`` text; duplicates are
    :class:`UrlSet`'s."""
    try:
        u = _text(url)
        c = _text(caption) if has_caption else ""
    except UnicodeDecodeError:
        return "not_utf8", None
    if not u or not u.strip():
        return "missing_url", None
    if has_caption and (c is None or not c.strip() or c.strip().lower() == "nan"):
        return "missing_caption", None
    if c is not None and len(c) > MAX_CAPTION_CHARS:
        return "caption_too_long", None
    return None, (u, c)


class UrlSet:
    """The URLs seen so far in a run, as 8-byte hashes in a few sorted ``int64`` runs (a
    log-structured merge: runs of similar size are merged, so at most ~log2(batches) runs
    exist and each hash is moved O(log n) times). 96 MB for CC12M's 12M URLs, where a Python
    ``set`` of hashes takes ~800 MB: the only state of the download driver that grows with the
    list, and it must (duplicates are found across all lists of a run). Hashes are Python's
    ``hash(str)``: two distinct URLs collide with probability ~n^2 / 2^65 (4e-6 at 12M)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def add_new(self, urls: list[str]) -> np.ndarray:
        """Add ``urls``; returns a bool mask of the ones not seen before (in this call, the
        first of equal URLs counts as new)."""
        h = np.fromiter((hash(u) for u in urls), dtype=np.int64, count=len(urls))
        new = np.zeros(len(h), dtype=bool)
        if not len(h):
            return new
        uniq, first = np.unique(h, return_index=True)
        fresh = np.ones(len(uniq), dtype=bool)
        for run in self._runs:
            at = np.searchsorted(run, uniq)
            hit = at < len(run)
            hit[hit] = run[at[hit]] == uniq[hit]
            fresh &= ~hit
        new[first[fresh]] = True
        run = uniq[fresh]
        while self._runs and len(self._runs[-1]) <= 2 * len(run):
            run = np.concatenate([self._runs.pop(), run])
            run.sort(kind="stable")
        self._runs.append(run)
        return new


def _clean_file(
    src: str,
    dst: Path,
    fmt: str,
    cfg: DownloadConfig,
    seen: UrlSet,
    skipped: dict[str, int],
    part_rows: int,
) -> tuple[int, int]:
    """Write the kept rows of ``src`` to ``dst``'s parts ``<stem>-00000.parquet``, ... of
    ``part_rows`` rows each (each atomic); returns ``(rows dropped, rows kept)``."""
    dropped = kept_rows = 0
    has_caption = bool(cfg.caption_col)
    writer, tmp, part, in_part = None, None, 0, 0

    def close() -> None:
        nonlocal writer, part, in_part
        if writer is not None:
            writer.close()
            os.replace(tmp, dst.with_name(f"{dst.stem}-{part:05d}.parquet"))
            writer, part, in_part = None, part + 1, 0

    try:
        for batch in _batches(src, fmt, cfg, min(BATCH_ROWS, part_rows)):
            urls = batch.column(cfg.url_col).to_pylist()
            caps = batch.column(cfg.caption_col).to_pylist() if has_caption else [None] * len(urls)
            mask, new_urls, new_caps = [], [], []
            for u, c in zip(urls, caps, strict=True):
                why, kept = _reason(u, c, has_caption)
                mask.append(why is None)
                if why is None:
                    new_urls.append(kept[0])
                    new_caps.append(kept[1])
                else:
                    skipped[why] = skipped.get(why, 0) + 1
                    dropped += 1
            fresh = seen.add_new(new_urls)
            if not fresh.all():
                dup = int((~fresh).sum())
                skipped["duplicate_url"] = skipped.get("duplicate_url", 0) + dup
                dropped += dup
                at = np.flatnonzero(mask)[~fresh]  # batch rows of the duplicates
                for j in at.tolist():
                    mask[j] = False
                new_urls = [u for u, f in zip(new_urls, fresh.tolist(), strict=True) if f]
                new_caps = [c for c, f in zip(new_caps, fresh.tolist(), strict=True) if f]
            rows = batch.filter(pa.array(mask, pa.bool_()))
            cols = {cfg.url_col: pa.array(new_urls, pa.string())}
            if has_caption:
                cols[cfg.caption_col] = pa.array(new_caps, pa.string())
            for name in rows.schema.names:
                if name not in cols:
                    cols[name] = rows.column(name)
            table = pa.table({n: cols[n] for n in _needed(cfg)})
            kept_rows += table.num_rows
            while table.num_rows:
                if writer is None:
                    tmp = dst.with_name(f".{dst.stem}-{part:05d}.parquet.tmp")
                    writer = pq.ParquetWriter(tmp, table.schema)
                take = min(table.num_rows, part_rows - in_part)
                writer.write_table(table.slice(0, take))
                table, in_part = table.slice(take), in_part + take
                if in_part == part_rows:
                    close()
    except (pa.ArrowException, OSError, KeyError) as e:
        if writer is not None:
            writer.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UrlListError(f"{KEY}: {src}: cannot read as {fmt}: {first}") from None
    close()
    return dropped, kept_rows


def part_rows(cfg: DownloadConfig) -> int:
    """Rows per cleaned list file: ``download.list_chunk_rows`` rounded down to whole shards
    (img2dataset reads one list file whole and cuts it into shards; whole-shard parts keep
    the shard layout of one file and bound what it holds in memory)."""
    per_shard = max(1, cfg.number_sample_per_shard)
    return max(1, cfg.list_chunk_rows // per_shard) * per_shard


def _signature(files: list[str], cfg: DownloadConfig) -> dict:
    stats = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    settings = [cfg.header, list(cfg.columns), _needed(cfg), MAX_CAPTION_CHARS]
    return {"files": stats, "settings": settings}


def clean(cfg: DownloadConfig, out_dir: Path) -> tuple[str, str, dict[str, int]] | None:
    """Clean the local lists of ``cfg.url_list`` (see the module doc).

    Returns ``(url_list, input_format, skipped)`` for img2dataset when the cleaned copies
    under ``<out_dir>/_url_lists/`` are to be read, or ``None`` when the lists are given to
    img2dataset unchanged (remote lists, txt/json lists, or lists with a header and nothing to
    drop). ``skipped``: reason -> rows dropped, only reasons that occurred.
    """
    if any(is_remote(p) for p in cfg.url_list):
        return None
    files = expand(list(cfg.url_list))
    fmt = list_format(cfg, files)
    if fmt not in CLEANABLE:
        return None
    conv = out_dir / "_url_lists"
    sig = _signature(files, cfg)
    cache = conv / CACHE
    if cache.exists():
        try:
            saved = json.loads(cache.read_text())
        except ValueError:
            saved = {}
        if saved.get("signature") == json.loads(json.dumps(sig)):
            if not saved["converted"]:
                return None
            return str(conv), "parquet", dict(saved["skipped"])
    conv.mkdir(parents=True, exist_ok=True)
    for old in conv.iterdir():
        old.unlink()
    seen = UrlSet()
    skipped: dict[str, int] = {}
    dropped, longest, rows = 0, 0, part_rows(cfg)
    for i, f in enumerate(files):
        lost, kept = _clean_file(f, conv / f"{i:05d}.parquet", fmt, cfg, seen, skipped, rows)
        if kept == 0:
            if not lost:
                raise UrlListError(f"{KEY}: {f}: no rows")
            raise UrlListError(f"{KEY}: {f}: every row was skipped ({skipped})")
        dropped, longest = dropped + lost, max(longest, kept)
    # a list longer than one part is given in parts even when nothing was dropped
    converted = dropped > 0 or not cfg.header or longest > rows
    if not converted:
        for old in conv.iterdir():
            old.unlink()
    from ovs.io import atomic_write_json

    atomic_write_json(cache, {"signature": sig, "converted": converted, "skipped": skipped})
    return (str(conv), "parquet", skipped) if converted else None
