"""The bad-input matrix: every input a user can get wrong, what each entry point does with it.

One row per bad input (:data:`ROWS`): the files it needs (made by :data:`FILES` in the test's
temporary folder, ``{tmp}`` in the arguments), the command run in-process, the expected exit
code and a fragment of its one stderr line (or, for ``clean`` rows, the rows skipped and
counted), and that nothing was written (the workdir / output folder ``{tmp}/w`` does not
exist). Adding a row is one line. README's "Reliability" section is generated from this table
(``python -m tests.unit.test_bad_inputs`` prints it) and checked against it below.

Commands: ``pipeline`` = ``pipelines/full.py``'s ``main`` (fails in validation, before Ray
starts; an ``ENV:NAME=value`` argument sets an environment variable for the row); ``resources`` = the driver's check of a config's actor pools and Train jobs against
the joined cluster's ``ray.cluster_resources()`` (:data:`CLUSTER`: the tests' local Ray, no
Ray started here); ``segment``,
``runs``, ``bench``, ``report``, ``serve`` = ``python -m tools.<name>``; ``clean`` = the download stage's URL-list
pass (:func:`ovs.data.url_lists.clean`) on the ``download`` section the arguments configure;
``shard`` = reading a webdataset shard (:func:`ovs.data.shards.iter_shard`); ``resume`` = a
download rerun's broken-shard sweep; ``shard_map`` = the shard mapper's finished-output test;
``index`` = the training ingest's and OVSegmentor partners' header index of a shard
(:func:`ovs.data.ingest.tar_index`); ``precision`` = the pairs stage's per-shard precision
reader (:class:`ovs.pairs.precision.ShardPrecision`); ``items`` = the shard mapper's error for
items that failed on a damaged shard (:func:`pipelines.shard_map.items_failed`, from the
traceback an actor sends back); ``memory`` = the training loop's first-step memory check
(:func:`pipelines.loop.step_memory` around :func:`ovs.train.step.train_step`) on the configured
``train`` model and batch (``tests/unit/test_step_memory.py``); ``reuse`` = the driver's ``run_stage`` of the ``world``
stage on real MLflow (sqlite) over an output whose manifest records other code (``old/``,
made for the ``OLD`` arguments).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import os
import shlex
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.common import DEFAULT_CONFIG
from tests.golden.machine import REPO

URL = "http://127.0.0.1:9/img"
CLUSTER = {"CPU": 2.0, "memory": 4e9}  # ray.cluster_resources() of the tests' local Ray


def _tsv(rows: list[str]) -> bytes:
    return "".join(r + "\n" for r in rows).encode()


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _tar(n: int = 3) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            for ext, data in (("jpg", bytes(3000)), ("txt", b"a cat")):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# name (relative to the test's tmp folder) -> bytes; a name ending in "/" is a folder
FILES: dict[str, Callable[[], bytes]] = {
    "empty.csv": lambda: b"",
    "header_only.csv": lambda: b"url,caption\n",
    "no_caption.csv": lambda: b"url,text\nhttp://h/1.jpg,a cat\n",
    "headerless.tsv": lambda: _tsv([f"{URL}/1.jpg\ta cat", f"{URL}/2.jpg\ta dog"]),
    "three_fields.tsv": lambda: _tsv([f"{URL}/1.jpg\ta cat\textra"]),
    "zero_rows.parquet": lambda: _parquet(pa.table({"url": pa.array([], pa.string())})),
    "corrupt.parquet": lambda: b"PAR1 this is not parquet PAR1",
    "no_url.parquet": lambda: _parquet(pa.table({"link": ["x"], "caption": ["a"]})),
    "x.xlsx": lambda: b"PK\x03\x04",
    "mixed/a.parquet": lambda: _parquet(pa.table({"url": ["u"], "caption": ["c"]})),
    "mixed/b.tsv": lambda: b"url\tcaption\nhttp://h/1.jpg\ta cat\n",
    "empty_dir/": lambda: b"",
    "dup.tsv": lambda: _tsv([f"{URL}/1.jpg\ta cat", f"{URL}/1.jpg\ta cat", f"{URL}/2.jpg\tx"]),
    "nan.csv": lambda: (
        b'url,caption\nhttp://h/1.jpg,\nhttp://h/2.jpg,NaN\nhttp://h/3.jpg,"a dog"\n'
    ),
    "nan.parquet": lambda: _parquet(
        pa.table({"url": ["http://h/1", "http://h/2", None], "caption": [None, "a dog", "x"]})
    ),
    "latin1.tsv": lambda: (
        _tsv([f"{URL}/1.jpg\ta dog"]) + f"{URL}/2.jpg\tcaf\xe9\n".encode("latin-1")
    ),
    "long.tsv": lambda: _tsv([f"{URL}/1.jpg\t" + "a" * 100_000, f"{URL}/2.jpg\ta dog"]),
    "all_bad.tsv": lambda: _tsv([f"{URL}/1.jpg\t", "\ta dog"]),
    "ckpt_dir/": lambda: b"",
    "garbage.pt": lambda: b"not a torch checkpoint",
    "image.png": lambda: bytes.fromhex(  # a 1x1 PNG
        "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408"
        "d763f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
    ),
    "truncated/00000.tar": lambda: _tar()[:5000],
    "truncated/00000_stats.json": lambda: b'{"count": 3}',
    "cut_at_member/00000.tar": lambda: _tar()[: 512 * 8],
    "at_boundary/00000.tar": lambda: _tar()[: 512 + 3072 + 512 + 512],  # after sample 0
    "pairs/00000.parquet": lambda: _parquet(
        pa.table({"key": ["000000000"], "noun": ["cat"], "mask_id": [0], "score": [0.9]})
    ),
    "pairs/masks.parquet": lambda: _parquet(
        pa.table({"key": ["000000000"], "label_png": [b""], "k": [2], "status": ["ok"]})
    ),
    "notatar/00000.tar": lambda: b"\x00garbage" * 10,
    "corrupt_output.parquet": lambda: b"PAR1\x00\x00 cut short by a kill",
    "old/": lambda: b"",  # made by _old_output
}

OLD = "workdir={tmp}/old pipeline.stages=[world] world.num_train=16 world.num_eval=4"
OLD_CODE = {"git_commit": "0123456789abcdef" * 2 + "01234567", "code_hash": "feedbeef"}
DL = "pipeline.stages=[download]"  # only the download stage: no world, so the list is checked
ONE = "download.header=false"


@dataclass(frozen=True)
class Row:
    id: str
    what: str  # the bad input, as README shows it
    command: str
    args: tuple[str, ...]
    code: int  # expected exit code (clean/shard/resume/shard_map rows: 0)
    expect: str  # fragment of the stderr line; for clean rows "reason=n,..." skipped counts
    files: tuple[str, ...] = ()


def R(id, what, command, args, code, expect, *files):  # noqa: N802 (one short line per row)
    return Row(id, what, command, tuple(shlex.split(args)), code, expect, files)


P, W = "pipeline", "workdir={tmp}/w"
ROWS: list[Row] = [
    # --- config paths (pipeline, before anything is written)
    R("url-list-missing", "URL list that does not exist", P, f"{W} download.url_list=[/nonexistent.parquet]", 2, "download.url_list: /nonexistent.parquet: no such file"),
    R("url-list-glob-none", "URL-list glob matching nothing", P, f"{W} {DL} download.url_list=[{{tmp}}/*.tsv.gz]", 2, "matches no file"),
    R("url-list-empty-dir", "URL-list folder with no files", P, f"{W} {DL} download.url_list=[{{tmp}}/empty_dir]", 2, "holds no URL list", "empty_dir/"),
    R("url-list-mixed", "folder mixing parquet and tsv lists", P, f"{W} {DL} download.url_list=[{{tmp}}/mixed]", 2, "mix formats", "mixed/a.parquet", "mixed/b.tsv"),
    R("url-list-format", "URL list of unknown format (.xlsx)", P, f"{W} {DL} download.url_list=[{{tmp}}/x.xlsx]", 2, "cannot infer URL list format", "x.xlsx"),
    R("url-list-empty", "empty csv", P, f"{W} {DL} download.url_list=[{{tmp}}/empty.csv]", 2, "empty.csv: empty file", "empty.csv"),
    R("url-list-header-only", "csv with a header and no rows", P, f"{W} {DL} download.url_list=[{{tmp}}/header_only.csv]", 2, "a header row and no rows", "header_only.csv"),
    R("url-list-no-caption", "csv without the caption column", P, f"{W} {DL} download.url_list=[{{tmp}}/no_caption.csv]", 2, "no_caption.csv: no column 'caption'", "no_caption.csv"),
    R("url-list-headerless", "headerless TSV read as if it had a header", P, f"{W} {DL} download.url_list=[{{tmp}}/headerless.tsv]", 2, "looks like data", "headerless.tsv"),
    R("url-list-columns", "headerless TSV with more fields than download.columns", P, f"{W} {DL} {ONE} download.columns=[url,caption] download.url_list=[{{tmp}}/three_fields.tsv]", 2, "first row has 3 fields", "three_fields.tsv"),
    R("url-list-zero-rows", "parquet list with no rows", P, f"{W} {DL} download.url_list=[{{tmp}}/zero_rows.parquet]", 2, "zero_rows.parquet: no rows", "zero_rows.parquet"),
    R("url-list-corrupt", "parquet list that is not parquet", P, f"{W} {DL} download.url_list=[{{tmp}}/corrupt.parquet]", 2, "not a readable parquet file", "corrupt.parquet"),
    R("url-list-no-url", "parquet list without the url column", P, f"{W} {DL} download.url_list=[{{tmp}}/no_url.parquet]", 2, "no column 'url'", "no_url.parquet"),
    R("benchmark-root", "benchmark root that does not exist", P, f"{W} pipeline.stages=[evaluate] 'evaluate.datasets=[{{name: voc21, root: /nope/VOC2012}}]'", 2, "benchmark data missing at root '/nope/VOC2012'"),
    R("checkpoint-missing", "pairs checkpoint that does not exist", P, f"{W} pipeline.stages=[pairs] pairs.checkpoint=/nope/latest.pt", 2, "pairs.checkpoint: /nope/latest.pt: no such file"),
    R("weights-missing", "DINO weight file that does not exist", P, f"{W} pipeline.stages=[pseudo_masks] pseudo_masks.checkpoint={{tmp}}/dino.pth", 2, "pseudo_masks.checkpoint:"),
    R("weights-dir", "backbone weights given as a folder", P, f"{W} pipeline.stages=[train] train.sseg.model.maskformer.checkpoint={{tmp}}/ckpt_dir", 2, "is a directory, not a file", "ckpt_dir/"),
    R("workdir-file", "workdir under a regular file", P, "workdir={tmp}/empty.csv/w", 2, "is not writable", "empty.csv"),
    R("ray-address", "ray.address nobody listens on", P, f"{W} ray.address=127.0.0.1:9", 2, "cannot reach the Ray cluster at 127.0.0.1:9"),
    R("ray-address-form", "ray.address that is not host:port", P, f"{W} ray.address=nowhere", 2, "is not host:port"),
    R("mlflow-server", "MLflow tracking server nobody listens on", P, f"{W} ENV:MLFLOW_TRACKING_URI=http://127.0.0.1:9", 2, "MLflow tracking server http://127.0.0.1:9 is unreachable"),
    R("mlflow-sqlite-dir", "MLflow sqlite store in a folder that does not exist", P, f"{W} ENV:MLFLOW_TRACKING_URI=sqlite:///{{tmp}}/nodir/m.db", 2, "nodir is not writable"),
    R("unknown-key", "unknown key (already caught; the speed reference)", P, f"{W} download.nope=1", 2, "download.nope: unknown key"),
    # --- resources: the driver's check against the joined cluster (here: 2 CPUs, no GPU)
    R("too-many-gpus", "more GPUs than the cluster has", "resources", "pipeline.stages=[pseudo_masks] pseudo_masks.num_gpus=1.0", 2, "pseudo_masks.num_actors: asks for 1 GPUs at once, the Ray cluster has 0"),
    R("too-many-workers", "more training workers than CPUs", "resources", "pipeline.stages=[train] train.num_workers=8", 2, "train.num_workers: asks for 8 CPUs at once, the Ray cluster has 2"),
    R("batch-too-large", "training batch whose step needs more memory than the rank has", "memory", "train.memory_budget_mb=150", 2, "train.batch_size=32 does not fit in memory: one training step needs at least"),
    R("too-many-actors", "more evaluation actors than CPUs", "resources", "pipeline.stages=[evaluate] evaluate.num_actors=3", 2, "evaluate.num_actors: asks for 3 CPUs at once"),
    # --- URL-list rows: skipped and counted by the download stage (shown in its manifest counts)
    R("rows-duplicate", "duplicate URLs", "clean", f"{ONE} download.columns=[url,caption] download.url_list=[{{tmp}}/dup.tsv]", 0, "duplicate_url=1", "dup.tsv"),
    R("rows-nan-csv", "empty and NaN captions (csv)", "clean", "download.url_list=[{tmp}/nan.csv]", 0, "missing_caption=2", "nan.csv"),
    R("rows-nan-parquet", "null captions and URLs (parquet)", "clean", "download.url_list=[{tmp}/nan.parquet]", 0, "missing_caption=1,missing_url=1", "nan.parquet"),
    R("rows-latin1", "non-UTF-8 caption bytes", "clean", f"{ONE} download.columns=[url,caption] download.url_list=[{{tmp}}/latin1.tsv]", 0, "not_utf8=1", "latin1.tsv"),
    R("rows-long", "100k-character caption", "clean", f"{ONE} download.columns=[url,caption] download.url_list=[{{tmp}}/long.tsv]", 0, "caption_too_long=1", "long.tsv"),
    R("rows-all-bad", "a list whose every row is skipped", "clean", f"{ONE} download.columns=[url,caption] download.url_list=[{{tmp}}/all_bad.tsv]", 2, "every row was skipped", "all_bad.tsv"),
    # --- shards and stage outputs on disk
    R("shard-truncated", "finished shard whose tar was cut short", "shard", "{tmp}/truncated/00000.tar", 2, "is truncated or corrupt", "truncated/00000.tar"),
    R("shard-not-tar", "shard that is not a tar", "shard", "{tmp}/notatar/00000.tar", 2, "is truncated or corrupt", "notatar/00000.tar"),
    R("shard-resume", "truncated shard with _stats.json on a download rerun: redone", "resume", "{tmp}/truncated", 0, "00000_stats.json", "truncated/00000.tar", "truncated/00000_stats.json"),
    R("shard-no-stats", "shard without _stats.json (killed mid-write): never read", "resume", "{tmp}/cut_at_member", 0, "", "cut_at_member/00000.tar"),
    R("index-truncated", "training ingest indexing a shard cut short", "index", "{tmp}/truncated/00000.tar", 2, "is truncated or corrupt", "truncated/00000.tar"),
    R("index-cut-at-member", "training ingest indexing a shard cut at a member boundary", "index", "{tmp}/at_boundary/00000.tar", 2, "no end-of-archive marker", "at_boundary/00000.tar"),
    R("precision-truncated", "pairs precision reading a shard cut short", "precision", "{tmp}/pairs/00000.parquet {tmp}/pairs/masks.parquet {tmp}/truncated/00000.tar", 2, "is truncated or corrupt", "pairs/00000.parquet", "pairs/masks.parquet", "truncated/00000.tar"),
    R("shard-map-damaged", "shard mapper items failing on damaged shards: one line, no traceback", "items", "{tmp}/truncated/00000.tar", 2, "1 shards failed on damaged shards (00000); first, 00000: shard", "truncated/00000.tar"),
    R("reuse-other-code-warn", "output made by other code, pipeline.reuse_other_code=warn (default)", "reuse", OLD, 0, "kept: [world] reusing", "old/", "m.db"),
    R("reuse-other-code-redo", "output made by other code, pipeline.reuse_other_code=redo", "reuse", f"{OLD} pipeline.reuse_other_code=redo", 0, "recomputed: [world] redoing", "old/", "m.db"),
    R("reuse-other-code-refuse", "output made by other code, pipeline.reuse_other_code=refuse", P, f"{OLD} pipeline.reuse_other_code=refuse", 2, "was made by other code: commit 0123456789ab", "old/"),
    R("reuse-policy", "unknown pipeline.reuse_other_code", P, f"{W} pipeline.reuse_other_code=keep", 2, "pipeline.reuse_other_code must be one of ['warn', 'refuse', 'redo']"),
    R("output-corrupt", "stage output parquet left corrupt: deleted and redone", "shard_map", "{tmp}/corrupt_output.parquet", 0, "redo", "corrupt_output.parquet"),
    # --- command-line tools
    R("segment-no-classes", "segment: empty vocabulary", "segment", "{tmp}/image.png --classes , --method clip --out {tmp}/w", 2, "--classes is empty", "image.png"),
    R("segment-no-image", "segment: image file that does not exist", "segment", "{tmp}/nope.jpg --classes cat --method clip --out {tmp}/w", 2, "image file(s) not found"),
    R("segment-method", "segment: unknown method name", "segment", "{tmp}/image.png --classes cat --method nope --out {tmp}/w", 2, "invalid choice: 'nope'", "image.png"),
    R("segment-checkpoint", "segment: checkpoint that does not exist", "segment", "{tmp}/image.png --classes cat --checkpoint {tmp}/nope.pt --out {tmp}/w", 2, "does not exist", "image.png"),
    R("segment-garbage", "segment: checkpoint file that is not one", "segment", "{tmp}/image.png --classes cat --checkpoint {tmp}/garbage.pt --out {tmp}/w", 2, "cannot load checkpoint", "image.png", "garbage.pt"),
    R("segment-run-id", "segment: MLflow run id that does not exist", "segment", "{tmp}/image.png --classes cat --checkpoint 0123456789abcdef0123456789abcdef --tracking-uri sqlite:///{tmp}/m.db --out {tmp}/w", 2, "Run with id=0123456789abcdef0123456789abcdef not found", "image.png", "m.db"),
    R("segment-run-store", "segment: run id looked up in a database that does not exist", "segment", "{tmp}/image.png --classes cat --checkpoint 0123456789abcdef0123456789abcdef --tracking-uri sqlite:///{tmp}/none.db --out {tmp}/w", 2, "no MLflow database at", "image.png"),
    R("segment-protocol", "segment: unknown protocol", "segment", "{tmp}/image.png --classes cat --method clip --protocol nope --out {tmp}/w", 2, "unknown protocol 'nope'", "image.png"),
    R("segment-out", "segment: output folder under a file", "segment", "{tmp}/image.png --classes cat --method clip --out {tmp}/image.png/w", 2, "is not a directory", "image.png"),
    R("runs-experiment", "runs: experiment that does not exist", "runs", "compare --experiment nope --tracking-uri sqlite:///{tmp}/m.db", 2, "no MLflow experiment 'nope'", "m.db"),
    R("runs-store", "runs: tracking database that does not exist", "runs", "compare --tracking-uri sqlite:///{tmp}/none.db", 2, "no such database file"),
    R("runs-server", "runs: tracking server nobody listens on", "runs", "compare --tracking-uri http://127.0.0.1:9", 2, "MLflow store http://127.0.0.1:9"),
    R("report-run-id", "report: run id that does not exist", "report", "0123456789abcdef0123456789abcdef --tracking-uri sqlite:///{tmp}/m.db --out {tmp}/w/r.html", 2, "Run with id=0123456789abcdef0123456789abcdef not found", "m.db"),
    R("report-store", "report: tracking database that does not exist (not created)", "report", "--tracking-uri sqlite:///{tmp}/w/none.db --out {tmp}/w/r.html", 2, "no MLflow database at sqlite:///"),
    R("report-no-runs", "report: store without pipeline runs", "report", "--tracking-uri sqlite:///{tmp}/m.db --out {tmp}/w/r.html", 2, "no pipeline run recorded in this MLflow store", "m.db"),
    R("serve-checkpoint", "serve: checkpoint that does not exist", "serve", "--checkpoint {tmp}/nope.pt", 2, "does not exist"),
    R("serve-garbage", "serve: checkpoint file that is not one (before Ray starts)", "serve", "--checkpoint {tmp}/garbage.pt", 2, "cannot load checkpoint", "garbage.pt"),
    R("serve-run-id", "serve: MLflow run id that does not exist", "serve", "--checkpoint 0123456789abcdef0123456789abcdef --tracking-uri sqlite:///{tmp}/m.db", 2, "Run with id=0123456789abcdef0123456789abcdef not found", "m.db"),
    R("serve-method", "serve: unknown method name", "serve", "--method nope", 2, "invalid choice: 'nope'"),
    R("serve-port", "serve: port out of range", "serve", "--method clip --port 70000", 2, "serve.port must be 1..65535, got 70000"),
    R("bench-name", "bench: unknown benchmark name", "bench", "nope", 2, "usage: python -m tools.bench"),
]  # fmt: skip


# ----------------------------------------------------------------------------- running a row


def _make_files(tmp: Path, names: tuple[str, ...]) -> None:
    for name in names:
        path = tmp / name
        if name == "old/":  # the world stage's finished output (for OLD), made by other code
            _old_output(tmp)
        elif name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        elif name == "m.db":  # an MLflow store with only the default experiment
            shutil.copy(_empty_mlflow_db(), path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(FILES[name]())


@functools.cache
def _empty_mlflow_db() -> Path:
    """One new MLflow sqlite store per module (creating its tables takes seconds)."""
    from mlflow.tracking import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="bad-inputs-")) / "m.db"
    atexit.register(shutil.rmtree, path.parent, True)
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def _old_output(tmp: Path) -> None:
    from ovs.stage import resolve, write_manifest
    from pipelines.graph import STAGES, load_config

    args = [a.replace("{tmp}", str(tmp)) for a in shlex.split(OLD)]
    out = resolve(STAGES, "world", load_config(DEFAULT_CONFIG, args)).out_dir
    out.mkdir(parents=True)
    (out / "left-by-old-code.txt").write_text("x")
    write_manifest(out, {"stage": "world", "counts": {}, "metrics": {}, "code": OLD_CODE})


def _reuse(args: list[str], tmp: Path) -> tuple[int, str]:
    """``run_stage`` of ``world`` over ``old/``: ``kept``/``recomputed`` and the driver's log."""
    import logging

    from mlflow.tracking import MlflowClient

    from pipelines.common import run_stage
    from pipelines.graph import STAGES, load_config

    cfg = load_config(DEFAULT_CONFIG, args)
    client = MlflowClient(f"sqlite:///{tmp / 'm.db'}")
    parent = client.create_run("0").info.run_id
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logger = logging.getLogger("ovs")
    logger.addHandler(handler)
    try:
        m = run_stage(STAGES, "world", cfg, False, client, "0", parent, "")
    finally:
        logger.removeHandler(handler)
    out = next((tmp / "old" / "world").iterdir())
    kept = m["code"] == OLD_CODE and (out / "left-by-old-code.txt").exists()
    assert kept or (m["code"] != OLD_CODE and not (out / "left-by-old-code.txt").exists())
    return 0, ("kept: " if kept else "recomputed: ") + log.getvalue()


