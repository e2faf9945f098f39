"""The shard mapper: run a per-item function over work items on a Ray actor pool, resumably.

Every sharded stage (``entities``, ``pseudo_masks``, ``pairs``, ``self_train``'s labelling,
``evaluate``) does the same thing: some work items (a shard, a slice of images), a function
that loads a model once and then turns one item into rows, outputs that must appear whole or
not at all, a rerun that redoes only what is missing, and progress on the console. The stage
supplies the per-item function (a class in ``ovs/``, next to the schema of the rows it
writes) and the items; :func:`map_items` does the rest:

- items whose ``output`` exists (and reads) are skipped and counted as resumed; an unreadable
  one is deleted and redone;
- the rest run on one Ray Data actor pool: ``ray.data.from_items`` with one block per item,
  ``map_batches(compute=ActorPoolStrategy(size=actors), batch_size=1)``, so each actor builds
  the function once (its model loaded once) and calls it on one item at a time;
- the ``pyarrow.Table`` an item's call returns is written to its ``output`` by the actor,
  atomically (:func:`ovs.io.atomic_write_parquet`: temp file + rename, so a killed run
  leaves no partial file); items without an ``output`` send their return value back instead;
- a failing item is logged and leaves no file, the other items still complete, and
  :class:`ItemsFailed` names the failures once the pool has drained (a rerun redoes them;
  :class:`DamagedShards`, one line, when every one read a damaged shard);
- each finished item is reported through the stage's progress helper (:class:`ovs.stage.Progress`).

Why Ray Data and not ``ray.util.ActorPool``: the items are small (paths, index lists) and
all five stages fit one ``map_batches`` call; Ray Data restarts a lost actor and retries its
item, spreads the pool over the cluster's nodes, starts work when the pool is up
(``RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S``) and streams results back as items finish, all of
which an ``ActorPool`` leaves to the caller. ``from_items`` blocks are made by the driver, so no
read task needs a CPU the actor pool holds (``num_actors x num_cpus`` = every CPU would
otherwise deadlock).
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ovs.data.shards import ShardError

log = logging.getLogger("ovs")


@dataclass(frozen=True)
class WorkItem:
    """One unit of work: ``key`` names it (unique within a call; progress and failures use it),
    ``args`` are the keyword arguments of the per-item call (JSON-serialisable: paths as
    strings), ``output`` is the parquet file its table goes to (exists = done), or ``None`` for
    an item whose call's return value comes back to the driver."""

    key: str
    args: dict[str, Any]
    output: Path | None = None


@dataclass(frozen=True)
class ActorResources:
    """The actor pool: ``actors`` actors (at most one per item) of ``num_cpus`` CPUs and
    ``num_gpus`` GPUs each."""

    actors: int
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class MapResult:
    """What :func:`map_items` did: ``results`` maps each item that ran to the rows it wrote
    (items with an ``output``) or to its call's return value (items without); ``resumed``
    lists the keys skipped because their output existed; ``seconds`` is the pool's wall time."""

    results: dict[str, Any] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    seconds: float = 0.0


class ItemsFailed(RuntimeError):
    """Some items raised; ``failed`` maps their keys to the tracebacks. Every other item ran
    and wrote its output, so a rerun redoes only the failed ones."""

    def __init__(self, failed: dict[str, str], what: str) -> None:
        first = next(iter(failed))
        super().__init__(
            f"{len(failed)} {what} failed ({', '.join(sorted(failed))}); first, {first}:\n"
            f"{failed[first]}"
        )
        self.failed = failed


SHARD_ERROR = ("ovs.data.shards.ShardError: ", "ShardError: ")  # a failed item's last line


class DamagedShards(ItemsFailed, ShardError):
    """Every failed item read a damaged shard (:class:`ovs.data.shards.ShardError`): its
    message is one line naming the items and the first shard's error (which says what to do),
    without the tracebacks, so the driver prints it as its one ``error:`` line."""

    def __init__(self, failed: dict[str, str], what: str) -> None:
        ItemsFailed.__init__(self, failed, what)
        first = next(iter(failed))
        line = failed[first].strip().splitlines()[-1]
        message = next(line[len(p) :] for p in SHARD_ERROR if line.startswith(p))
        self.args = (
            f"{len(failed)} {what} failed on damaged shards ({', '.join(sorted(failed))}); "
            f"first, {first}: {message}",
        )


