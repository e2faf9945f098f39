"""Benchmark the entities stage path against a naive per-caption spaCy loop.

    python -m tools.bench entities [--n 4000] [--naive-n 600] [--noun-chunks pos|parser]

Stage path: ``pipeline_from_config`` (unneeded components excluded, the output-identical
attribute ruler and lemmatizer, NumPy's BLAS under tok2vec) + ``extract`` (``nlp.pipe``
batches). Two references:

- **fair** (``ratio_vs_fair``, the figure to judge the stage's own code by): stock spaCy with
  the *same* components excluded, through the same ``nlp.pipe`` batches and row building, so
  the ratio is only what ovs's replacements buy. The rows of both are compared
  (``rows_differ`` must be 0).
- **naive** (``ratio``): the full en_core_web_sm pipeline (NER and parser too) called once per
  caption (``nlp(text)``), then the same row building; most of that ratio is "do not run NER,
  batch".

All run single-threaded in this process; throughput per core is captions per second of this
process's CPU time (``time.process_time``), which on a shared machine measures the work, not
the neighbours (wall-clock rates are printed too). Stage and fair alternate ``--repeats``
times and each keeps its fastest pass.

Captions are synthetic but CC12M-like (alt-text: stock-photo phrases, <PERSON> placeholders,
product listings, long interior descriptions, HTML entities); their mean length is printed,
since spaCy's cost is per token. The last line is the JSON result, with the CC12M wall time
this throughput implies on one 16-core node and on a 10-node cluster.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

CC12M_CAPTIONS = 12_423_374  # rows in the CC12M release TSV

_PEOPLE = "man woman girl boy couple family child children people bride groom student lady kid baby".split()  # noqa: E501
_ANIMALS = "dog cat horse bird cow sheep elephant bear zebra giraffe puppy kitten lion deer".split()
_THINGS = (
    "car bus truck bicycle boat train airplane chair table sofa bed lamp clock laptop phone "
    "book bottle cup bowl vase plant flower umbrella backpack suitcase kite ball cake pizza "
    "sandwich apple banana orange guitar camera window door fence bridge tower tree"
).split()
_ADJ = (
    "beautiful old young little modern vintage red blue green white black yellow wooden "
    "happy cute colorful abstract luxury rustic traditional empty busy snowy sunny dark"
).split()
_VERBS = (
    "sitting on|walking along|standing next to|playing with|looking at|holding|riding|"
    "driving past|lying under|running through|jumping over|posing in front of|eating|"
    "reading|carrying|watching|waiting for|leaning against"
).split("|")
_PLACES = (
    "the beach|a park bench|a busy street at night|the kitchen table|a snowy mountain|"
    "the river bank|an old brick building|a field of flowers|the living room sofa|"
    "the city center|a wooden dock|the airport|a small cafe|the forest|a sandy desert|"
    "the train station|a rooftop terrace|the football stadium"
).split("|")
_SUFFIX = [
    "",
    "",
    " on a sunny day",
    " in the city",
    " - stock photo",
    " during the summer holidays in Italy",
    " with a cup of coffee",
    " isolated on white background",
    ", royalty free stock image",
    " at sunset",
    " in 2019",
]
_CITIES = "Paris London New York Tokyo Berlin Sydney Rome Barcelona Chicago Toronto".split(" ")
_EVENTS = "the premiere of the film|a charity gala|the awards ceremony|a fashion show|the match"
_PRODUCTS = "dress shirt jacket sneakers handbag watch necklace mug poster sofa rug lamp".split()
_ROOMS = "living room|kitchen|bedroom|bathroom|dining room|home office".split("|")
_FEATURES = (
    "hardwood floors|a fireplace|large windows|white cabinets|a marble countertop|"
    "a comfortable sofa|built-in shelves|a view of the garden|high ceilings"
).split("|")


def _np(rng: random.Random) -> str:
    pool = rng.choice([_PEOPLE, _ANIMALS, _THINGS, _THINGS])
    det = rng.choice(["a", "the", "two", "three", "a small", "an old", "my", "our"])
    adj = rng.choice(_ADJ) + " " if rng.random() < 0.5 else ""
    return f"{det} {adj}{rng.choice(pool)}"


def make_caption(rng: random.Random) -> str:
    """One CC12M-like alt-text caption."""
    kind = rng.random()
    if kind < 0.35:
        cap = f"{_np(rng).capitalize()} {rng.choice(_VERBS)} {rng.choice(_PLACES)}"
        cap += rng.choice(_SUFFIX)
    elif kind < 0.5:
        cap = (
            f"<PERSON> {rng.choice(['arrives at', 'attends', 'speaks at', 'poses at'])} "
            f"{rng.choice(_EVENTS.split('|'))} in {rng.choice(_CITIES)} on "
            f"{rng.choice(['May', 'June', 'October'])} {rng.randint(1, 28)}, {rng.randint(2005, 2020)}"
        )
    elif kind < 0.65:
        cap = (
            f"{rng.choice(_ADJ).capitalize()} {rng.choice(_ADJ)} {rng.choice(_PRODUCTS)} "
            f"for {rng.choice(['women', 'men', 'kids', 'the home'])} &amp; "
            f"{rng.choice(['gifts', 'more', 'outdoor use'])}, size {rng.choice('SML')}"
        )
    elif kind < 0.8:
        cap = (
            f"{rng.choice(_ADJ).capitalize()} {rng.choice(_ROOMS)} with "
            f"{rng.choice(_FEATURES)} and {rng.choice(_FEATURES)} in "
            f"{rng.choice(['a new', 'an old', 'a luxury'])} {rng.choice(['home', 'apartment'])}"
        )
        if rng.random() < 0.5:
            cap += f", {_np(rng)} {rng.choice(_VERBS)} {rng.choice(_PLACES)}"
    elif kind < 0.9:
        cap = (
            f"Vector illustration of {_np(rng)} and {_np(rng)} "
            f"{rng.choice(['in flat style', 'on a white background', 'for your design'])}"
        )
    else:  # long multi-clause alt text
        parts = [
            f"{_np(rng)} {rng.choice(_VERBS)} {rng.choice(_PLACES)}"
            for _ in range(rng.randint(2, 4))
        ]
        cap = ", ".join(parts).capitalize() + f" in {rng.choice(_CITIES)}."
    return cap


def make_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [make_caption(rng) for _ in range(n)]


def _measure(fn) -> tuple[float, float]:
    """``(cpu_seconds, wall_seconds)`` of ``fn()``."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def main(argv: list[str] | None = None) -> int:
    from threadpoolctl import threadpool_limits

    from ovs.text.entities import (
        EntitiesConfig,
        _doc_row,
        extract,
        load_pipeline,
        normalize_caption,
        pipeline_from_config,
        vocab_from_config,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4000, help="captions for the stage path")
    p.add_argument("--naive-n", type=int, default=600, help="captions for the naive loop")
    p.add_argument("--noun-chunks", default=EntitiesConfig().noun_chunks)
    p.add_argument("--batch-size", type=int, default=EntitiesConfig().batch_size)
    p.add_argument("--pipeline", default=EntitiesConfig().pipeline)
    p.add_argument("--stock-ruler", action="store_true", help="keep spaCy's attribute_ruler")
    p.add_argument("--repeats", type=int, default=3, help="alternating stage/fair passes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    cfg = EntitiesConfig(
        pipeline=args.pipeline,
        noun_chunks=args.noun_chunks,
        batch_size=args.batch_size,
        fast_attribute_ruler=not args.stock_ruler,
    )
    caps = make_captions(args.n, args.seed)
    naive_caps = caps[: args.naive_n]
    vocab = vocab_from_config(cfg)
    stage_nlp = pipeline_from_config(cfg)
    fair_nlp = load_pipeline(
        cfg.pipeline, cfg.noun_chunks, fast_ruler=False, fast_lemmatizer=False, numpy_blas=False
    )
    full_nlp = load_pipeline(cfg.pipeline, full=True)
    naive_cfg = EntitiesConfig(pipeline=cfg.pipeline, noun_chunks="parser")
    out: dict[str, list] = {}

    def stage() -> None:
        out["stage"] = extract(stage_nlp, caps, cfg, vocab)

    def fair() -> None:
        out["fair"] = extract(fair_nlp, caps, cfg, vocab)

    def naive() -> None:
        for c in naive_caps:
            text = normalize_caption(c)
            _doc_row(full_nlp(text), c, text, naive_cfg, vocab)

    with threadpool_limits(1):
        extract(stage_nlp, caps[:200], cfg, vocab)  # warm-up (allocations, caches)
        extract(fair_nlp, caps[:200], cfg, vocab)
        for c in naive_caps[:50]:
            full_nlp(c)
        passes: dict[str, list[tuple[float, float]]] = {"stage": [], "fair": []}
        for _ in range(max(args.repeats, 1)):
            passes["stage"].append(_measure(stage))
            passes["fair"].append(_measure(fair))
        s_cpu, s_wall = min(passes["stage"])
        f_cpu, f_wall = min(passes["fair"])
        n_cpu, n_wall = _measure(naive)
    differ = sum(a != b for a, b in zip(out["stage"], out["fair"], strict=True))

    words = sum(len(c.split()) for c in caps) / len(caps)
    per_core = args.n / s_cpu
    naive_per_core = args.naive_n / n_cpu
    fair_per_core = args.n / f_cpu
    result = {
        "bench": "entities",
        "captions_per_s_per_core": round(per_core, 1),
        "fair_captions_per_s_per_core": round(fair_per_core, 1),
        "ratio_vs_fair": round(per_core / fair_per_core, 2),
        "rows_differ": differ,
        "naive_captions_per_s_per_core": round(naive_per_core, 1),
        "ratio": round(per_core / naive_per_core, 2),
        "captions_per_s_wall": round(args.n / s_wall, 1),
        "fair_captions_per_s_wall": round(args.n / f_wall, 1),
        "naive_captions_per_s_wall": round(args.naive_n / n_wall, 1),
        "n": args.n,
        "naive_n": args.naive_n,
        "mean_words_per_caption": round(words, 2),
        "words_per_s_per_core": round(per_core * words, 0),
        "stage_components": [type(c).__name__ for _, c in stage_nlp.pipeline],
        "fair_components": [type(c).__name__ for _, c in fair_nlp.pipeline],
        "naive_components": full_nlp.pipe_names,
        "noun_chunks": cfg.noun_chunks,
        "fast_attribute_ruler": cfg.fast_attribute_ruler,
        "fast_lemmatizer": cfg.fast_lemmatizer,
        "numpy_blas": cfg.numpy_blas,
        "batch_size": cfg.batch_size,
        "cc12m_hours_16_cores": round(CC12M_CAPTIONS / (per_core * 16) / 3600, 3),
        "cc12m_minutes_10_nodes_x16": round(CC12M_CAPTIONS / (per_core * 160) / 60, 2),
    }
    print(
        f"stage path: {per_core:.0f} captions/s/core ({cfg.noun_chunks} chunks, "
        f"{stage_nlp.pipe_names}); stock spaCy, same components, nlp.pipe: "
        f"{fair_per_core:.0f}/s/core ({differ} rows differ); "
        f"naive nlp(text) loop: {naive_per_core:.0f}/s/core; "
        f"mean {words:.1f} words/caption",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
