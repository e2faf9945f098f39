"""The shard mapper on a local Ray: resume skips finished items, outputs are written whole or
not at all, a failing item is reported while the others complete, counts and progress lines."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ovs.stage import Progress
from pipelines.shard_map import ActorResources, ItemsFailed, WorkItem, map_items


class Squares:
    """A per-item function: ``n`` -> a table of ``offset + i*i`` for ``i < n``; ``n < 0`` raises."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __call__(self, n: int) -> pa.Table:
        if n < 0:
            raise ValueError(f"bad item {n}")
        return pa.table({"v": [self.offset + i * i for i in range(n)]})


class Total:
    """A per-item function whose result comes back instead of being written."""

    def __call__(self, values: list[int]) -> dict[str, int]:
        return {"sum": sum(values), "n": len(values)}


def _items(out, sizes: dict[str, int]) -> list[WorkItem]:
    return [WorkItem(k, {"n": n}, out / f"{k}.parquet") for k, n in sizes.items()]


@pytest.mark.slow
def test_skips_finished_items_writes_outputs_counts_and_progress(tmp_path, ray_local, caplog):
    done = pa.table({"v": [-1]})
    pq.write_table(done, tmp_path / "a.parquet")  # a finished item of an earlier attempt
    calls: list[tuple] = []
    progress = Progress("test", every_s=0.0)

    def report(*args) -> None:
        calls.append(args)
        progress(*args)

    items = _items(tmp_path, {"a": 2, "b": 3, "c": 0, "d": 4})
    with caplog.at_level(logging.INFO, logger="ovs"):
        result = map_items(items, Squares, {"offset": 10}, ActorResources(2), report)
    assert result.resumed == ["a"]
    assert result.results == {"b": 3, "c": 0, "d": 4}  # rows written per item that ran
    assert pq.read_table(tmp_path / "a.parquet").equals(done)  # not redone
    assert pq.read_table(tmp_path / "d.parquet").column("v").to_pylist() == [10, 11, 14, 19]
    assert pq.read_table(tmp_path / "c.parquet").num_rows == 0
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)]
    assert {c[2] for c in calls} == {"shards"}
    assert "[test] shards: 3/3 (100%" in caplog.text
    assert not list(tmp_path.glob(".*tmp-*"))

    # Everything done: nothing runs (no Ray work at all), everything counts as resumed.
    again = map_items(items, Squares, {"offset": 10}, ActorResources(2), report)
    assert again.results == {} and again.resumed == ["a", "b", "c", "d"]


@pytest.mark.slow
def test_failing_item_leaves_no_file_and_the_others_complete(tmp_path, ray_local):
    items = _items(tmp_path, {"ok0": 1, "bad": -1, "ok1": 2})
    with pytest.raises(ItemsFailed, match="bad item -1") as err:
        map_items(items, Squares, {"offset": 0}, ActorResources(1), lambda *a: None)
    assert list(err.value.failed) == ["bad"]
    assert "ValueError" in err.value.failed["bad"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok0.parquet", "ok1.parquet"]
    # The rerun runs only the failed item.
    fixed = [WorkItem("bad", {"n": 1}, tmp_path / "bad.parquet"), *items[::2]]
    result = map_items(fixed, Squares, {"offset": 0}, ActorResources(1), lambda *a: None)
    assert result.results == {"bad": 1} and sorted(result.resumed) == ["ok0", "ok1"]


@pytest.mark.slow
def test_items_without_output_return_their_values(tmp_path, ray_local):
    items = [WorkItem(f"{i}", {"values": list(range(i))}) for i in range(4)]
    result = map_items(items, Total, {}, ActorResources(2, num_cpus=0.5), lambda *a: None, "parts")
    assert result.resumed == []
    assert result.results == {f"{i}": {"sum": i * (i - 1) // 2, "n": i} for i in range(4)}
    assert not list(tmp_path.iterdir())


def test_keys_must_be_unique(tmp_path):
    items = [WorkItem("x", {"n": 1}), WorkItem("x", {"n": 2})]
    with pytest.raises(ValueError, match="unique"):
        map_items(items, Squares, {"offset": 0}, ActorResources(1), lambda *a: None)
