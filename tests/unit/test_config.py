import dataclasses
import re
from pathlib import Path

import pytest

from ovs.config import ConfigError, digest, flatten, parse_overrides, to_dict
from pipelines.graph import STAGES, ExperimentConfig, load_config

CONF = Path(__file__).resolve().parents[2] / "conf"


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_file(tmp_path):
    cfg = load_config(write(tmp_path, "experiment: x\nworld:\n  num_train: 7\n"))
    assert cfg.experiment == "x" and cfg.world.num_train == 7
    assert cfg.world.image_size == ExperimentConfig().world.image_size
    assert cfg.workdir_path == Path.cwd() / "runs" / "x"


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "world:\n  num_trian: 7\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert (
        str(p) in str(e.value)
        and "world.num_trian" in str(e.value)
        and "unknown key" in str(e.value)
    )


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "world:\n  num_train: many\n")
    with pytest.raises(ConfigError, match=r"world\.num_train: expected int"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"seed: expected int"):
        load_config(write(tmp_path, "seed: true\n", "b.yaml"))


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/cfg.yaml")


def test_overrides(tmp_path):
    cfg = load_config(
        None,
        ["world.num_train=5", "workdir=/tmp/w", "world.noise_std=1e-3", "pipeline.stages=[world]"],
    )
    assert cfg.world.num_train == 5 and cfg.workdir_path == Path("/tmp/w")
    assert cfg.world.noise_std == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string
    assert cfg.pipeline.stages == ["world"]
    with pytest.raises(ConfigError, match="override:world.bogus: unknown key"):
        load_config(None, ["world.bogus=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["world.num_train"])


def test_flatten_and_digest_stable():
    d = to_dict(ExperimentConfig())
    flat = flatten(d)
    assert flat["world.num_train"] == ExperimentConfig().world.num_train
    assert digest(d) == digest(to_dict(ExperimentConfig()))
    assert digest(d) != digest(to_dict(load_config(None, ["world.seed=1"])))


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    text = path.read_text()
    assert text.startswith("#"), "each config starts with a header comment"
    assert "Runtime" in text and "Expected" in text, "header says runtime and expected result"
    load_config(path)


def test_base_file_merged_under_the_child(tmp_path):
    write(tmp_path, "experiment: parent\nworld:\n  num_train: 7\n  seed: 3\n", "parent.yaml")
    (tmp_path / "sub").mkdir()
    child = write(
        tmp_path, "base: ../parent.yaml\nexperiment: child\nworld:\n  seed: 5\n", "sub/c.yaml"
    )
    cfg = load_config(child)
    assert cfg.experiment == "child" and cfg.world.seed == 5  # the child wins
    assert cfg.world.num_train == 7  # untouched keys of a section come from the base
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="base cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(write(tmp_path, "base: nope.yaml\n", "d.yaml"))
    with pytest.raises(ConfigError, match=r"world\.bogus: unknown key"):
        load_config(write(tmp_path, "base: parent.yaml\nworld:\n  bogus: 1\n", "e.yaml"))


def test_workdir_variable_resolved_after_overrides(tmp_path):
    p = write(tmp_path, "download:\n  url_list: ['${workdir}/data/x.tsv']\n")
    cfg = load_config(p, [f"workdir={tmp_path / 'w'}"])
    assert cfg.download.url_list == [f"{tmp_path / 'w'}/data/x.tsv"]
    assert load_config(p).download.url_list == [f"{Path.cwd()}/runs/default/data/x.tsv"]


def test_section_validation_error_names_the_file(tmp_path):
    p = write(tmp_path, "download:\n  url_list: [/x/a.tsv]\n  header: false\n")
    with pytest.raises(ConfigError, match=rf"{p}: download.header is false"):
        load_config(p)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("world.max_objects=0", "world.min_objects"),
        ("world.mention_prob=1.5", "world.mention_prob"),
        ("download.distributor=spark", "download.distributor"),
        ("download.incremental_mode=append", "download.incremental_mode"),
        ("entities.text_mode=lemmas", "entities.text_mode"),
        ("entities.noun_chunks=ner", "entities.noun_chunks"),
        ("pseudo_masks.extractor=resnet", "pseudo_masks.extractor"),
        ("pseudo_masks.k=300", "pseudo_masks.k"),
        ("pseudo_masks.decode=gpu", "pseudo_masks.decode"),
        ("pseudo_masks.runtime=tensorrt", "pseudo_masks.runtime"),
        ("evaluate.protocols=[nope]", "evaluate.protocols"),
        ("evaluate.datasets=[{name: voc99, root: /x}]", "evaluate.datasets[0].name"),
        ("evaluate.baselines=[{name: b, method: dino}]", "evaluate.baselines[0].method"),
        ("pairs.scorer=nope", "pairs.scorer"),
        ("pairs.noun_column=text", "pairs.noun_column"),
        ("pairs.templates=many", "pairs.templates"),
    ],
)
def test_every_section_is_validated_at_load(override, key):
    """A bad value fails load_config (before any stage runs) with a message naming its key."""
    with pytest.raises(ConfigError, match=rf"^defaults \+ overrides: {re.escape(key)}\b"):
        load_config(None, [override])