def _call(fn: Callable[[], int | None]) -> int:
    try:
        return int(fn() or 0)
    except SystemExit as e:  # argparse
        return int(e.code or 0)


def _clean(args: list[str], tmp: Path) -> tuple[int, str]:
    from ovs.data.url_lists import UrlListError, clean
    from pipelines.graph import load_config

    cfg = load_config(DEFAULT_CONFIG, args).download
    out = tmp / "out"
    out.mkdir()
    try:
        result = clean(cfg, out)
    except UrlListError as e:
        return 2, str(e)
    skipped = result[2] if result else {}
    assert (
        result is not None and pq.read_table(Path(result[0]) / "00000-00000.parquet").num_rows > 0
    )
    return 0, ",".join(f"{k}={v}" for k, v in sorted(skipped.items()))


def run_row(row: Row, tmp: Path) -> tuple[int, str]:
    """``(exit code, stderr or the counted result)`` of one row, run in-process."""
    _make_files(tmp, row.files)
    args = [a.replace("{tmp}", str(tmp)) for a in row.args]
    env = dict(a[len("ENV:") :].split("=", 1) for a in args if a.startswith("ENV:"))
    args = [a for a in args if not a.startswith("ENV:")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), mock.patch.dict(os.environ, env):
        if row.command.startswith("pipeline"):
            from pipelines.common import main

            code = _call(lambda: main(None, args))
        elif row.command == "segment":
            from tools.segment import main as segment

            code = _call(lambda: segment(args))
        elif row.command == "runs":
            from tools.runs import main as runs

            code = _call(lambda: runs(args))
        elif row.command == "report":
            from tools.report.__main__ import main as report

            code = _call(lambda: report(args))
        elif row.command == "serve":
            from tools.serve.__main__ import main as serve

            code = _call(lambda: serve(args))
        elif row.command == "bench":
            from tools.bench.__main__ import main as bench

            code = _call(lambda: bench(args))
        elif row.command == "clean":
            return _clean(args, tmp)
        elif row.command == "resources":
            from pipelines.common import PipelineError, check_resources
            from pipelines.graph import load_config

            cfg = load_config(DEFAULT_CONFIG, args)
            try:
                check_resources(cfg, list(cfg.pipeline.stages), CLUSTER)
            except PipelineError as e:
                return 2, str(e)
            return 0, ""
        elif row.command == "shard":
            from ovs.data.shards import ShardError, iter_shard

            try:
                list(iter_shard(args[0]))
            except ShardError as e:
                return 2, str(e)
            return 0, ""
        elif row.command == "memory":
            from ovs.train.memory import BatchTooLarge
            from tests.unit.test_step_memory import first_step

            try:
                first_step(args)
            except BatchTooLarge as e:
                return 2, str(e)
            return 0, ""
        elif row.command == "precision":
            from ovs.data.shards import ShardError
            from ovs.pairs.precision import ShardPrecision

            try:
                ShardPrecision(str(tmp), {"cat": 0}, 0.0)(*args)
            except ShardError as e:
                return 2, str(e)
            return 0, ""
        elif row.command == "items":  # the traceback a shard-mapper actor sends back
            import traceback

            from ovs.data.shards import iter_shard
            from pipelines.shard_map import DamagedShards, items_failed

            try:
                list(iter_shard(args[0]))
                return 0, ""
            except Exception:  # noqa: BLE001 - what the actor catches
                error = items_failed({Path(args[0]).stem: traceback.format_exc()}, "shards")
            assert isinstance(error, DamagedShards)
            return 2, str(error)
        elif row.command == "index":
            from ovs.data.ingest import tar_index
            from ovs.data.shards import ShardError

            try:
                tar_index(args[0])
            except ShardError as e:
                return 2, str(e)
            return 0, ""
        elif row.command == "reuse":
            return _reuse(args, tmp)
        elif row.command == "resume":
            from ovs.data.download import _drop_broken_shards
            from ovs.data.shards import list_shards

            dropped = _drop_broken_shards(Path(args[0]))
            assert list_shards(args[0]) == []  # nothing broken is left to be read
            return 0, ",".join(dropped)
        elif row.command == "shard_map":
            from pipelines.shard_map import _finished

            assert not _finished(args[0]) and not Path(args[0]).exists()
            return 0, "redo"
        else:
            raise AssertionError(row.command)
    return code, err.getvalue()


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, out = run_row(row, tmp_path)
    assert code == row.code, out
    assert row.expect in out, out
    if code != 0:
        lines = out.strip().splitlines()
        assert "Traceback" not in out
        if lines[0].startswith("usage:") and len(lines) > 1:  # argparse: usage, then the error
            assert "error:" in lines[-1] and row.expect in lines[-1], out
        else:
            assert len(lines) == 1, out
    assert not (tmp_path / "w").exists()  # nothing written


