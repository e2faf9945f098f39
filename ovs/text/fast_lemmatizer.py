"""An output-identical, array-based replacement for spaCy's rule ``lemmatizer`` component.

spaCy's rule lemmatizer visits every token as a Python ``Token`` and calls ``rule_lemmatize``,
whose result is a pure function of the token's ``(ORTH, POS, MORPH)`` (its own cache key), but
which caches only the slow path: the "base form" early exit (``is_base_form``, a morphology
dict per token) runs again for every singular noun and infinitive. At en_core_web_sm's speed
that is a fifth of the tagging path. ``FastLemmatizer`` reads ``ORTH/POS/MORPH/LEMMA`` with
``Doc.to_array``, looks each ``(ORTH, POS, MORPH)`` up in one dict of lemma hashes, asks the
stock component (``rule_lemmatize`` / ``lookup_lemmatize``, unchanged) only on a miss, and
writes ``LEMMA`` back with ``Doc.from_array``. It honours ``overwrite`` like the stock one
(a lemma already set, e.g. by the attribute ruler, is kept). Tests compare it token by token
with the stock component.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from spacy.attrs import LEMMA, MORPH, ORTH, POS
from spacy.pipeline import Lemmatizer
from spacy.tokens import Doc

FACTORY = "ovs_fast_lemmatizer"
_COLS = [ORTH, POS, MORPH, LEMMA]


class FastLemmatizer:
    """Wraps a stock :class:`spacy.pipeline.Lemmatizer` (``stock``); same lemmas, cached per
    ``(ORTH, POS, MORPH)``."""

    def __init__(self, name: str = "lemmatizer") -> None:
        self.name = name
        self.stock: Lemmatizer | None = None
        self.cache: dict[tuple[int, int, int], int] = {}

    def __call__(self, doc: Doc) -> Doc:
        stock = self.stock
        assert stock is not None, "FastLemmatizer used before use_fast_lemmatizer bound it"
        if not len(doc):
            return doc
        arr = np.asarray(doc.to_array(_COLS), dtype=np.uint64)
        lemmas = arr[:, 3].copy()
        strings = doc.vocab.strings
        cache = self.cache
        changed = False
        for i, (orth, pos, morph, lemma) in enumerate(arr.tolist()):
            if not (stock.overwrite or lemma == 0):
                continue
            key = (orth, pos, morph)
            h = cache.get(key)
            if h is None:
                h = strings.add(stock.lemmatize(doc[i])[0])
                cache[key] = h
            if h != lemma:
                lemmas[i] = h
                changed = True
        if changed:
            doc.from_array([LEMMA], lemmas[:, None])  # type: ignore[arg-type]
        return doc

    def pipe(self, docs: Any, batch_size: int = 128) -> Any:
        for doc in docs:
            yield self(doc)


def _make(nlp: Any, name: str) -> FastLemmatizer:
    return FastLemmatizer(name)


def use_fast_lemmatizer(nlp: Any, name: str = "lemmatizer") -> bool:
    """Replace ``nlp``'s rule/lookup ``Lemmatizer`` by a :class:`FastLemmatizer` around it, in
    place. Returns False (and changes nothing) when the pipeline has no such component."""
    from spacy.language import Language

    if name not in nlp.pipe_names:
        return False
    stock = nlp.get_pipe(name)
    if not isinstance(stock, Lemmatizer) or stock.mode not in ("rule", "lookup"):
        return False
    if not Language.has_factory(FACTORY):  # registered on first use, not at import
        Language.factory(FACTORY, func=_make)
    fast = nlp.replace_pipe(name, FACTORY)
    fast.stock = stock
    return True
