"""Ray-Data-style adapter for sharded evaluation (the library side of an eval stage).

A pipeline builds a dataset of row indices (``{"index": int}``), runs
``map_batches(ShardEvaluator, fn_constructor_kwargs=..., batch_size=...)`` so that each
worker loads the method, the benchmark and its text classifier once, then sums the returned
rows with :func:`combine_rows` and calls :func:`~ovs.eval.protocol.shard_metrics`.
"""

from __future__ import annotations

import numpy as np

from ovs.eval.config import EvalDatasetConfig
from ovs.eval.datasets import SegDataset, build_dataset
from ovs.eval.method import MethodSpec, SegMethod, load_method
from ovs.eval.protocol import EvalShard, ProtocolConfig, classifier_for, evaluate_shard
from ovs.metrics import merge_confusions


class ShardEvaluator:
    """Callable: ``{"index": int[N]}`` → one row ``{"confusion": int64[1, C, C],
    "num_images": int64[1], "skipped": str[1]}`` (skipped sample ids, newline-joined)."""

    def __init__(
        self,
        spec: MethodSpec,
        dataset: EvalDatasetConfig,
        protocol: ProtocolConfig,
        method: SegMethod | None = None,
    ) -> None:
        self.method = method if method is not None else load_method(spec)
        self.dataset: SegDataset = build_dataset(dataset.name, dataset.root, dataset.split or None)
        self.protocol = protocol
        self.classifier = classifier_for(self.method, self.dataset, protocol)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = [int(i) for i in np.asarray(batch["index"]).ravel()]
        shard = evaluate_shard(self.method, self.dataset, self.protocol, indices, self.classifier)
        return {
            "confusion": shard.confusion[None],
            "num_images": np.array([shard.num_images], dtype=np.int64),
            "skipped": np.array(["\n".join(shard.skipped)]),
        }


def combine_rows(rows: list[dict[str, np.ndarray]]) -> EvalShard:
    """Sum the rows (or batches of rows) :class:`ShardEvaluator` returned."""
    if not rows:
        raise ValueError("no rows to combine")
    mats = [np.asarray(r["confusion"], dtype=np.int64) for r in rows]
    conf = merge_confusions([m.reshape(-1, *m.shape[-2:]).sum(0) for m in mats])
    n = int(sum(int(np.sum(r["num_images"])) for r in rows))
    skipped = [s for r in rows for chunk in np.ravel(r["skipped"]) for s in str(chunk).split("\n")]
    return EvalShard(conf, n, [s for s in skipped if s])