# ----------------------------------------------------------------------------- README summary

BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"


def readme_block() -> str:
    """The README table of :data:`ROWS` (what the test asserts, one line per row)."""
    lines = [
        f"`tests/unit/test_bad_inputs.py` holds {len(ROWS)} rows, all green:",
        "",
        "| input | command | result |",
        "|---|---|---|",
    ]
    for r in ROWS:
        if r.command == "clean" and r.code == 0:
            result = f"skipped, counted: `{r.expect}`"
        elif r.command == "reuse":
            result = "reused, warned naming both versions" if "kept" in r.expect else "redone"
        elif r.command == "memory":
            result = "refused in step 1's forward, one message naming the batch key"
        elif r.command in ("clean", "shard", "index", "precision", "items") and r.code != 0:
            result = "refused, one message naming the file"
        elif r.code == 0:
            result = "redone" if r.command != "resume" or r.expect else "never read"
        else:
            result = f"exit {r.code}"
        lines.append(f"| {r.what} | {r.command} | {result} |")
    return "\n".join(lines)


def test_readme_summarises_the_table() -> None:
    text = (REPO / "README.md").read_text()
    assert BEGIN in text and END in text, "README.md lacks the bad-inputs block"
    got = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert got == readme_block(), "regenerate with: python -m tests.unit.test_bad_inputs"


def test_row_ids_are_unique_and_files_defined() -> None:
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert all(f in FILES or f == "m.db" for r in ROWS for f in r.files)


if __name__ == "__main__":
    print(readme_block())


def test_lists_a_world_stage_of_the_same_run_exports_are_checked_only_without_it(tmp_path) -> None:
    """``conf/cc12m_local.yaml`` reads a URL list its world stage writes: not checked when the
    world stage runs first in the same invocation, checked (and missing) when it does not."""
    from ovs.data.url_lists import UrlListError
    from pipelines.common import preflight
    from pipelines.graph import load_config

    cfg = load_config(REPO / "conf" / "cc12m_local.yaml", [f"workdir={tmp_path}"])
    preflight(cfg, ["world", "download"])
    with pytest.raises(UrlListError, match="cc12m.tsv: no such file"):
        preflight(cfg, ["download"])
    assert list(tmp_path.iterdir()) == []
