"""OVSegmentor: caption masking, the mask-token text tower, the cross-image dice against plain
references and brute force, the objective's parts, switches and pair count, paper sizes."""

from __future__ import annotations

import io
import itertools
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ovs.methods.ovsegmentor import SPEC, config
from ovs.methods.ovsegmentor.losses import matched_dice, projected_masks, soft_dice
from ovs.methods.ovsegmentor.partners import PartnerIndex
from ovs.methods.ovsegmentor.text import MASK, mask_entity_words
from ovs.text.cross_image import build_pairs
from ovs.train.contrastive import contrastive_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mask_entity_words_masks_the_folded_entities_only() -> None:
    assert mask_entity_words("A man walks his dog.", ["people", "dog"]) == (
        f"A {MASK} walks his {MASK}."
    )
    # "T-shirt" folds to shirt, "couch" to sofa; "tree" is no CC4M word; "cat" not in the list
    got = mask_entity_words("cat on a couch in a T-shirt under a tree", ["sofa", "shirt"])
    assert got == f"cat on a {MASK} in a {MASK} under a tree"


def test_masked_clip_text_reads_the_first_eot() -> None:
    model = SPEC.build_model(SPEC.config(), 0, None).eval()
    text = model.text
    ids = model.tokenize([f"a {MASK} on grass", "a cat on grass"])
    assert (ids[0] == text.mask_id).sum() == 1 and (ids[1] == text.mask_id).sum() == 0
    assert text.mask_id == 49408 and text.token_embedding.num_embeddings == 49409
    eot = (ids == text.eot).int().argmax(-1)
    x = text.token_embedding(ids) + text.positional_embedding[: ids.shape[1]]
    for blk in text.blocks:
        x = blk(x)
    ref = text.ln_final(x)[torch.arange(2), eot]
    torch.testing.assert_close(text(ids), ref)


def test_soft_dice_against_plain_loop() -> None:
    g = torch.Generator().manual_seed(0)
    p, q = torch.rand(3, 10, generator=g), torch.rand(4, 10, generator=g)
    got = soft_dice(p, q)
    for i in range(3):
        for j in range(4):
            inter = sum(float(p[i, n] * q[j, n]) for n in range(10))
            ref = 1 - (2 * inter + 1) / (float(p[i].sum()) + float(q[j].sum()) + 1)
            assert float(got[i, j]) == pytest.approx(ref, rel=1e-5)


def test_matched_dice_is_the_best_permutation() -> None:
    g = torch.Generator().manual_seed(1)
    p, q = torch.rand(3, 12, generator=g), torch.rand(3, 12, generator=g)
    cost = soft_dice(p, q)
    best = min(
        sum(float(cost[i, s[i]]) for i in range(3)) / 3 for s in itertools.permutations(range(3))
    )
    assert float(matched_dice(p, q)) == pytest.approx(best, rel=1e-6)


def test_projected_masks_compete_with_the_destination_groups() -> None:
    g = torch.Generator().manual_seed(2)
    dst = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    src = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=-1)
    maps = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).T.float()  # [S,N]
    masks = projected_masks(src, dst, maps, torch.tensor(10.0))
    assert masks.shape == (2, 6)
    # patch n's embedding is its group's: the share of source group j follows the plain softmax
    for n in range(6):
        logits = 10.0 * dst[int(maps[:, n].argmax())] @ torch.cat([dst, src]).T
        torch.testing.assert_close(masks[:, n], logits.softmax(-1)[4:])
    # a source group identical to a destination group takes (about) half of that group's patches
    masks = projected_masks(dst[:1], dst, maps, torch.tensor(100.0))
    torch.testing.assert_close(masks[0, [0, 4]], torch.full((2,), 0.5), atol=1e-3, rtol=0)


def _inputs(model, n_pairs: int):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 64, 64, generator=g)
    tokens = model.tokenize(["a red boat", "a cat on grass", "a dog and a cat"])
    masked = model.tokenize([f"a red {MASK}", f"a {MASK} on grass", f"a {MASK} and a {MASK}"])
    partners = torch.rand(n_pairs, 3, 64, 64, generator=g).requires_grad_(True)
    index = torch.tensor([1, 2, 2][:n_pairs])
    entity = model.tokenize(
        ["a photo of a cat.", "a photo of a dog.", "a photo of a cat."][:n_pairs]
    )
    return images, tokens, masked, partners, index, entity


