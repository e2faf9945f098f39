from pathlib import Path

import pytest

from ovs.config import Config, ConfigError, digest, flatten, load_config, parse_overrides, to_dict

CONF = Path(__file__).resolve().parents[1] / "conf"


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_file(tmp_path):
    cfg = load_config(write(tmp_path, "experiment: x\nworld:\n  num_train: 7\n"))
    assert cfg.experiment == "x" and cfg.world.num_train == 7
    assert cfg.world.image_size == Config().world.image_size
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
    d = to_dict(Config())
    flat = flatten(d)
    assert flat["world.num_train"] == Config().world.num_train
    assert digest(d) == digest(to_dict(Config()))
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
