"""spaCy's CNN layers on NumPy's BLAS instead of thinc's bundled BLIS.

Most of en_core_web_sm's CPU time per caption is ``tok2vec`` (a hash embedding, then four
maxout window-CNN layers), and most of that is ``NumpyOps.gemm``: thinc calls the BLIS build it
vendors (``blis`` package), whose single-thread sgemm on the tok2vec shapes
(``[tokens, 288] x [288, 288]``) runs at ~20 GFLOP/s on an AVX2 EPYC core, where NumPy's
OpenBLAS reaches ~60. :class:`NumpyBlasOps` is ``NumpyOps`` with only ``gemm`` routed to
``numpy.matmul``; :func:`use_numpy_blas` gives every layer of a loaded pipeline that ops
object. Nothing else changes: same weights, same layers, same order of operations around the
matrix product. The two BLAS libraries sum each dot product in their own blocking order, so
activations can differ in the last float bits; the tests and ``python -m tools.bench entities``
compare the extracted rows (POS, lemmas, chunks, entities) of the two paths and count any
difference (none on the bench's captions or the world's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from thinc.api import NumpyOps


class NumpyBlasOps(NumpyOps):
    """``NumpyOps`` whose ``gemm`` is ``numpy.matmul`` (the BLAS NumPy was built with)."""

    name = "numpy_blas"

    def gemm(  # type: ignore[override]
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        out: np.ndarray | None = None,
        trans1: bool = False,
        trans2: bool = False,
    ) -> np.ndarray:
        a = x.T if trans1 else x
        b = y.T if trans2 else y
        if out is None:
            return np.matmul(a, b)
        np.matmul(a, b, out=out)
        return out


def use_numpy_blas(nlp: Any) -> int:
    """Give every thinc layer of ``nlp``'s components a :class:`NumpyBlasOps`; returns how many
    layers were switched (0 for a pipeline on another backend, e.g. CuPy, which is left alone)."""
    ops = NumpyBlasOps()
    switched = 0
    for _, proc in nlp.pipeline:
        model = getattr(proc, "model", None)
        if model is None or not hasattr(model, "walk"):
            continue
        for node in model.walk():
            if type(node.ops) is NumpyOps:
                node.ops = ops
                switched += 1
    return switched