def test_objective_parts_pairs_and_switches() -> None:
    cfg = SPEC.config()
    model = SPEC.build_model(cfg, 0, None).eval()  # no Gumbel noise: repeatable forwards
    objective = SPEC.objective(model, cfg)
    images, tokens, masked, partners, index, entity = _inputs(model, 3)
    out = objective(images, tokens, masked, partners, index, entity)
    assert out["pairs"].item() == 3  # every pair of the batch reached the cross-image loss
    with torch.no_grad():
        img, _, _ = model.encode_image(images)
        scale = model.logit_scale()
        c = contrastive_loss(img, model.encode_text(tokens), scale)
        m = contrastive_loss(img, model.encode_text(masked), scale)
    assert out["contrastive"].item() == pytest.approx(c.item(), rel=1e-5)
    assert out["masked_entity"].item() == pytest.approx(m.item(), rel=1e-5)
    total = c + m + cfg.loss.cross_weight * out["cross_image"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    out["loss"].backward()
    assert partners.grad is not None and partners.grad.abs().sum() > 0  # partners reach the loss

    two = objective(*_inputs(model, 2))
    assert two["pairs"].item() == 2
    off = config.OVSegmentorLossConfig(masked_entity=False, cross_image=False)
    images, tokens, masked, partners, index, entity = _inputs(model, 3)
    out = SPEC.objective(model, config.OVSegmentorMethodConfig(loss=off))(
        images, tokens, masked, partners, index, entity
    )
    assert "masked_entity" not in out and "cross_image" not in out and out["pairs"].item() == 0
    out["loss"].backward()
    assert partners.grad is None  # switched off: the partners are not even encoded
    assert out["loss"].item() == pytest.approx(c.item(), rel=1e-5)


def test_paper_flavour_keeps_bert_base_and_groupvit_s() -> None:
    """BERT-base is published at 110M parameters (109.5M with its pooler, 108.9M without,
    which the [CLS] feature does not use); the image encoder is GroupViT-S's."""
    with torch.device("meta"):  # sizes only: no memory, no random init
        model = SPEC.build_model(config.paper(), 0, None)
    bert = sum(p.numel() for p in model.text.parameters())
    assert bert == pytest.approx(110e6, rel=0.02)
    assert model.cfg.text_encoder == "bert" and model.text_width() == 768
    assert [len(s) for s in model.image.stages] == [6, 3, 3]
    assert [t.shape[1] for t in model.image.group_token_params] == [64, 8]


def test_paper_config_file_is_the_paper_flavour() -> None:
    from pipelines.graph import load_config

    cfg = load_config("conf/ovsegmentor_cc12m.yaml", [])
    assert cfg.train.method == "ovsegmentor" and cfg.train.require_cc4m
    assert cfg.train.ovsegmentor.model == config.paper_ovsegmentor()
    assert cfg.entities.exact_rule  # OVSegmentor's CC4M rule


def _shard(path, images: dict[str, np.ndarray]) -> None:
    """A webdataset shard ``path`` (+ its ``_stats.json``) of JPEG members."""
    with tarfile.open(path, "w") as tar:
        for key, img in images.items():
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    path.with_name(f"{path.stem}_stats.json").write_text("{}")


def test_partner_index_reads_partners_on_other_shards(tmp_path) -> None:
    colours = {"a0": 20, "a1": 90, "b0": 160, "b1": 230}  # flat grey levels: decodable exactly
    imgs = {k: np.full((16, 16, 3), v, np.uint8) for k, v in colours.items()}
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "00000.tar", {k: imgs[k] for k in ("a0", "a1")})
    _shard(shards / "00001.tar", {k: imgs[k] for k in ("b0", "b1")})
    ents = {"a0": ["cat"], "a1": ["dog"], "b0": ["cat"], "b1": ["bird"]}  # only a0-b0 pair
    out = tmp_path / "entities"
    (out / "entities").mkdir(parents=True)
    for stem, keys in (("00000", ["a0", "a1"]), ("00001", ["b0", "b1"])):
        pq.write_table(
            pa.table({"key": keys, "entities": [ents[k] for k in keys]}),
            out / "entities" / f"{stem}.parquet",
        )
    table = pa.table({"key": list(ents), "entities": list(ents.values()), "keep": [True] * 4})
    pq.write_table(build_pairs(table, n=3, seed=0), out / "pairs.parquet")

    index = PartnerIndex(out, shards, image_size=8)
    assert index.entities("a1") == ["dog"] and index.entities("zz") == []
    rows, images, shared = index.draw(["a1", "a0", "b1", "b0"], np.random.default_rng(0))
    assert rows == [1, 3] and shared == ["cat", "cat"]  # a0 <-> b0, across the two shards
    assert images[0].shape == (8, 8, 3)
    assert abs(int(images[0].mean()) - colours["b0"]) <= 2  # a0's partner is b0's image
    assert abs(int(images[1].mean()) - colours["a0"]) <= 2


