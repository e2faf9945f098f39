"""``python -m tools.oracle``: the pseudo-mask oracle on benchmarks in their real layouts, here
the VOC / Context export of a small world, with the default config's masker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ovs.codecs import decode_label_png
from ovs.data import world
from ovs.data.world import WorldConfig
from ovs.data.world_export import benchmark_roots, export
from ovs.eval.datasets import build_dataset
from ovs.pseudo_masks.masker import ImageMasker, PseudoMaskConfig
from ovs.pseudo_masks.oracle import oracle_miou
from tools import oracle as tool


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("oracle")
    world.generate(WorldConfig(num_train=2, num_eval=6, image_size=64), base / "w", workers=1)
    export(base / "w", base / "x")
    return benchmark_roots(base / "x")


def _datasets(roots, *names):
    entries = ", ".join(f"{{name: {n}, root: '{roots[n]}'}}" for n in names)
    return [f"evaluate.datasets=[{entries}]"]


def test_oracle_on_the_voc_and_context_exports(tmp_path, roots, capsys):
    out = tmp_path / "o"
    rc = tool.main(["--out", str(out), *_datasets(roots, "voc21", "context60")])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == json.loads((out / "oracle.json").read_text())
    assert set(line["benchmarks"]) == {"voc21", "context60"}
    assert (out / "oracle_voc21.png").stat().st_size > 0
    # the same number as the stage's list form on the same masks: the masker of the default
    # config (pixels + K-means, seeds by image id) over every image of the split
    masker = ImageMasker(PseudoMaskConfig()).masker
    for name in ("voc21", "context60"):
        ds = build_dataset(name, roots[name])
        samples = [ds[i] for i in range(len(ds))]
        got = masker({"key": [s["id"] for s in samples], "image": [s["image"] for s in samples]})
        maps = [decode_label_png(bytes(p)) for p in got["label_png"]]
        want = oracle_miou(maps, [s["label"] for s in samples], ds.num_classes)
        res = line["benchmarks"][name]
        assert res["images"] == len(ds) == 6 and res["skipped"] == 0
        assert res["oracle_miou"] == pytest.approx(want, abs=1e-12)
        # the world's segments follow its objects, so their oracle is far above chance
        assert 0.5 < res["oracle_miou"] <= 1.0


def test_limit_and_choice(tmp_path, roots, capsys):
    rc = tool.main(
        ["--out", str(tmp_path / "o"), "--benchmark", "voc21", "--limit", "2",
         *_datasets(roots, "voc21", "context60")]
    )  # fmt: skip
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(line["benchmarks"]) == ["voc21"] and line["benchmarks"]["voc21"]["images"] == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--benchmark", "ade20k"], "--benchmark ade20k: not among evaluate.datasets"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["evaluate.datasets=[{name: voc21, root: /nonexistent/VOC2012}]"], "benchmark voc21"),
        (["pseudo_masks.k=0"], "pseudo_masks.k"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(tmp_path, roots, capsys, args, fragment):
    out = tmp_path / "o"
    extra = [] if any(a.startswith("evaluate.") for a in args) else _datasets(roots, "voc21")
    assert tool.main(["--out", str(out), *args, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not out.exists()


def test_streamed_confusion_equals_the_list_form():
    from ovs.pseudo_masks.oracle import oracle_confusion, oracle_miou_from_confusion

    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 5, (12, 16)).astype(np.uint8) for _ in range(4)]
    gts[0][0, :3] = 255
    pseudo = [rng.integers(0, 3, (6, 8)) for _ in range(4)]
    conf = sum(oracle_confusion(p, g, 5) for p, g in zip(pseudo, gts, strict=True))
    assert oracle_miou_from_confusion(conf) == oracle_miou(pseudo, gts, 5)