def items_failed(failed: dict[str, str], what: str) -> ItemsFailed:
    """The error of a pass whose items ``failed`` (key -> traceback): :class:`DamagedShards`
    when each failed on a damaged shard, else :class:`ItemsFailed` with the first traceback."""
    lines = [tb.strip().splitlines()[-1] if tb.strip() else "" for tb in failed.values()]
    if all(line.startswith(SHARD_ERROR) for line in lines):
        return DamagedShards(failed, what)
    return ItemsFailed(failed, what)


class _ItemActor:
    """The Ray Data actor body: builds ``worker(**init)`` once, then runs one item per call.

    :func:`map_items` subclasses it per worker class, under the worker's name, so Ray's state
    API and dashboard say which stage's actors they are (``MapWorker(MapBatches(<worker>))``).
    """

    worker: ClassVar[type[Any]]

    def __init__(self, init: dict[str, Any]) -> None:
        from ovs.cpu import return_freed_memory

        return_freed_memory()  # peak RSS flat in the number of items (ovs/cpu.py)
        self.fn = self.worker(**init)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ovs.cpu import trim
        from ovs.io import atomic_write_parquet

        keys, results, errors = [], [], []
        for key, args, output in zip(batch["key"], batch["args"], batch["output"], strict=True):
            keys.append(str(key))
            try:
                value = self.fn(**json.loads(str(args)))
                if output:
                    atomic_write_parquet(str(output), value)
                    value = value.num_rows
                results.append(pickle.dumps(value))
                errors.append("")
            except Exception:  # noqa: BLE001 - reported by the driver; the other items go on
                results.append(b"")
                errors.append(traceback.format_exc())
            trim()  # what the item freed goes back to the OS before the next one
        result_col = np.empty(len(results), dtype=object)  # 1-D array of bytes objects
        result_col[:] = results
        return {
            "key": np.array(keys, dtype=object),
            "result": result_col,
            "error": np.array(errors, dtype=object),
        }


def _finished(output: str | Path | None) -> bool:
    """Whether an item's output parquet exists and its footer reads. Outputs are written
    atomically, so an unreadable one was damaged or left by a foreign writer: it is deleted
    and the item redone (never reused)."""
    if output is None or not Path(output).exists():
        return False
    try:
        pq.read_metadata(output)
    except (OSError, pa.ArrowException) as e:
        log.warning("redoing %s: unreadable parquet (%s)", output, str(e).splitlines()[0])
        Path(output).unlink()
        return False
    return True


def _pending(items: Sequence[WorkItem]) -> tuple[list[WorkItem], list[str]]:
    """``(items to run, keys of items whose output exists)``."""
    finished = [_finished(it.output) for it in items]
    todo = [it for it, f in zip(items, finished, strict=True) if not f]
    return todo, [it.key for it, f in zip(items, finished, strict=True) if f]


def map_items(
    items: Sequence[WorkItem],
    worker: type[Any],
    init: dict[str, Any],
    resources: ActorResources,
    progress: Callable[..., None],
    what: str = "shards",
    on_result: Callable[[str, Any], None] | None = None,
) -> MapResult:
    """Run ``worker(**init)(**item.args)`` for every item without an output yet.

    ``worker`` is a class (built once per actor: load models in ``__init__``) whose call
    returns a ``pyarrow.Table`` for items with an ``output`` (written there atomically) and
    any picklable value for items without one. ``progress(done, total, what)`` is called as
    items finish, and ``on_result(key, value)`` (if given) as each item's result arrives, in
    completion order, so a caller can write what a group of items makes while the pool runs
    on. Raises :class:`ItemsFailed` after the pool drains if any item raised.
    """
    if len({it.key for it in items}) != len(items):
        raise ValueError("work item keys must be unique")
    todo, resumed = _pending(items)
    result = MapResult(resumed=resumed)
    if not todo:
        return result
    import ray.data

    actor = type(worker.__name__, (_ItemActor,), {"worker": worker})
    rows = [
        {"key": it.key, "args": json.dumps(it.args), "output": str(it.output or "")} for it in todo
    ]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        actor,
        fn_constructor_kwargs={"init": init},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, min(resources.actors, len(todo)))),
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus or None,
    )
    failed: dict[str, str] = {}
    start = time.perf_counter()
    for done, row in enumerate(ds.iter_rows(), 1):
        key = str(row["key"])
        if row["error"]:
            failed[key] = str(row["error"])
            log.error("%s %s failed: %s", what, key, failed[key].strip().splitlines()[-1])
        else:
            result.results[key] = pickle.loads(bytes(row["result"]))
            if on_result is not None:
                on_result(key, result.results[key])
        progress(done, len(todo), what)
    result.seconds = time.perf_counter() - start
    if failed:
        raise items_failed(failed, what)
    return result
