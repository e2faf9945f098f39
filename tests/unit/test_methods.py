"""Every entry of ``ovs.methods.METHODS`` through its spec alone: build from the default config,
one loss on a tiny batch (with a backward), a checkpoint that round-trips through the generic
loader, and a ``SegMethod`` whose ``dense_probs`` has the harness's shape."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ovs.config import ConfigError, hash_view
from ovs.methods import LEGACY_METHOD, METHODS, get_method, load_checkpoint
from ovs.methods.spec import RowOptions
from ovs.methods.sseg.model import SSeg
from ovs.pseudo_masks.masker import PseudoMaskConfig
from pipelines.graph import load_config

NUM_CLASSES = 3
# Built without num_classes, text embeddings from their towers, trained on caption batches
# (images, pseudo-mask labels, tokens; OVSegmentor adds masked captions and a partner).
OPEN_VOCAB = ("sseg", "clip", "pacl", "pmvit", "groupvit", "ovsegmentor")


@dataclass
class _Optim:
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 1.0


def _batch(name: str, model: torch.nn.Module) -> tuple:
    """A tiny batch in the objective's argument order."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g)
    if name == "ovsegmentor":  # caption, masked caption, one partner sharing "cat"
        tokens = model.tokenize(["a red boat", "a cat on grass"])
        masked = model.tokenize(["a red [MASK]", "a [MASK] on grass"])
        partner = torch.rand(1, 3, 64, 64, generator=g)
        entity = model.tokenize(["a photo of a cat."])
        return images, tokens, masked, partner, torch.tensor([1]), entity
    if name in OPEN_VOCAB:  # the caption batch; CLIP, PACL and GroupViT ignore the labels
        labels = torch.randint(0, 4, (2, 64, 64), generator=g)
        return images, labels, model.tokenize(["a red boat", "a cat on grass"])
    return images, torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=g)


def _text(name: str, method) -> torch.Tensor:
    if name in OPEN_VOCAB:
        return method.text_embeddings(["cat", "dog", "grass"])
    return torch.eye(NUM_CLASSES)  # closed vocabulary: the classes themselves


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_spec_end_to_end(name: str, tmp_path) -> None:
    torch.set_num_threads(1)
    spec = METHODS[name]
    assert spec.name == name and get_method(name) is spec
    cfg = spec.config()
    assert set(spec.flavors) >= {"tiny", "paper"}
    assert isinstance(spec.flavors["tiny"](), spec.config)
    classes = None if name in OPEN_VOCAB else NUM_CLASSES
    model = spec.build_model(cfg, 0, classes)
    objective = spec.objective(model, cfg)
    out = objective(*_batch(name, model))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    opt = spec.optimizer(model, _Optim())
    out["loss"].backward()
    opt.step()
    assert spec.wrap_ddp(objective) is objective  # not distributed: unwrapped

    path = spec.save_checkpoint(model, tmp_path / "m.pt", {"step": 1})
    got_spec, loaded = load_checkpoint(path)
    assert got_spec is spec
    model.eval(), loaded.eval()
    x = torch.rand(1, 3, 64, 64)
    fwd = (x, torch.randint(0, 4, (1, 64, 64))) if name == "pmvit" else (x,)
    with torch.no_grad():
        a, b = model(*fwd), loaded(*fwd)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        torch.testing.assert_close(u, v)

    method = spec.seg_method(loaded, torch.device("cpu"))
    probs = method.dense_probs(torch.rand(2, 3, 40, 56), _text(name, method))
    assert probs.shape == (2, 3, 40, 56)
    for row, build in spec.rows.items():  # further evaluation rows of the same model
        other = build(loaded, torch.device("cpu"), RowOptions(PseudoMaskConfig(image_size=32)))
        probs = other.dense_probs(torch.rand(2, 3, 40, 56), _text(name, other))
        assert probs.shape == (2, 3, 40, 56), row


def test_checkpoint_without_method_key_loads_as_sseg(tmp_path) -> None:
    spec = METHODS[LEGACY_METHOD]
    model = spec.build_model(spec.config(), 0, None)
    path = spec.save_checkpoint(model, tmp_path / "new.pt", None)
    state = torch.load(path, weights_only=True)
    del state["method"]
    torch.save(state, tmp_path / "old.pt")
    got, loaded = load_checkpoint(tmp_path / "old.pt")
    assert got.name == "sseg" and isinstance(loaded, SSeg)


def test_unknown_method_names_the_choices(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown method 'nope'.*sseg"):
        get_method("nope")
    torch.save({"method": "nope", "model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        load_checkpoint(tmp_path / "x.pt")


def test_unknown_train_method_fails_at_config_load() -> None:
    with pytest.raises(
        ConfigError,
        match=r"train.method: unknown method 'nope'.*\['clip', 'groupvit', 'ovsegmentor', 'pacl', 'pmvit', 'sseg'\]",
    ):
        load_config(None, ["train.method=nope"])
    # A method the train stage has no section for (closed-vocabulary) is not a choice either.
    with pytest.raises(ConfigError, match="unknown method 'segmenter'"):
        load_config(None, ["train.method=segmenter"])


def test_train_hash_holds_the_selected_method_section() -> None:
    train = load_config(None, []).train
    assert train.method_config is train.sseg
    view = hash_view(train)
    assert view["method"] == "sseg" and "model" in view["sseg"] and "loss" in view["sseg"]
    assert "clip" not in view and "methods" not in view  # as before train.methods existed
    assert train.unselected() == ("clip", "pacl", "pmvit", "groupvit", "ovsegmentor", "methods")
    assert "groupvit" not in view and "ovsegmentor" not in view


def test_train_methods_hash_every_trained_section() -> None:
    train = load_config(None, ["train.methods=[clip]"]).train
    assert train.trained_methods() == ("sseg", "clip")
    view = hash_view(train)
    assert view["methods"] == ["clip"] and "vision" in view["clip"] and "sseg" in view
    with pytest.raises(ConfigError, match="train.methods: unknown method 'nope'"):
        load_config(None, ["train.methods=[nope]"])
    with pytest.raises(ConfigError, match="must be unique and not repeat train.method"):
        load_config(None, ["train.methods=[sseg]"])


def test_requirements_train_first(monkeypatch) -> None:
    """A method naming another in ``requires`` (PACL: clip) pulls it in, ordered before it."""
    from dataclasses import replace

    from ovs import training

    needs_clip = replace(METHODS["sseg"], requires=("clip",))
    monkeypatch.setitem(training.METHODS, "sseg", needs_clip)
    train = load_config(None, []).train
    assert train.trained_methods() == ("clip", "sseg")
    assert "clip" in hash_view(train) and "methods" not in hash_view(train)