def test_partner_index_matches_plain_dicts(tmp_path, monkeypatch) -> None:
    """The flat-array index against the plain reading (dicts of the tables, the last of a
    duplicate key winning): entities, image locations and every draw with the same generator,
    over several read batches, duplicate keys, null and empty lists and partners whose image
    is in no shard."""
    import ovs.methods.ovsegmentor.partners as partners

    monkeypatch.setattr(partners, "BATCH", 7)
    rng = np.random.default_rng(3)
    vocab = ["cat", "dog", "bird", "tree", "car"]
    keys = [f"{i:06d}" for i in range(60)]
    shards = tmp_path / "shards"
    shards.mkdir()
    where: dict[str, int] = {}  # key -> grey level of its image (last shard wins)
    for s, part in enumerate((keys[:25], keys[20:50])):  # 20..24 in both shards
        imgs = {
            k: np.full((8, 8, 3), 10 * s + 40 + (i % 5) * 30, np.uint8) for i, k in enumerate(part)
        }
        _shard(shards / f"{s:05d}.tar", imgs)
        where.update({k: int(v[0, 0, 0]) for k, v in imgs.items()})
    out = tmp_path / "entities"
    (out / "entities").mkdir(parents=True)
    ents: dict[str, list[str]] = {}
    for stem, part in (("00000", keys[:35]), ("00001", keys[30:])):  # 30..34 twice
        lists = [None if i % 9 == 0 else list(rng.choice(vocab, i % 3)) for i in range(len(part))]
        pq.write_table(
            pa.table({"key": part, "entities": pa.array(lists, pa.list_(pa.string()))}),
            out / "entities" / f"{stem}.parquet",
        )
        ents.update({k: list(e or ()) for k, e in zip(part, lists, strict=True)})
    pool = [*keys, "ghost-partner", "x"]  # 50..59 and the ghosts have no image
    pk, se = [], []
    for _ in keys:
        n = int(rng.integers(0, 4))
        pk.append([str(x) for x in rng.choice(pool, n)])
        se.append([str(x) for x in rng.choice(vocab, n)])
    pq.write_table(
        pa.table({"key": keys, "partner_keys": pk, "shared_entity": se}), out / "pairs.parquet"
    )
    pairs = {k: list(zip(p, e, strict=True)) for k, p, e in zip(keys, pk, se, strict=True) if p}

    index = PartnerIndex(out, shards, image_size=8)
    for k in [*keys, "nope"]:
        assert index.entities(k) == ents.get(k, []), k
        img = index.image(k)
        assert (img is None) == (k not in where), k
        if img is not None:
            assert abs(int(img.mean()) - where[k]) <= 2, k
    batch = [str(k) for k in rng.choice([*keys, "nope"], 200)]
    got = index.draw(batch, np.random.default_rng(5))
    ref_rng, want_rows, want_means, want_shared = np.random.default_rng(5), [], [], []
    for i, k in enumerate(batch):  # the old dict implementation's loop
        if not pairs.get(k):
            continue
        partner, entity = pairs[k][int(ref_rng.integers(len(pairs[k])))]
        if partner in where:
            want_rows.append(i)
            want_means.append(where[partner])
            want_shared.append(entity)
    assert got[0] == want_rows and got[2] == want_shared
    assert [abs(int(m.mean()) - w) <= 2 for m, w in zip(got[1], want_means)] == [True] * len(
        want_rows
    )
    assert 0 < len(want_rows) < len(batch)
    assert index.nbytes() < 100 * len(keys) + 12 * sum(map(len, pk)) + 4 * sum(
        map(len, ents.values())
    )


def test_tiny_sibling_differs_only_in_sizes_and_the_text_tower() -> None:
    """Sizes and locations, plus the text tower the issue allows the tiny one (BERT-base ->
    the from-scratch Transformer)."""
    from tests.unit.test_groupvit import MODEL_SIZES
    from tests.unit.test_sibling_config import not_allowed, resolved

    paper, tiny = resolved("ovsegmentor_cc12m.yaml"), resolved("ovsegmentor_cc12m_local.yaml")
    diff = not_allowed(paper, tiny)
    allowed = {f"train.ovsegmentor.model.{k}" for k in (*MODEL_SIZES, "text_encoder")}
    assert set(diff) <= allowed, sorted(diff)
    assert tiny.train.ovsegmentor.loss == paper.train.ovsegmentor.loss  # same objective
