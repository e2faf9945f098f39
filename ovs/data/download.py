"""Image download: a typed wrapper around ``img2dataset.download`` and its per-shard stats.

The output is img2dataset's own webdataset layout, unchanged: ``<out>/00000.tar`` (members
``<key>.jpg/.txt/.json``), ``<out>/00000.parquet`` (one row per URL, with ``status`` and
``error_message``) and ``<out>/00000_stats.json``, written last, which marks the shard done.

Resuming is img2dataset's ``incremental`` mode: a rerun skips shards whose ``_stats.json``
exists and redoes the others from scratch (their tar/parquet are overwritten), so a killed run
loses and duplicates nothing. Shard ids come from the position in the URL list, so the same
list and ``number_sample_per_shard`` always give the same shards. Before a rerun,
``_drop_broken_shards`` deletes stats files that do not parse (a kill while img2dataset wrote
one, which it does not do atomically) or whose tar is cut short, so their shards are redone too.

img2dataset fetches with ``urllib.request.urlopen``, so ``file://`` URLs work as well as
http(s) (the synthetic world's URL list uses them). Its ``multiprocessing`` distributor uses
the ``spawn`` start method (so call ``download`` from an importable module, under
``if __name__ == "__main__"`` in scripts); ``distributor="ray"`` needs ``ray.init`` first and
runs one Ray task per shard.

Headerless URL lists (the official ``cc12m.tsv`` is ``url<TAB>caption`` with no header row):
``header=False`` with ``columns`` naming the file's columns in order. img2dataset reads csv/tsv
with a header, so each such list is converted once, streaming, into a parquet file under
``<out>/_url_lists/`` (written atomically; redone only when a source changed) and
img2dataset reads those, in the given order, so shard ids are the same as for a file with a
header. The same pass (:func:`ovs.data.url_lists.clean`) drops rows without URL or caption,
duplicate URLs, over-long and non-UTF-8 captions from every local list; the result's counts
then include ``skipped_<reason>`` for each reason that occurred.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pyarrow.parquet as pq

from ovs.config import check_choice
from ovs.data import url_lists
from ovs.data.shards import check_shard

URL_LIST_FORMATS = (
    "parquet",
    "tsv",
    "tsv.gz",
    "csv",
    "csv.gz",
    "jsonl",
    "jsonl.gz",
    "json",
    "json.gz",
    "txt",
    "txt.gz",
)
HEADERLESS_FORMATS = ("tsv", "tsv.gz", "csv", "csv.gz")
DISTRIBUTORS = ("multiprocessing", "ray")
INCREMENTAL_MODES = ("incremental", "overwrite", "extend")
STATUSES = ("success", "failed_to_download", "failed_to_resize")


@dataclass
class DownloadConfig:
    """img2dataset options. Tiny: the synthetic world (``file://`` URLs, 64 px, 1 process).

    Paper scale (CC12M, 12M URLs): ``image_size=512`` (short side kept >= 448 for eval-style
    crops), ``resize_mode="keep_ratio"``, ``processes_count=16`` per node,
    ``thread_count=64``, ``timeout=10``, ``retries=1``, ``number_sample_per_shard=10000``,
    ``distributor="ray"``.
    """

    # How the stage runs, not what it computes: left out of the stage hash (ovs.config.hash_view).
    UNHASHED: ClassVar[tuple[str, ...]] = ("processes_count", "thread_count", "list_chunk_rows")

    url_list: list[str] = field(default_factory=list)  # files or one folder; format by suffix
    input_format: str = ""  # "" = infer from the file suffix
    url_col: str = "url"
    caption_col: str = "caption"
    # csv/tsv lists only: False = the file has no header row; ``columns`` then names its
    # columns in order (e.g. CC12M's cc12m.tsv: [url, caption]; extra columns are dropped
    # unless url_col, caption_col or save_additional_columns name them).
    header: bool = True
    columns: list[str] = field(default_factory=list)
    save_additional_columns: list[str] = field(default_factory=list)  # e.g. the world's "id"
    image_size: int = 64
    resize_mode: str = "center_crop"  # no | border | keep_ratio | keep_ratio_largest | center_crop
    resize_only_if_bigger: bool = False
    encode_quality: int = 95
    encode_format: str = "jpg"
    processes_count: int = 1
    thread_count: int = 16
    timeout: int = 10  # seconds per request
    retries: int = 0
    number_sample_per_shard: int = 10000  # 10^4 -> 9-digit keys (4 sample + 5 shard digits)
    min_image_size: int = 0
    distributor: str = "multiprocessing"  # "multiprocessing" | "ray" (after ray.init)
    incremental_mode: str = "incremental"  # img2dataset: incremental | overwrite | extend
    extract_exif: bool = False
    compute_hash: str | None = "sha256"
    user_agent_token: str | None = None
    disallowed_header_directives: list[str] | None = None  # None = img2dataset's default
    max_shard_retry: int = 1
    # Rows per cleaned URL-list file (rounded down to whole shards): img2dataset reads each
    # list file whole into the driver, so a 12M-row cc12m.tsv is given to it in parts of this
    # many rows (~130 MB of arrow each at CC12M's ~130 bytes a row); same shards either way.
    list_chunk_rows: int = 1_000_000

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad ``download.*`` setting (called at config load,
        and by :func:`download`)."""
        check_choice("download.distributor", self.distributor, DISTRIBUTORS)
        if self.incremental_mode not in INCREMENTAL_MODES:
            raise ValueError(
                f"download.incremental_mode must be one of {INCREMENTAL_MODES}, "
                f"got {self.incremental_mode!r}"
            )
        if self.header:
            if self.columns:
                raise ValueError(
                    "download.columns: only for header: false (names of a headerless file's columns)"
                )
            return
        cols = list(self.columns)
        if not cols:
            raise ValueError(
                "download.header is false: set download.columns (the file's column names, in order)"
            )
        if len(set(cols)) != len(cols) or not all(cols):
            raise ValueError(f"download.columns must be unique non-empty names, got {cols}")
        needed = [self.url_col, *([self.caption_col] if self.caption_col else [])]
        for name in needed + list(self.save_additional_columns):
            if name not in cols:
                raise ValueError(
                    f"download.columns {cols} has no column {name!r} (url_col / caption_col / save_additional_columns)"
                )
        fmts = (
            {self.input_format}
            if self.input_format
            else {infer_format(p) for p in self.url_list if not _is_dir(p)}
        )
        bad = sorted(f for f in fmts if f not in HEADERLESS_FORMATS)
        if bad:
            raise ValueError(f"download.header: false is for {HEADERLESS_FORMATS} lists, got {bad}")
        if any("://" in p for p in self.url_list):
            raise ValueError(
                "download.header: false needs local URL lists (they are converted to parquet)"
            )


def infer_format(path: str) -> str:
    """URL-list format from the file name: ``a.parquet`` -> ``parquet``, ``a.tsv.gz`` -> ``tsv.gz``."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for fmt in sorted(URL_LIST_FORMATS, key=len, reverse=True):
        if name.endswith("." + fmt):
            return fmt
    raise ValueError(f"cannot infer URL list format of {path!r}; use one of {URL_LIST_FORMATS}")


def _is_dir(path: str) -> bool:
    return "://" not in path and Path(path).is_dir()


def _resolve_url_list(cfg: DownloadConfig, out_dir: Path) -> tuple[str, str]:
    """``(url_list, input_format)`` for img2dataset: one file, or a folder of same-format files.

    Several local files (or a glob's matches) are linked into ``<out>/_url_lists/`` as
    ``00000.<fmt>``, ... so that img2dataset (which takes one file or one folder) reads them in
    the given order.
    """
    paths = [str(p) for p in cfg.url_list]
    if not paths:
        raise ValueError("DownloadConfig.url_list is empty")
    if len(paths) == 1 and "://" not in paths[0] and Path(paths[0]).is_dir():
        folder = Path(paths[0])
        return str(folder), url_lists.list_format(cfg, url_lists.expand(paths))
    if any("://" in p for p in paths):
        fmt = url_lists.list_format(cfg, paths)
        if len(paths) == 1:
            return paths[0], fmt
        raise ValueError("several remote URL lists: put them in one folder and pass the folder")
    paths = url_lists.expand(paths)
    fmt = url_lists.list_format(cfg, paths)
    if len(paths) == 1:
        return paths[0], fmt
    link_dir = out_dir / "_url_lists"
    link_dir.mkdir(parents=True, exist_ok=True)
    for old in link_dir.iterdir():
        if old.name != url_lists.CACHE:
            old.unlink()
    for i, p in enumerate(paths):
        os.symlink(Path(p).resolve(), link_dir / f"{i:05d}.{fmt}")
    return str(link_dir), fmt


def _drop_broken_shards(out_dir: Path) -> list[str]:
    """Delete the ``*_stats.json`` of broken shards so img2dataset redoes them: stats that do
    not parse (a kill while img2dataset wrote one) or a tar that does not read to its end (cut
    short on disk after it was finished). Returns the stats files' names."""
    dropped = []
    for stats in sorted(out_dir.glob("*_stats.json")):
        tar = stats.with_name(stats.name.replace("_stats.json", ".tar"))
        try:
            json.loads(stats.read_text())
            shard_error = check_shard(tar) if tar.exists() else None
        except (ValueError, UnicodeDecodeError):
            shard_error = "unreadable stats"
        if shard_error:
            stats.unlink()
            dropped.append(stats.name)
    other = [p.name for p in out_dir.glob("*.json") if not p.name.endswith("_stats.json")]
    if other:  # img2dataset parses every top-level *.json name as "<shard>_stats.json"
        raise ValueError(f"{out_dir} holds non-stats json files {other}; img2dataset would fail")
    return dropped


def download(cfg: DownloadConfig, out_dir: str | os.PathLike) -> dict:
    """Run img2dataset into ``out_dir`` (webdataset layout), then return ``summarize(out_dir)``
    plus ``skipped_<reason>`` counts of URL-list rows dropped before img2dataset."""
    # img2dataset imports albumentations, which checks PyPI for updates on import, here and in
    # every spawned worker; switch that off (workers inherit the environment).
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import download as i2d_download

    cfg.validate()
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    _drop_broken_shards(out)  # after a kill: shards with broken stats or tar are redone
    cleaned = url_lists.clean(cfg, out)
    url_list, fmt, skipped = cleaned if cleaned else (*_resolve_url_list(cfg, out), {})
    i2d_download(
        url_list=url_list,
        output_folder=str(out),
        output_format="webdataset",
        input_format=fmt,
        url_col=cfg.url_col,
        caption_col=cfg.caption_col or None,
        save_additional_columns=list(cfg.save_additional_columns) or None,
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_quality=cfg.encode_quality,
        encode_format=cfg.encode_format,
        processes_count=cfg.processes_count,
        thread_count=cfg.thread_count,
        timeout=cfg.timeout,
        retries=cfg.retries,
        number_sample_per_shard=cfg.number_sample_per_shard,
        min_image_size=cfg.min_image_size,
        distributor=cfg.distributor,
        incremental_mode=cfg.incremental_mode,
        extract_exif=cfg.extract_exif,
        compute_hash=cfg.compute_hash,
        user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=cfg.disallowed_header_directives,
        max_shard_retry=cfg.max_shard_retry,
        enable_wandb=False,
    )
    return {**summarize(out), **{f"skipped_{k}": n for k, n in sorted(skipped.items())}}


def summarize(out_dir: str | os.PathLike, top_k: int = 10) -> dict:
    """Counts over the finished shards of an img2dataset output folder.

    Returns ``{"shards", "count", "success", "failed_to_download", "failed_to_resize",
    "top_errors": {message: n}}`` (``top_k`` most frequent error messages). Totals come from
    the ``*_stats.json`` files; the error messages from each finished shard's ``.parquet``
    (``status``/``error_message`` columns), which, unlike ``status_dict``, are not capped.
    """
    out = Path(out_dir)
    counts = {"shards": 0, "count": 0, **{s: 0 for s in STATUSES}}
    errors: Counter[str] = Counter()
    for stats_path in sorted(out.glob("*_stats.json")):
        stats = json.loads(stats_path.read_text())
        counts["shards"] += 1
        counts["count"] += int(stats["count"])
        counts["success"] += int(stats["successes"])
        counts["failed_to_download"] += int(stats["failed_to_download"])
        counts["failed_to_resize"] += int(stats["failed_to_resize"])
        meta = stats_path.with_name(stats_path.name.replace("_stats.json", ".parquet"))
        if meta.exists():
            t = pq.read_table(meta, columns=["status", "error_message"]).to_pydict()
            errors.update(
                str(m)
                for s, m in zip(t["status"], t["error_message"], strict=True)
                if s != "success"
            )
        else:
            errors.update({m: n for m, n in stats.get("status_dict", {}).items() if m != "success"})
    return {**counts, "top_errors": dict(errors.most_common(top_k))}
