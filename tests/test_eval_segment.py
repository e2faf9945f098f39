"""The user inference CLI ``python -m ovs.segment``."""

import numpy as np
import pytest
from PIL import Image

from ovs.segment import main, parse_classes

BASE = ["--method", "maskclip", "--model", "tiny", "--pretrained", "none", "--protocol", "tiny"]


def _image(path, h=30, w=50, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_parse_classes():
    assert parse_classes("cat, dog ,tv|television,, ") == [["cat"], ["dog"], ["tv", "television"]]
    assert parse_classes(" , |") == []


def test_segment_writes_overlay_and_labels(tmp_path, capsys):
    a = _image(tmp_path / "a.png")
    b = _image(tmp_path / "b.jpg", 40, 24, seed=1)
    out = tmp_path / "out"
    rc = main([str(a), str(b), "--classes", "cat,dog|puppy,grass", "--out", str(out), *BASE])
    assert rc == 0
    for stem, (h, w) in [("a", (30, 50)), ("b", (40, 24))]:
        label = np.asarray(Image.open(out / f"{stem}_label.png"))
        assert label.shape == (h, w) and label.max() <= 2
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert overlay.shape[1] > w and overlay.shape[2] == 3  # legend to the right
    assert "a.png ->" in capsys.readouterr().out


def test_segment_background_threshold(tmp_path):
    a = _image(tmp_path / "a.png")
    out = tmp_path / "out"
    args = [str(a), "--classes", "cat,dog", "--out", str(out), "--bg-threshold", "1.01", *BASE]
    assert main(args) == 0
    assert (np.asarray(Image.open(out / "a_label.png")) == 0).all()  # all background


def test_segment_errors(tmp_path, capsys):
    a = _image(tmp_path / "a.png")
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as e:
        main([str(a), "--classes", " , ", "--out", out, *BASE])
    assert e.value.code == 2 and "--classes is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing.png"), "--classes", "cat", "--out", out, *BASE])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(a), "--classes", "cat", "--out", out, "--checkpoint", str(tmp_path / "x.pt")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not an image")
    assert main([str(bad), str(a), "--classes", "cat", "--out", out, *BASE]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert (tmp_path / "out" / "a_label.png").exists()  # the good image was still written
    assert not (tmp_path / "out" / "bad_label.png").exists()
