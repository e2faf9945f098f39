"""spaCy entity extraction: components, outputs, bad input, exact rule, Ray adapter."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import spacy
from spacy.language import Language

from ovs.text.entities import (
    ENTITY_SCHEMA,
    EntitiesConfig,
    EntityExtractor,
    extract,
    load_pipeline,
    rows_to_table,
    summarize,
)


@pytest.fixture(scope="module")
def nlp_parser():
    return load_pipeline("en_core_web_sm", "parser")


@pytest.fixture(scope="module")
def nlp_pos():
    return load_pipeline("en_core_web_sm", "pos")


def test_pipeline_components(nlp_parser, nlp_pos) -> None:
    assert nlp_parser.pipe_names == ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer"]
    assert nlp_pos.pipe_names == ["tok2vec", "tagger", "attribute_ruler", "lemmatizer"]
    with pytest.raises(OSError, match="not found"):
        load_pipeline("no_such_pipeline_xyz")
    with pytest.raises(ValueError):
        load_pipeline("en_core_web_sm", "dependency")


def test_extract_fields(nlp_parser) -> None:
    cap = "Two men wearing T-shirts are watching TV with their dogs."
    (row,) = extract(nlp_parser, [cap])
    assert row["status"] == "ok" and row["caption"] == cap and row["text"] == cap
    assert {"man", "shirt", "tv", "dog"} <= set(row["nouns"])
    assert {"wear", "watch"} <= set(row["verbs"])
    assert "their dogs" in row["noun_chunks"]
    assert len(row["noun_chunks"]) == len(row["chunk_heads"])
    assert {"man", "shirt", "tv", "dog"} <= set(row["chunk_heads"])
    assert row["entities"] == ["people", "shirt", "tv", "dog"] and row["keep"] is True
    cfg = EntitiesConfig(text_mode="nouns_verbs")
    (nv,) = extract(nlp_parser, [cap], cfg)
    assert nv["text"].split() == ["men", "wearing", "T", "shirts", "watching", "TV", "dogs"]


def test_exact_rule_switch(nlp_parser) -> None:
    caps = ["Two dogs sleeping on a Sofa", "A man with a TV", "light blue sky"]
    lemma = [r["entities"] for r in extract(nlp_parser, caps)]
    exact = [r["entities"] for r in extract(nlp_parser, caps, EntitiesConfig(exact_rule=True))]
    assert lemma == [["dog", "sofa"], ["people", "tv"], []]
    assert exact == [[], ["people", "tv"], ["light"]]
    custom = EntitiesConfig(vocab=["sky", "dog"], synonyms={})
    assert [r["entities"] for r in extract(nlp_parser, caps, custom)] == [["dog"], [], ["sky"]]


def test_bad_input_is_flagged_not_raised(nlp_parser) -> None:
    long_cap = "A dog on the beach " + "and a very long description " * 400  # ~11k chars
    caps = [
        None,
        "",
        "   \n\t ",
        "12345 !!! ...",
        "Собака спит на диване",
        "一只狗在沙发上睡觉",
        "Tom &amp;amp; Jerry&#39;s cat on a sofa",
        long_cap,
        "x" * 10_000,
        "A cat.",
        7,  # not a string
    ]
    rows = extract(nlp_parser, caps, EntitiesConfig(max_chars=1000))  # type: ignore[arg-type]
    assert len(rows) == len(caps)
    status = [r["status"] for r in rows]
    assert status == [
        "missing",
        "empty",
        "empty",
        "no_letters",
        "non_english",
        "non_english",
        "ok",
        "ok",
        "ok",
        "ok",
        "missing",
    ]
    assert rows[6]["text"] == "Tom & Jerry's cat on a sofa"
    assert rows[6]["entities"] == ["cat", "sofa"]
    assert len(rows[7]["text"]) <= 1000 and rows[7]["entities"] == ["dog"]
    assert len(rows[8]["text"]) == 1000
    for r in rows:
        if r["status"] != "ok":
            assert r["keep"] is False and r["entities"] == [] and r["text"] == ""
    table = rows_to_table([f"{i:09d}" for i in range(len(rows))], rows)
    assert table.schema == ENTITY_SCHEMA
    counts = summarize(table, max_chars=1000)
    assert counts["rows"] == 11 and counts["kept"] == 3 and counts["truncated"] == 2
    assert counts["status_ok"] == 4 and counts["status_missing"] == 2


@Language.component("explode_on_boom")
def _explode_on_boom(doc):
    if "BOOM" in doc.text:
        raise RuntimeError("boom")
    return doc


def test_failing_caption_does_not_lose_batch() -> None:
    nlp = spacy.blank("en")
    nlp.add_pipe("explode_on_boom")
    cfg = EntitiesConfig(noun_chunks="none")
    rows = extract(nlp, ["a dog", "BOOM goes the dynamite", "a cat"], cfg)
    assert [r["status"] for r in rows] == ["ok", "nlp_error", "ok"]
    assert rows[0]["entities"] == ["dog"]  # blank pipeline: no POS, token matching only
    # a blank pipeline has no parse: asking it for parser noun chunks fails per row
    rows = extract(nlp, ["a dog", "a cat"], EntitiesConfig(noun_chunks="parser"))
    assert [r["status"] for r in rows] == ["nlp_error", "nlp_error"]


def test_pos_chunker_agrees_with_parser(nlp_parser, nlp_pos) -> None:
    caps = [
        "A man riding a horse on the beach",
        "The old brick building next to a busy street",
        "Two young girls playing with a red ball in the park",
        "A bowl of fresh fruit on a wooden table",
        "Bride and groom cutting their wedding cake",
        "A black cat sleeping on the living room sofa",
        "Aerial view of the city at night",
        "A woman holding an umbrella in the rain",
    ]
    a = extract(nlp_parser, caps, EntitiesConfig(noun_chunks="parser"))
    b = extract(nlp_pos, caps, EntitiesConfig(noun_chunks="pos"))
    same = sum(x["chunk_heads"] == y["chunk_heads"] for x, y in zip(a, b, strict=True))
    assert same >= 6
    assert (
        b[1]["noun_chunks"][0] == "The old brick building" and b[1]["chunk_heads"][0] == "building"
    )
    for x, y in zip(a, b, strict=True):  # everything but the chunks is identical
        assert (x["nouns"], x["verbs"], x["entities"]) == (y["nouns"], y["verbs"], y["entities"])
    (none,) = extract(nlp_pos, caps[:1], EntitiesConfig(noun_chunks="none"))
    assert none["noun_chunks"] == [] and none["nouns"] == a[0]["nouns"]


def test_ray_adapter_batch() -> None:
    ext = EntityExtractor(EntitiesConfig(noun_chunks="pos"))
    batch = {
        "key": np.array(["000000002", "000000000", "000000001"]),
        "caption": np.array(["A dog on a sofa", None, "Snowy mountains"], dtype=object),
    }
    out = ext(batch)
    assert isinstance(out, pa.Table) and out.schema == ENTITY_SCHEMA
    assert out.column("key").to_pylist() == ["000000002", "000000000", "000000001"]
    assert out.column("status").to_pylist() == ["ok", "missing", "ok"]
    assert out.column("entities").to_pylist() == [["dog", "sofa"], [], []]
    assert out.column("keep").to_pylist() == [True, False, False]


_STOCK = {"fast_ruler": False, "fast_lemmatizer": False, "numpy_blas": False}


def _hard_captions(n: int = 150) -> list[str]:
    from tools.bench.entities import make_captions

    return make_captions(n, seed=5) + [
        "Its dog isn't here, it's there.  Don't go!",
        "I can't believe y'all gonna do that",
        "There is a cat; it gets what it wants and she got it",
        "Let's go,   nothin' to see",
        "Who has the book which I gave you?",
        "A\n\nB",
        "",
    ]


@pytest.mark.parametrize(
    ("mode", "fast"),
    [
        ("pos", "fast_ruler"),
        ("parser", "fast_ruler"),
        ("pos", "fast_lemmatizer"),
        ("pos", "numpy_blas"),
        ("parser", "all"),
    ],
)
def test_fast_components_are_identical(mode: str, fast: str) -> None:
    """Each output-identical replacement (and all together) against the stock pipeline, token
    by token: POS, morphology, lemma, tag, dependency."""
    caps = _hard_captions()
    stock = load_pipeline("en_core_web_sm", mode, **_STOCK)
    switched = {k: True for k in _STOCK} if fast == "all" else {**_STOCK, fast: True}
    quick = load_pipeline("en_core_web_sm", mode, **switched)
    names = {"fast_ruler": "attribute_ruler", "fast_lemmatizer": "lemmatizer"}
    for key, pipe in names.items():
        want = {"attribute_ruler": "FastAttributeRuler", "lemmatizer": "FastLemmatizer"}[pipe]
        got = type(quick.get_pipe(pipe)).__name__
        assert (got == want) == switched[key], (key, got)
    blas = {type(node.ops).__name__ for node in quick.get_pipe("tok2vec").model.walk()}
    assert blas == ({"NumpyBlasOps"} if switched["numpy_blas"] else {"NumpyOps"})
    n = 0
    for a, b in zip(stock.pipe(caps), quick.pipe(caps), strict=True):
        for s, t in zip(a, b, strict=True):
            assert (s.pos_, str(s.morph), s.lemma_, s.tag_, s.dep_) == (
                t.pos_,
                str(t.morph),
                t.lemma_,
                t.tag_,
                t.dep_,
            ), (a.text, s.i)
            n += 1
    assert n > 1500


def test_fast_paths_give_the_stock_rows() -> None:
    """``extract`` rows (lemmas, chunks, entities, trainer text) of the stage's pipeline equal
    those of the stock components on 1,000 bench captions, and a lemmatizer that writes lemmas
    set before it (``overwrite``) is honoured like the stock one."""
    from tools.bench.entities import make_captions

    caps = make_captions(1000, seed=11)
    for mode in ("pos", "nouns_verbs"):
        cfg = EntitiesConfig(noun_chunks="pos", text_mode="caption" if mode == "pos" else mode)
        stock = extract(load_pipeline("en_core_web_sm", "pos", **_STOCK), caps, cfg)
        fast = extract(load_pipeline("en_core_web_sm", "pos"), caps, cfg)
        assert fast == stock
    nlp = load_pipeline("en_core_web_sm", "pos")
    nlp.get_pipe("lemmatizer").stock.overwrite = True
    ref = load_pipeline("en_core_web_sm", "pos", **_STOCK)
    ref.get_pipe("lemmatizer").overwrite = True
    for a, b in zip(ref.pipe(caps[:100]), nlp.pipe(caps[:100]), strict=True):
        assert [t.lemma_ for t in a] == [t.lemma_ for t in b]
