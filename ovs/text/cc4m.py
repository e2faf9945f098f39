"""CC4M entity vocabulary and caption matching (OVSegmentor, seed 000).

OVSegmentor built CC4M from CC12M by keeping a caption when one of its NLTK word tokens is,
exactly and case-sensitively, one of 100 entity words (``CC4M_ENTITY_WORDS``). For
cross-image pairing the matched words are folded into 73 classes (``CC4M_SYNONYMS``).

Two matching rules:

- ``exact``: their rule. Tokens come from ``treebank_tokenize`` (a re-implementation of
  ``nltk.word_tokenize``: Punkt-style sentence split + NLTK's Treebank word rules, so "dogs",
  "Dog" and "dog's"→"dog" behave as in their code) and must equal a vocabulary word.
- lemma (default): a token matches when its lower-cased text or lower-cased lemma is a
  vocabulary word (so "Dogs", "men", "T-shirts" match too). When part-of-speech tags are
  given, only nominal tokens match, so "light blue" or "orange juice" (ADJ) do not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Verbatim from OVSegmentor datasets/data_process_cc12m.py (TOP_CLASSES_1), same order.
CC4M_ENTITY_WORDS: tuple[str, ...] = (
    "people", "man", "men", "woman", "women", "girl", "boy", "lady", "kid", "child",
    "children", "baby", "student", "bride", "groom", "couple", "prince", "princess",
    "car", "bus", "truck", "motorcycle", "train", "bicycle", "boat", "aeroplane", "airplane",
    "motorbike", "bike",
    "cup", "bottle", "bowl", "knife", "spoon", "glass", "fork",
    "chair", "table", "bench", "clock", "laptop", "light", "vase", "plant", "remote",
    "microwave", "toaster", "oven", "mouse", "keyboard", "sofa", "monitor", "desk", "tv", "TV",
    "couch", "flower", "refrigerator",
    "house", "building", "hotel",
    "handbag", "umbrella", "book", "backpack", "phone", "shirt", "tie", "suitcase", "T-shirt",
    "bag", "box",
    "sink", "bed", "toilet",
    "cat", "dog", "horse", "bird", "cow", "sheep", "elephant", "bear", "zebra", "giraffe",
    "ball", "racket", "skateboard", "skis", "snowboard", "surfboard", "kite",
    "pizza", "cake", "apple", "banana", "sandwich", "orange", "carrot", "donut",
)  # fmt: skip

_PERSON_WORDS = CC4M_ENTITY_WORDS[:18]

# Synonym folding, verbatim from OVSegmentor datasets/clip_dataset.py (syn_dict).
CC4M_SYNONYMS: dict[str, str] = {
    **{w: "people" for w in _PERSON_WORDS},
    "airplane": "aeroplane",
    "motorbike": "motorcycle",
    "bike": "bicycle",
    "TV": "tv",
    "desk": "table",
    "couch": "sofa",
    "building": "house",
    "hotel": "house",
    "T-shirt": "shirt",
    "T-Shirt": "shirt",
    "handbag": "bag",
}

NOMINAL_POS: frozenset[str] = frozenset({"NOUN", "PROPN"})


@dataclass(frozen=True)
class EntityVocab:
    """A compiled vocabulary: ``exact`` maps a word to its class, ``lower`` a lower-cased word."""

    exact: dict[str, str]
    lower: dict[str, str]

    @property
    def classes(self) -> list[str]:
        """The folded classes, sorted."""
        return sorted(set(self.exact.values()))


def build_vocab(
    words: Sequence[str] = CC4M_ENTITY_WORDS, synonyms: dict[str, str] | None = None
) -> EntityVocab:
    """Compile ``words`` with synonym folding (``None`` = the CC4M table, ``{}`` = no folding)."""
    syn = CC4M_SYNONYMS if synonyms is None else synonyms
    exact = {w: syn.get(w, w) for w in words}
    lower: dict[str, str] = {}
    for w, c in exact.items():
        # "TV" and "tv" both land on "tv"; the first spelling wins for the lower-cased key.
        lower.setdefault(w.lower(), c)
    return EntityVocab(exact=exact, lower=lower)


CC4M_VOCAB = build_vocab()


def match_entities(
    tokens: Sequence[str],
    lemmas: Sequence[str] | None = None,
    *,
    vocab: EntityVocab = CC4M_VOCAB,
    exact: bool = False,
    pos: Sequence[str] | None = None,
) -> list[str]:
    """Folded entity classes found in a tokenised caption, unique, in first-occurrence order.

    ``exact=True``: OVSegmentor's rule, ``tokens`` must be ``treebank_tokenize`` output and a
    token matches only when it is literally a vocabulary word; ``lemmas``/``pos`` are ignored.
    Otherwise a token matches by lower-cased text or lower-cased lemma, and when ``pos`` is
    given (universal POS tags, one per token) only NOUN/PROPN tokens can match.
    """
    found: dict[str, None] = {}
    if exact:
        for t in tokens:
            c = vocab.exact.get(t)
            if c is not None:
                found.setdefault(c)
        return list(found)
    for i, t in enumerate(tokens):
        if pos is not None and pos[i] not in NOMINAL_POS:
            continue
        c = vocab.lower.get(t.lower())
        if c is None and lemmas is not None:
            c = vocab.lower.get(lemmas[i].lower())
        if c is not None:
            found.setdefault(c)
    return list(found)


# --------------------------------------------------------------------------------------------
# nltk.word_tokenize emulation (Treebank rules as NLTK applies them, plus a Punkt-like split).

_STARTING_QUOTES = [
    (re.compile(r"([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(?<!\w)(\')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), r"\1 "),
]
_PUNCTUATION = [
    (re.compile(r"([^\.])(\.)([\]\)}>\"\'»”’ ]*+)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"[\u2012-\u2015]"), r" \g<0> "),
    (re.compile(r"([^\.])(\.)([\]\)}>\"\']*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
    (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
]
_ENDING_QUOTES = [
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"\s+"), " "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_CONTRACTIONS = [
    re.compile(p)
    for p in (
        r"(?i)\b(can)(not)\b",
        r"(?i)\b(d)('ye)\b",
        r"(?i)\b(gim)(me)\b",
        r"(?i)\b(gon)(na)\b",
        r"(?i)\b(got)(ta)\b",
        r"(?i)\b(lem)(me)\b",
        r"(?i)\b(more)('n)\b",
        r"(?i)\b(wan)(na)(?=\s)",
        r"(?i) ('t)(is)\b",
        r"(?i) ('t)(was)\b",
    )
]
# A sentence ends after [.?!] (plus closing quotes/brackets) followed by white space, as
# Punkt decides for ordinary words; not after an ellipsis, a one-letter initial, a
# dotted acronym ("U.S.") or a listed abbreviation, which Punkt's English model keeps inside.
_SENT_END = re.compile(r"(?<=[.?!])[\]\)}>\"'»”’]*\s+")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof vs etc inc ltd co no fig approx dept est e.g i.e".split()
)


def _sentence_spans(text: str) -> list[str]:
    sentences, start = [], 0
    for m in _SENT_END.finditer(text):
        head = text[start : m.start()].rstrip("]})>\"'»”’")
        word = head.split()[-1] if head.split() else ""
        stem = word.rstrip(".?!")
        if word.endswith(".") and (
            word.endswith("..") or len(stem) <= 1 or "." in stem or stem.lower() in _ABBREVIATIONS
        ):
            continue
        sentences.append(text[start : m.end()])
        start = m.end()
    sentences.append(text[start:])
    return [s for s in sentences if s.strip()]


def _treebank_words(text: str) -> list[str]:
    for rx, sub in _STARTING_QUOTES:
        text = rx.sub(sub, text)
    for rx, sub in _PUNCTUATION:
        text = rx.sub(sub, text)
    text = " " + text + " "
    for rx, sub in _ENDING_QUOTES:
        text = rx.sub(sub, text)
    for rx in _CONTRACTIONS:
        text = rx.sub(r" \1 \2 ", text)
    return text.split()


def treebank_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)`` emulation: sentence split, then Treebank word rules.

    >>> treebank_tokenize("Two dogs. A man's T-shirt, a TV!")
    ['Two', 'dogs', '.', 'A', 'man', "'s", 'T-shirt', ',', 'a', 'TV', '!']
    """
    return [w for s in _sentence_spans(text) for w in _treebank_words(s)]
