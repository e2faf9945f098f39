"""A faster, output-identical replacement for spaCy's ``attribute_ruler`` component.

en_core_web_sm's attribute ruler holds 179 rules, almost all of the form "a token with tag T
(and lower-case form W) gets POS / MORPH / LEMMA ...". spaCy runs them through the Matcher,
which tries every rule at every token: ~0.25 ms per caption, a quarter of the tagging path.
``FastAttributeRuler`` looks single-token rules on ``TAG``/``LOWER`` up in dicts keyed by the
token's tag and lower-case form, applies them with ``Doc.to_array``/``from_array``, and leaves
every other rule (multi-token, ``DEP``, ``IS_SPACE``, other attributes) to a regular
``AttributeRuler``. Matches of both kinds are applied in the original rule order (spaCy
applies matches sorted by rule id, so later rules win), hence the same result; tests check
it token by token against the stock component.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, cast

import numpy as np
from spacy.attrs import DEP, IS_SPACE, LEMMA, LOWER, MORPH, POS, TAG
from spacy.parts_of_speech import IDS as POS_IDS
from spacy.pipeline import AttributeRuler
from spacy.pipeline.attributeruler import set_token_attrs
from spacy.tokens import Doc, Span

FACTORY = "ovs_fast_attribute_ruler"
_FAST_KEYS = {"TAG", "LOWER"}
_FAST_ATTRS = {"POS", "MORPH", "LEMMA"}
_COLS = [POS, MORPH, LEMMA]


def _values(spec: object) -> list[str] | None:
    if isinstance(spec, str):
        return [spec]
    if (
        isinstance(spec, dict)
        and set(spec) == {"IN"}
        and all(isinstance(v, str) for v in spec["IN"])
    ):
        return list(spec["IN"])
    return None


def _fast_keys(rule: dict) -> list[tuple[str | None, str | None]] | None:
    """``[(tag, lower)]`` a single-token TAG/LOWER rule matches (None = any), else None."""
    if rule["index"] not in (0, -1) or not set(rule["attrs"]) <= _FAST_ATTRS:
        return None
    if len(rule["patterns"]) != 1 or len(rule["patterns"][0]) != 1:
        return None
    tok = rule["patterns"][0][0]
    if not tok or not set(tok) <= _FAST_KEYS:
        return None
    tags = _values(tok["TAG"]) if "TAG" in tok else [None]
    lowers = _values(tok["LOWER"]) if "LOWER" in tok else [None]
    if tags is None or lowers is None:
        return None
    return list(itertools.product(tags, lowers))


class _Gate:
    """A necessary condition for a Matcher rule to match a doc, checked on the doc's sets.

    One conjunction per alternative pattern: each token spec's ``LOWER``/``TAG``/``DEP``
    values (str or ``IN``) must occur in the doc, ``NOT_IN`` lists holding "" need the
    attribute set on some token, a ``LOWER`` ``REGEX`` must match one of its words,
    ``IS_SPACE: True`` needs a space token. Specs it does not understand are no gate.
    """

    def __init__(self, rule: dict, strings: Any) -> None:
        self.alternatives = []
        for pattern in rule["patterns"]:
            needs: list[tuple[str, object]] = []
            for tok in pattern:
                for attr in ("LOWER", "TAG", "DEP"):
                    spec = tok.get(attr)
                    vals = _values(spec)
                    if vals is not None:
                        needs.append((attr, frozenset(strings.add(v) for v in vals)))
                    elif isinstance(spec, dict) and "" in spec.get("NOT_IN", ()):
                        needs.append(("ANNOTATED", attr))  # any value but unset
                low = tok.get("LOWER")
                if isinstance(low, dict) and set(low) == {"REGEX"}:
                    needs.append(("REGEX", re.compile(low["REGEX"])))
                if tok.get("IS_SPACE") is True:
                    needs.append(("IS_SPACE", True))
            self.alternatives.append(needs)

    def may_match(self, sets: dict[str, Any]) -> bool:
        for needs in self.alternatives:
            ok = True
            for attr, want in needs:
                if attr == "REGEX":
                    ok = any(cast(re.Pattern, want).search(w) for w in sets["WORDS"])
                elif attr == "IS_SPACE":
                    ok = sets["IS_SPACE"]
                elif attr == "ANNOTATED":
                    ok = any(sets[cast(str, want)])
                else:
                    ok = not cast(frozenset, want).isdisjoint(sets[attr])
                if not ok:
                    break
            if ok:
                return True
        return False


class FastAttributeRuler:
    """``AttributeRuler`` semantics; dict lookups for single-token TAG/LOWER rules."""

    def __init__(self, nlp: Any, name: str, rules: list[dict]) -> None:
        strings, morphology = nlp.vocab.strings, nlp.vocab.morphology
        self.name = name
        # key -> [(rule id, column values: POS id, MORPH hash, LEMMA hash; None = keep)]
        self.by_tag: dict[int, list] = {}
        self.by_lower: dict[int, list] = {}
        self.by_both: dict[tuple[int, int], list] = {}
        slow, self.slow_ids = [], []
        for rid, rule in enumerate(rules):
            keys = _fast_keys(rule)
            if keys is None:
                slow.append(rule)
                self.slow_ids.append(rid)
                continue
            a = rule["attrs"]
            vals = (
                POS_IDS[a["POS"]] if "POS" in a else None,
                morphology.add(a["MORPH"]) if "MORPH" in a else None,
                strings.add(a["LEMMA"]) if "LEMMA" in a else None,
            )
            for tag, lower in keys:
                if tag is not None and lower is not None:
                    self.by_both.setdefault((strings.add(tag), strings.add(lower)), []).append(
                        (rid, vals)
                    )
                elif tag is not None:
                    self.by_tag.setdefault(strings.add(tag), []).append((rid, vals))
                else:
                    self.by_lower.setdefault(strings.add(lower), []).append((rid, vals))
        self.slow = AttributeRuler(nlp.vocab, name=name)
        self.slow.add_patterns(slow)
        self.gates = [_Gate(r, strings) for r in slow]
        self.regex_gates = any(
            a == "REGEX" for g in self.gates for n in g.alternatives for a, _ in n
        )

    def _slow_matches(self, doc: Doc, lowers: list[int], tags: list[int]) -> list:
        """Matcher rules' matches, skipping the Matcher when no rule can match this doc."""
        arr = doc.to_array([DEP, IS_SPACE])
        sets = {
            "LOWER": set(lowers),
            "TAG": set(tags),
            "DEP": set(arr[:, 0].tolist()),
            "IS_SPACE": bool(arr[:, 1].any()),
            "WORDS": [doc.vocab.strings[h] for h in set(lowers)] if self.regex_gates else [],
        }
        if not any(g.may_match(sets) for g in self.gates):
            return []
        return [(self.slow_ids[local], s, e) for local, _, s, e in self.slow.match(doc)]

    def __call__(self, doc: Doc) -> Doc:
        if not len(doc):
            return doc
        tags = doc.to_array(TAG).tolist()
        lowers = doc.to_array(LOWER).tolist()
        events = []  # (rule id, token index, values) for fast hits
        for i, (t, w) in enumerate(zip(tags, lowers)):
            hits = (
                self.by_tag.get(t, ()),
                self.by_lower.get(w, ()),
                self.by_both.get((t, w), ()),
            )
            for rid, vals in itertools.chain(*hits):
                events.append((rid, i, vals))
        slow = self._slow_matches(doc, lowers, tags)  # (global rule id, start, end)
        events.sort(key=lambda x: x[0])
        slow.sort(key=lambda x: x[0])
        arr = np.asarray(doc.to_array(_COLS), dtype=np.uint64)
        k = 0
        for rid, i, vals in events:
            while k < len(slow) and slow[k][0] < rid:  # earlier slow rule: apply it first
                arr = self._apply_slow(doc, arr, slow[k])
                k += 1
            for c, v in enumerate(vals):
                if v is not None:
                    arr[i, c] = v
        doc.from_array(_COLS, arr)  # type: ignore[arg-type]
        if k < len(slow):
            for ev in slow[k:]:
                self._apply_slow(doc, None, ev)
        return doc

    def _apply_slow(self, doc: Doc, arr: Any, event: tuple[int, int, int]) -> Any:
        rid, start, end = event
        if arr is not None:  # flush the fast results so far: rule order is kept
            doc.from_array(_COLS, arr)  # type: ignore[arg-type]
        local = self.slow_ids.index(rid)
        span = Span(doc, start, end)
        set_token_attrs(span[self.slow.indices[local]], self.slow.attrs[local])
        return np.asarray(doc.to_array(_COLS), dtype=np.uint64) if arr is not None else None


def _make(nlp: Any, name: str, rules: list[dict]) -> FastAttributeRuler:
    return FastAttributeRuler(nlp, name, rules)


def use_fast_attribute_ruler(nlp: Any, name: str = "attribute_ruler") -> bool:
    """Replace ``nlp``'s ``AttributeRuler`` by a ``FastAttributeRuler`` in place.

    Returns False (and changes nothing) when the pipeline has no such component.
    """
    from spacy.language import Language

    if name not in nlp.pipe_names or not isinstance(nlp.get_pipe(name), AttributeRuler):
        return False
    rules = nlp.get_pipe(name).patterns
    if not Language.has_factory(FACTORY):  # registered on first use, not at import
        Language.factory(FACTORY, func=_make)
    nlp.replace_pipe(name, FACTORY, config={"rules": rules})
    return True