def test_validation_sees_the_final_config(tmp_path):
    """A bad file value that an override corrects loads: sections are checked once, at the end."""
    p = write(tmp_path, "pairs:\n  scorer: nope\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: pairs.scorer"):
        load_config(p)
    assert load_config(p, ["pairs.scorer=clip"]).pairs.scorer == "clip"


def test_root_config_is_the_stage_table():
    """One section per stage, named like it, of the type its Stage names; pipeline.stages
    defaults to the whole table in order."""
    cfg = ExperimentConfig()
    assert cfg.pipeline.stages == list(STAGES)
    for name, stage in STAGES.items():
        assert type(getattr(cfg, name)) is stage.section
    fields = [f.name for f in dataclasses.fields(ExperimentConfig)]
    assert fields == ["experiment", "workdir", "seed", "pipeline", "ray", *STAGES]


# ----------------------------------------------------------------------------- benchmark data


def _voc_layout(root: Path, ids=("2007_000001",), val=True) -> Path:
    """The files ovs.eval.datasets.pascal_voc needs, with tiny images."""
    import numpy as np
    from PIL import Image

    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True, exist_ok=True)
    for sid in ids:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(base / "JPEGImages" / f"{sid}.jpg")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(base / "SegmentationClass" / f"{sid}.png")
    if val:
        (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return root


def _bench_cfg(*entries: str):
    return load_config(None, [f"evaluate.datasets=[{', '.join(entries)}]"]).evaluate


def test_missing_benchmark_data_fails_naming_dataset_root_and_key(tmp_path):
    from ovs.eval.config import BenchmarkMissing, check_benchmarks

    voc = _voc_layout(tmp_path / "voc")
    check_benchmarks(_bench_cfg(f"{{name: voc21, root: '{voc}'}}"), world_stage=True)
    nope = tmp_path / "nope"
    cfg = _bench_cfg(f"{{name: voc21, root: '{voc}'}}", f"{{name: context60, root: '{nope}'}}")
    with pytest.raises(BenchmarkMissing) as e:
        check_benchmarks(cfg, world_stage=True)
    msg = str(e.value)
    assert "evaluate.datasets[1]" in msg and "context60" in msg and str(nope) in msg
    assert "\n" not in msg and "optional: true" in msg
    # "Present" is the layout with its split list and at least one sample on disk.
    no_list = _voc_layout(tmp_path / "no_list", val=False)
    with pytest.raises(BenchmarkMissing, match=r"\[0\] \(voc21\).*ImageSets/Segmentation/val.txt"):
        check_benchmarks(_bench_cfg(f"{{name: voc21, root: '{no_list}'}}"), world_stage=True)
    empty = _voc_layout(tmp_path / "empty", ids=())
    (empty / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").write_text("2007_000009\n")
    with pytest.raises(BenchmarkMissing, match="no samples"):
        check_benchmarks(_bench_cfg(f"{{name: voc21, root: '{empty}'}}"), world_stage=True)
    with pytest.raises(BenchmarkMissing, match="no root configured"):
        check_benchmarks(_bench_cfg("{name: voc21}"), world_stage=True)
    # Two missing: one line, the first in full, the other named.
    two = _bench_cfg(f"{{name: voc21, root: '{nope}'}}", f"{{name: ade150, root: '{nope}'}}")
    with pytest.raises(
        BenchmarkMissing, match=r"datasets\[0\] \(voc21\).*also missing: \[1\] ade150"
    ):
        check_benchmarks(two, world_stage=True)


def test_optional_and_pipeline_made_benchmarks_are_not_checked_before_the_run(tmp_path):
    from ovs.eval.config import BenchmarkMissing, check_benchmarks, missing_benchmarks

    nope = tmp_path / "nope"
    cfg = _bench_cfg(
        f"{{name: voc21, root: '{nope}', optional: true}}",
        "{name: context60, root: data/VOCdevkit/VOC2010, from_stage: world}",
    )
    check_benchmarks(cfg, world_stage=True)
    assert [(i, d.name) for i, d, _ in missing_benchmarks(cfg)] == [(0, "voc21")]
    with pytest.raises(BenchmarkMissing, match=r"datasets\[1\] \(context60\).*not in pipeline"):
        check_benchmarks(cfg, world_stage=False)
    with pytest.raises(ConfigError, match="from_stage"):
        load_config(None, ["evaluate.datasets=[{name: voc21, root: /x, from_stage: train}]"])
