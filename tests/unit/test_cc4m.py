"""CC4M vocabulary, synonym folding, and the exact rule against OVSegmentor's NLTK rule.

``GOLDEN`` holds, for hand-written captions with tricky cases, the entity words that
OVSegmentor's rule (``nltk.word_tokenize`` + exact membership in the 100 words) finds. They were
produced with nltk 3.10 (NLTKWordTokenizer over Punkt sentences; abbreviation-free captions, so
Punkt's pretrained English model and its untrained default split them alike);
``test_golden_is_nltk`` re-derives them with nltk when it is installed (test-only dependency).
"""

from __future__ import annotations

import pytest

from ovs.text.cc4m import (
    CC4M_ENTITY_WORDS,
    CC4M_SYNONYMS,
    CC4M_VOCAB,
    build_vocab,
    match_entities,
    treebank_tokenize,
)

GOLDEN: list[tuple[str, list[str]]] = [
    ("A dog running on the beach.", ["dog"]),
    ("Two dogs running on the beach", []),
    ("Dog sitting on a sofa", ["sofa"]),
    ("the dog's favourite ball", ["ball", "dog"]),
    ("A man in a red T-shirt holding a cup of coffee.", ["T-shirt", "cup", "man"]),
    ("Women's T-Shirt with a cat print", ["cat"]),
    ("t-shirt design with a bear", ["bear"]),
    ("Watching TV in the living room", ["TV"]),
    ("an old tv on a wooden desk", ["desk", "tv"]),
    ("A TV's remote control on the couch!", ["TV", "couch", "remote"]),
    ("Bride and groom cutting the wedding cake.", ["cake", "groom"]),
    ("Children playing with a kite in the park", ["kite"]),
    ("A child's bicycle leaning against a house", ["bicycle", "child", "house"]),
    ("Motorbike parked next to the hotel; a bike nearby", ["bike", "hotel"]),
    ("A bowl of oranges and an apple on the table.", ["apple", "bowl", "table"]),
    ("Light blue shirt and tie", ["shirt", "tie"]),
    ("a cat. a dog", ["cat", "dog"]),
    ("Cat.Dog", []),
    ('"Dog" written on a box', ["box"]),
    ("The horse (and the cow) in the field", ["cow", "horse"]),
    ("A girl with her umbrella, walking in the rain...", ["girl", "umbrella"]),
    ("Is this a bird? Yes!", ["bird"]),
    ("pizza,sandwich and donut", ["donut", "pizza", "sandwich"]),
    ("People walking past the building at night", ["building"]),
    ("a couple of people on a boat", ["boat", "couple", "people"]),
    ("A student reading a book on a bench -- outdoors", ["bench", "book", "student"]),
    ("Laptop, keyboard and mouse on a desk", ["desk", "keyboard", "mouse"]),
    ("Skis and snowboard on the snow", ["snowboard"]),
    ("An elephant, a zebra and a giraffe at the zoo", ["elephant", "giraffe", "zebra"]),
    ("Refrigerator full of food in the kitchen", []),
    ("Baby sleeping in bed with a teddy bear", ["bear", "bed"]),
    ("Men's suitcases at the airport", []),
    ("a vase of flowers by the window.", ["vase"]),
    ("Cars and buses on the street", []),
    ("A dog's life: sleeping on the sofa all day", ["dog", "sofa"]),
    ("handbag & backpack collection", ["backpack", "handbag"]),
    ("Toilet and sink in a small bathroom.", ["sink"]),
    ("A woman can't find her phone", ["phone", "woman"]),
    ("The surfboard/skateboard shop", []),
    ("An airplane flying over the train station.", ["airplane", "train"]),
    ("Banana, carrot, and a knife; no spoon or fork", ["carrot", "fork", "knife", "spoon"]),
    ("Sheep grazing on a hill. Sunset.", []),
    ("I'm wearing a shirt", ["shirt"]),
    ("Lady with a glass of wine at the table", ["glass", "table"]),
    ("A microwave oven and a toaster", ["microwave", "oven", "toaster"]),
    ("Living room with a clock on the wall and a plant in the corner.", ["clock", "plant"]),
    ("A racket and a ball on a tennis court", ["ball", "racket"]),
    ("Dogs", []),
    ("The monitor: a new 4K display for gamers", ["monitor"]),
    ("<PERSON> with his dog at the premiere", ["dog"]),
    ("A dog.\nA cat on the bed.", ["bed", "cat", "dog"]),
    ("the 'dog' toy and a `cat`", ["cat", "dog"]),
    ("cat!dog?bird", ["bird", "cat", "dog"]),
    ("A cup-cake and a tea-cup", []),
    ("Phone: +1 (555) 123; phone case for iPhone", ["phone"]),
    ("A kid’s bike — red", ["bike", "kid"]),
]

