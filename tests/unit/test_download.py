"""img2dataset wrapper against a loopback HTTP server + file:// URLs: counts, exactly-once
arrival of every good image, and resume after a simulated kill.

Each ``download`` call spawns img2dataset workers that import torch (~5 s each here), so the
whole scenario runs in one test with two calls.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ovs.data.download import DownloadConfig, _resolve_url_list, download, infer_format

SLOW_S = 4.0  # server delay for /slow.jpg, beyond the 1 s timeout


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


GOOD = {f"/good/{i}.jpg": _jpeg(i) for i in range(8)}
TRUNCATED = _jpeg(99)[:120]  # SOI + part of the header: undecodable


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path in GOOD:
            self._send(200, GOOD[self.path], "image/jpeg")
        elif self.path == "/truncated.jpg":
            self._send(200, TRUNCATED, "image/jpeg")
        elif self.path == "/page.html":
            self._send(200, b"<html><body>not an image</body></html>", "text/html")
        elif self.path == "/slow.jpg":
            time.sleep(SLOW_S)
            try:
                self._send(200, GOOD["/good/0.jpg"], "image/jpeg")
            except OSError:  # the client gave up
                pass
        else:
            self._send(404, b"missing", "text/plain")


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _world(base: str, tmp: Path) -> tuple[list[dict], dict[str, bytes]]:
    """URL rows and caption -> bytes of every image that must arrive."""
    good = {f"http {p}": b for p, b in GOOD.items()}
    rows = [{"url": f"{base}{p}", "caption": f"http {p}"} for p in GOOD]
    (tmp / "imgs").mkdir()
    for i in range(3):
        f = tmp / "imgs" / f"{i}.jpg"
        f.write_bytes(_jpeg(100 + i))
        rows.append({"url": f.as_uri(), "caption": f"file {i}"})
        good[f"file {i}"] = _jpeg(100 + i)
    rows += [
        {"url": f"{base}/missing/1.jpg", "caption": "a 404"},
        {"url": f"{base}/truncated.jpg", "caption": "a truncated jpeg"},
        {"url": f"{base}/page.html", "caption": "an html page"},
        {"url": f"{base}/slow.jpg", "caption": "too slow"},
        {"url": (tmp / "imgs" / "nope.jpg").as_uri(), "caption": "missing file"},
        {"url": f"{base}/missing/2.jpg", "caption": "another 404"},
    ]
    return rows, good


def _arrived(out: Path) -> dict[str, list[str]]:
    """caption -> sha256 of the original bytes, once per sample found in a finished shard."""
    meta = {}
    for p in sorted(out.glob("*_stats.json")):
        for r in pq.read_table(p.with_name(p.name[:5] + ".parquet")).to_pylist():
            meta[r["key"]] = r
    seen: dict[str, list[str]] = {}
    for stats in sorted(out.glob("*_stats.json")):
        with tarfile.open(stats.with_name(stats.name[:5] + ".tar")) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".txt"):
                    cap = tar.extractfile(m).read().decode()  # type: ignore[union-attr]
                    key = m.name[: -len(".txt")]
                    assert meta[key]["status"] == "success"
                    seen.setdefault(cap, []).append(meta[key]["sha256"])
    return seen


def _check(out: Path, counts: dict, good: dict[str, bytes]) -> None:
    assert counts["count"] == 17
    assert counts["success"] == len(good) == 11
    assert counts["failed_to_download"] == 4  # two 404s, the timeout, the missing file
    assert counts["failed_to_resize"] == 2  # truncated jpeg, html body
    assert counts["shards"] == 5  # file a: 9 rows -> 3 shards, file b: 8 rows -> 2 shards
    errs = counts["top_errors"]
    assert errs["HTTP Error 404: Not Found"] == 2
    assert sum(n for m, n in errs.items() if "timed out" in m) == 1
    assert sum(n for m, n in errs.items() if "No such file" in m) == 1
    assert sum(errs.values()) == 6
    # every good image arrived exactly once, byte-identical before re-encoding
    want = {cap: [hashlib.sha256(b).hexdigest()] for cap, b in good.items()}
    assert _arrived(out) == want


def test_download_counts_exactly_once_and_resume(server: str, tmp_path: Path) -> None:
    rows, good = _world(server, tmp_path)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"  # two lists of one format, read in order
    a.write_text("".join(json.dumps(r) + "\n" for r in rows[:9]))
    b.write_text("".join(json.dumps(r) + "\n" for r in rows[9:]))
    cfg = DownloadConfig(
        url_list=[str(a), str(b)],
        image_size=16,
        processes_count=1,
        thread_count=8,
        timeout=1,
        number_sample_per_shard=4,
    )
    out = tmp_path / "out"
    _check(out, download(cfg, out), good)
    assert sorted(p.name for p in out.glob("*.tar")) == [f"0000{i}.tar" for i in range(5)]
    with tarfile.open(out / "00000.tar") as tar:
        assert {n.rsplit(".", 1)[1] for n in tar.getnames()} == {"jpg", "txt", "json"}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}

    # Simulate a kill: the last shard died mid-write (no stats, tar cut short) and shard 1
    # died while img2dataset was writing its (non-atomic) stats file.
    (out / "00004_stats.json").unlink()
    (out / "00004.tar").write_bytes((out / "00004.tar").read_bytes()[:700])
    (out / "00001_stats.json").write_text('{"count": 4, "succ')
    _check(out, download(cfg, out), good)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    for name in ("00000.tar", "00002.tar", "00003.tar"):
        assert after[name] == mtimes[name]  # finished shards are not redone
    for name in ("00001.tar", "00004.tar"):
        assert after[name] != mtimes[name]


def test_url_list_resolution(tmp_path: Path) -> None:
    assert [infer_format(x) for x in ("a.parquet", "b.TSV", "c.csv.gz", "d.jsonl")] == [
        "parquet",
        "tsv",
        "csv.gz",
        "jsonl",
    ]
    with pytest.raises(ValueError):
        infer_format("e.xlsx")
    pq.write_table(pa.table({"url": ["file:///x"]}), tmp_path / "x.parquet")
    (tmp_path / "y.tsv").write_text("url\nfile:///y\n")
    cfg = DownloadConfig(url_list=[str(tmp_path / "x.parquet"), str(tmp_path / "y.tsv")])
    with pytest.raises(ValueError, match="mix formats"):
        _resolve_url_list(cfg, tmp_path / "out")
    cfg.url_list = [str(tmp_path / "x.parquet")]
    assert _resolve_url_list(cfg, tmp_path / "out") == (str(tmp_path / "x.parquet"), "parquet")
    cfg.url_list = [str(tmp_path)]  # a folder: format from its files
    cfg.input_format = "tsv"
    assert _resolve_url_list(cfg, tmp_path / "out") == (str(tmp_path), "tsv")
    with pytest.raises(ValueError, match="empty"):
        _resolve_url_list(DownloadConfig(), tmp_path / "out")


def test_headerless_tsv_through_img2dataset(server: str, tmp_path: Path) -> None:
    """A cc12m.tsv-like list (url<TAB>caption, no header row, a caption with a stray quote)
    goes through img2dataset unchanged; rerunning keeps the converted list and the shards."""
    rows, good = _world(server, tmp_path)
    rows = [r for r in rows if r["caption"].startswith(("http", "file"))]  # the good ones
    rows[0]["caption"] = '"quoted at the start'
    good['"quoted at the start'] = good.pop(f"http {next(iter(GOOD))}")
    tsv = tmp_path / "cc12m.tsv"
    lines = [f"{r['url']}\t{r['caption']}\n" for r in rows]
    tsv.write_text("".join(lines + lines[-1:]))  # + a duplicate URL: dropped and counted
    assert not tsv.read_text().startswith("url")  # really headerless
    cfg = DownloadConfig(
        url_list=[str(tsv)],
        header=False,
        columns=["url", "caption"],
        image_size=16,
        resize_mode="keep_ratio",
        processes_count=1,
        thread_count=4,
        number_sample_per_shard=8,
    )
    out = tmp_path / "out"
    counts = download(cfg, out)
    assert counts["count"] == len(rows) == 11 and counts["success"] == 11
    assert counts["shards"] == 2
    assert counts["skipped_duplicate_url"] == 1  # in the download manifest's counts
    want = {cap: [hashlib.sha256(b).hexdigest()] for cap, b in good.items()}
    assert _arrived(out) == want
    converted = out / "_url_lists" / "00000-00000.parquet"
    assert pq.read_table(converted).column_names == ["url", "caption"]
    assert pq.read_table(converted).num_rows == 11  # the first line is a sample, not a header
    mtime = converted.stat().st_mtime_ns
    again = download(cfg, out)
    assert again["success"] == 11 and again["skipped_duplicate_url"] == 1  # cached counts
    assert converted.stat().st_mtime_ns == mtime  # up to date: not converted again


def test_headerless_config_validation(tmp_path: Path) -> None:
    ok = DownloadConfig(url_list=["/x/cc12m.tsv"], header=False, columns=["url", "caption"])
    ok.validate()
    assert ok.columns == ["url", "caption"]
    with pytest.raises(ValueError, match="set download.columns"):
        DownloadConfig(url_list=["/x/a.tsv"], header=False).validate()
    with pytest.raises(ValueError, match="no column 'caption'"):
        DownloadConfig(url_list=["/x/a.tsv"], header=False, columns=["url", "text"]).validate()
    with pytest.raises(ValueError, match="unique"):
        DownloadConfig(
            url_list=["/x/a.tsv"], header=False, columns=["url", "caption", "url"]
        ).validate()
    with pytest.raises(ValueError, match="is for"):
        DownloadConfig(
            url_list=["/x/a.parquet"], header=False, columns=["url", "caption"]
        ).validate()
    with pytest.raises(ValueError, match="local"):
        DownloadConfig(
            url_list=["https://h/a.tsv"], header=False, columns=["url", "caption"]
        ).validate()
    with pytest.raises(ValueError, match="only for header: false"):
        DownloadConfig(url_list=["/x/a.tsv"], columns=["url", "caption"]).validate()


def test_url_set_finds_the_duplicates_a_python_set_finds():
    """``UrlSet`` (sorted hash runs, 8 bytes per URL) against a plain ``set``: 60 batches of
    random URLs from a small pool (duplicates within and across batches), the same rows new."""
    from ovs.data.url_lists import UrlSet

    rng = np.random.default_rng(0)
    pool = [f"https://x.example/{i}.jpg" for i in range(3000)]
    urls, ref = UrlSet(), set()
    for b in range(60):
        batch = [pool[i] for i in rng.integers(0, len(pool), int(rng.integers(0, 200)))]
        want = []
        for u in batch:
            want.append(u not in ref)
            ref.add(u)
        assert urls.add_new(batch).tolist() == want, f"batch {b}"
        assert len(urls) == len(ref)
    assert len(urls._runs) <= 12  # merged: O(log batches) runs, not one per batch


def test_a_long_url_list_reaches_img2dataset_in_whole_shard_parts(tmp_path):
    """``download.list_chunk_rows``: a 23-row list with nothing to drop is still given to
    img2dataset in parts (img2dataset reads each list file whole), of 8 rows (10 rounded down to
    whole 4-sample shards), in order, every row once; a short list goes as it is."""
    from ovs.data.url_lists import clean

    urls = [f"https://x.example/{i}.jpg" for i in range(23)]
    src = tmp_path / "list.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [f"c {i}" for i in range(23)]}), src)
    cfg = DownloadConfig(url_list=[str(src)], number_sample_per_shard=4, list_chunk_rows=10)
    folder, fmt, skipped = clean(cfg, tmp_path / "out")
    parts = sorted(Path(folder).glob("*.parquet"))
    assert fmt == "parquet" and skipped == {}
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [8, 8, 7]
    assert [u for p in parts for u in pq.read_table(p).column("url").to_pylist()] == urls
    short = DownloadConfig(url_list=[str(src)], number_sample_per_shard=4, list_chunk_rows=100)
    assert clean(short, tmp_path / "out2") is None


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv.gz", "jsonl", "jsonl.gz"])
def test_a_url_list_is_cleaned_in_batches_of_bounded_rows(tmp_path, fmt):
    """``url_lists._batches`` streams a list in batches of at most the asked rows in every
    format (a list is never held whole), every row once and in order; a jsonl list whose first
    block has only null captions still reads its later text captions."""
    import gzip

    from ovs.data.url_lists import _batches

    n = 2000
    urls = [f"https://x.example/{i}.jpg" for i in range(n)]
    caps = [None] * 1500 + [f"a caption {i}" for i in range(1500, n)]
    src = tmp_path / f"list.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table({"url": urls, "caption": caps}), src)
    else:
        if fmt.startswith("jsonl"):
            lines = [
                json.dumps({"url": u, "caption": c, "n": i})
                for i, (u, c) in enumerate(zip(urls, caps))
            ]
        else:
            sep = "\t" if fmt.startswith("tsv") else ","
            lines = ["url" + sep + "caption"] + [f"{u}{sep}{c or ''}" for u, c in zip(urls, caps)]
        data = ("\n".join(lines) + "\n").encode()
        src.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    cfg = DownloadConfig(url_list=[str(src)], header=True)
    if fmt.startswith("jsonl"):  # a small block: the first block holds only null captions
        import pyarrow.json as pjson

        real = pjson.ReadOptions
        pjson.ReadOptions = lambda block_size: real(block_size=4096)  # type: ignore[assignment]
        try:
            batches = list(_batches(str(src), fmt, cfg, 300))
        finally:
            pjson.ReadOptions = real  # type: ignore[assignment]
    else:
        batches = list(_batches(str(src), fmt, cfg, 300))
    assert batches and max(b.num_rows for b in batches) <= 300
    got = [
        u.decode() if isinstance(u, bytes) else u
        for b in batches
        for u in b.column("url").to_pylist()
    ]
    assert got == urls
    last = batches[-1].column("caption").to_pylist()[-1]
    assert (last.decode() if isinstance(last, bytes) else last) == f"a caption {n - 1}"