# OVSegmentor's TOP_UNIQUE_CLASSES (clip_dataset.py), the classes after folding.
UNIQUE_CLASSES = """people car bus truck motorcycle train bicycle boat aeroplane cup bottle bowl
knife spoon glass fork chair table bench clock laptop light vase plant remote microwave toaster
oven mouse keyboard sofa monitor tv flower refrigerator house bag umbrella book backpack phone
shirt tie suitcase box sink bed toilet cat dog horse bird cow sheep elephant bear zebra giraffe
ball racket skateboard skis snowboard surfboard kite pizza cake apple banana sandwich orange
carrot donut""".split()


def test_vocabulary_and_folding() -> None:
    assert len(CC4M_ENTITY_WORDS) == len(set(CC4M_ENTITY_WORDS)) == 100
    assert sorted(CC4M_VOCAB.classes) == sorted(UNIQUE_CLASSES)
    assert len(UNIQUE_CLASSES) == 73
    assert all(CC4M_SYNONYMS.get(w, w) in UNIQUE_CLASSES for w in CC4M_ENTITY_WORDS)
    assert CC4M_VOCAB.exact["women"] == "people" and CC4M_VOCAB.exact["TV"] == "tv"
    assert CC4M_VOCAB.exact["T-shirt"] == "shirt" and CC4M_VOCAB.exact["desk"] == "table"


def test_golden_set_is_large_and_mixed() -> None:
    assert len(GOLDEN) >= 30
    kept = sum(bool(w) for _, w in GOLDEN)
    assert 5 <= len(GOLDEN) - kept and kept >= 20  # both outcomes well represented


@pytest.mark.parametrize(("caption", "words"), GOLDEN)
def test_exact_rule_matches_ovsegmentor(caption: str, words: list[str]) -> None:
    tokens = treebank_tokenize(caption)
    got = match_entities(tokens, exact=True)
    assert bool(got) == bool(words)  # same keep/drop decision
    assert got == list(dict.fromkeys(CC4M_SYNONYMS.get(w, w) for w in tokens if w in words))
    assert sorted({t for t in tokens if t in CC4M_ENTITY_WORDS}) == words


def test_golden_is_nltk() -> None:
    nltk_tok = pytest.importorskip("nltk.tokenize")
    sent, word = nltk_tok.PunktSentenceTokenizer(), nltk_tok.NLTKWordTokenizer()
    for caption, words in GOLDEN:
        ref = [w for s in sent.tokenize(caption) for w in word.tokenize(s)]
        assert treebank_tokenize(caption) == ref, caption
        assert sorted({w for w in ref if w in CC4M_ENTITY_WORDS}) == words, caption


def test_lemma_mode_is_case_and_number_insensitive() -> None:
    toks = ["Two", "Dogs", "and", "a", "T-shirt", "near", "the", "TV"]
    lemmas = ["two", "dog", "and", "a", "t-shirt", "near", "the", "tv"]
    assert match_entities(toks, lemmas) == ["dog", "shirt", "tv"]
    assert match_entities(toks, lemmas, exact=True) == ["shirt", "tv"]
    # with POS tags only nominal tokens match ("light" is an adjective here)
    assert match_entities(["light", "blue", "sky"], ["light", "blue", "sky"]) == ["light"]
    assert match_entities(["light", "blue"], ["light", "blue"], pos=["ADJ", "ADJ"]) == []
    assert match_entities(["men"], ["man"], pos=["NOUN"]) == ["people"]


def test_vocab_override() -> None:
    v = build_vocab(["Sky", "cloud", "clouds"], {"clouds": "cloud"})
    assert match_entities(["sky", "Clouds"], ["sky", "cloud"], vocab=v) == ["Sky", "cloud"]
    assert match_entities(["sky", "clouds"], vocab=v, exact=True) == ["cloud"]
    assert build_vocab(["TV"], {}).exact == {"TV": "TV"}  # {} = no folding
