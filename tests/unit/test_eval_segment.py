"""The user inference CLI ``python -m tools.segment``."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tools.segment import main, parse_classes

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


def test_segment_bounds_the_working_resolution(tmp_path, capsys):
    """A photo above ``--max-side`` is segmented and written at the bound (aspect kept), one
    at or below it at its own size; ``--max-side 0`` keeps every image as stored."""
    big = _image(tmp_path / "big.jpg", 600, 900, seed=2)
    small = _image(tmp_path / "small.png", 30, 50)
    out = tmp_path / "out"
    rc = main(
        [
            str(big),
            str(small),
            "--classes",
            "cat,dog",
            "--out",
            str(out),
            "--max-side",
            "128",
            *BASE,
        ]
    )
    assert rc == 0
    assert np.asarray(Image.open(out / "big_label.png")).shape == (85, 128)
    assert np.asarray(Image.open(out / "small_label.png")).shape == (30, 50)
    assert "scaled from 900x600 to 128x85" in capsys.readouterr().out
    rc = main([str(big), "--classes", "cat", "--out", str(out), "--max-side", "0", *BASE])
    assert rc == 0 and np.asarray(Image.open(out / "big_label.png")).shape == (600, 900)
    assert main([str(big), "--classes", "cat", "--out", str(out), "--max-side", "-1", *BASE]) == 2


def test_segment_background_threshold(tmp_path):
    a = _image(tmp_path / "a.png")
    out = tmp_path / "out"
    args = [str(a), "--classes", "cat,dog", "--out", str(out), "--bg-threshold", "1.01", *BASE]
    assert main(args) == 0
    assert (np.asarray(Image.open(out / "a_label.png")) == 0).all()  # all background


def test_segment_errors(tmp_path, capsys):
    """Bad arguments: exit code 2 and one ``error:`` line (tests/unit/test_bad_inputs.py holds
    the whole matrix); an unreadable image among good ones: exit 1, the good ones written."""
    a = _image(tmp_path / "a.png")
    out = str(tmp_path / "out")
    for argv, fragment in (
        ([str(a), "--classes", " , ", "--out", out, *BASE], "--classes is empty"),
        ([str(tmp_path / "missing.png"), "--classes", "cat", "--out", out, *BASE], "not found"),
        (
            [str(a), "--classes", "cat", "--out", out, "--checkpoint", str(tmp_path / "x.pt")],
            "does not exist",
        ),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.startswith("error:") and err.count("\n") == 1, err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not an image")
    assert main([str(bad), str(a), "--classes", "cat", "--out", out, *BASE]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert (tmp_path / "out" / "a_label.png").exists()  # the good image was still written
    assert not (tmp_path / "out" / "bad_label.png").exists()


# ---------------------------------------------------------------- S-Seg checkpoints


def _tiny_sseg():
    from ovs.methods.sseg.config import SSegConfig
    from ovs.methods.sseg.model import SSeg
    from ovs.models.maskformer import MaskFormerConfig
    from ovs.models.text import TextConfig

    torch.manual_seed(0)
    cfg = SSegConfig(
        maskformer=MaskFormerConfig(
            backbone="resnet10t",
            backbone_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16},
            pixel_dim=32,
            mask_dim=32,
            hidden_dim=32,
            ffn_dim=64,
            num_queries=8,
        ),
        text=TextConfig(context_length=16, width=32, layers=1, heads=2),
        embed_dim=32,
    )
    return SSeg(cfg).eval()


@pytest.fixture(scope="module")
def sseg_ckpt(tmp_path_factory):
    """A real tiny S-Seg checkpoint inside a pipeline-like workdir, and the model it holds."""
    from ovs.methods.sseg.checkpoint import save_checkpoint

    model = _tiny_sseg()
    workdir = tmp_path_factory.mktemp("workdir")
    old = workdir / "train" / "0000old" / "model" / "latest.pt"
    save_checkpoint(_tiny_sseg().apply(_perturb), old, {"step": 1})
    os.utime(old, (1_000_000, 1_000_000))  # older than the real one
    path = workdir / "train" / "abc123" / "model" / "latest.pt"
    save_checkpoint(model, path, {"step": 2})
    save_checkpoint(model, workdir / "train" / "abc123" / "model" / "init.pt", {"step": 0})
    other = workdir / "self_train" / "def456" / "model" / "latest.pt"  # newest, another format
    other.parent.mkdir(parents=True)
    torch.save({"upernet": torch.zeros(1)}, other)
    return model, path, workdir


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.add_(0.5)


def _expected_label(model, image, classes):
    from ovs.eval.protocol import build_classifier, get_protocol, predict_label

    protocol = get_protocol("tiny")
    protocol.names = "synonyms"
    from ovs.methods.sseg.adapters import SSegMethod

    method = SSegMethod(model)
    return predict_label(
        method, image, build_classifier(method, classes, False, protocol), protocol
    )


def test_load_method_sseg_checkpoint(sseg_ckpt, tmp_path):
    from ovs.eval.method import MethodRef, load_method
    from ovs.methods.sseg.adapters import SSegMethod

    model, path, workdir = sseg_ckpt
    for ref in (path, workdir):  # the file, or the workdir (its newest latest.pt)
        m = load_method(MethodRef(checkpoint=str(ref), device="cpu"))
        assert isinstance(m, SSegMethod) and m.device == torch.device("cpu")
        x = torch.rand(2, 3, 40, 56)
        emb = m.text_embeddings(["cat", "dog", "grass"])
        torch.testing.assert_close(emb, model.text_embeddings(["cat", "dog", "grass"]))
        probs = m.dense_probs(x, emb)
        assert probs.shape == (2, 3, 40, 56)
        torch.testing.assert_close(probs, model.dense_probs(x, emb))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_method(MethodRef(checkpoint=str(bad)))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a sseg checkpoint"):
        load_method(MethodRef(checkpoint=str(other)))


def _log_model_run(client, exp_id, path, **tags):
    run = client.create_run(exp_id, tags=tags).info.run_id
    client.log_artifact(run, str(path), "model")  # what the train stage does
    client.set_terminated(run)
    return run


@pytest.mark.timeout(120)
def test_segment_cli_checkpoint_path_workdir_and_run_id(sseg_ckpt, tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from ovs.methods import load_checkpoint
    from pipelines.tracking import TAG_SOURCE_RUN

    model, path, workdir = sseg_ckpt
    a = _image(tmp_path / "a.png", 40, 56)
    image = np.asarray(Image.open(a).convert("RGB"))
    classes = "cat,dog|puppy,grass"
    expected = _expected_label(model, image, [["cat"], ["dog", "puppy"], ["grass"]])
    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("seg", artifact_location=(tmp_path / "mlartifacts").as_uri())
    train_run = _log_model_run(client, exp, path)
    parent = client.create_run(exp).info.run_id  # a pipeline run: the model is in a child
    client.create_run(exp, tags={"mlflow.parentRunId": parent, TAG_SOURCE_RUN: train_run})
    refs = {"file": str(path), "workdir": str(workdir), "run": train_run, "pipeline": parent}
    for form, ref in refs.items():
        out = tmp_path / form
        args = [str(a), "--classes", classes, "--checkpoint", ref, "--out", str(out)]
        assert main([*args, "--protocol", "tiny"]) == 0, form
        label = np.asarray(Image.open(out / "a_label.png"))
        np.testing.assert_array_equal(label, expected, err_msg=form)
        assert (out / "a_overlay.png").is_file()
    # Not a vacuous comparison: the older checkpoint in the workdir labels the image otherwise.
    older = load_checkpoint(workdir / "train" / "0000old" / "model" / "latest.pt")[1].eval()
    assert (_expected_label(older, image, [["cat"], ["dog", "puppy"], ["grass"]]) != expected).any()


def test_segment_cli_checkpoint_errors(sseg_ckpt, tmp_path, mlflow_uri, capsys):
    from mlflow.tracking import MlflowClient

    _, path, _ = sseg_ckpt
    a = _image(tmp_path / "a.png")
    out = str(tmp_path / "out")
    ck = ["--checkpoint", str(path), "--protocol", "tiny"]

    def fails(args, message):  # exit code 2, one error line (MLflow may log its own before it)
        assert main(args) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err

    fails([str(a), "--classes", ",", "--out", out, *ck], "--classes is empty")
    fails([str(tmp_path / "nope.png"), "--classes", "cat", "--out", out, *ck], "not found")
    missing = ["--checkpoint", str(tmp_path / "missing.pt")]
    fails([str(a), "--classes", "cat", "--out", out, *missing], "does not exist")
    fails([str(a), "--classes", "cat", "--out", out, "--checkpoint", "f" * 32], "MLflow run")
    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    empty = client.create_run(exp).info.run_id
    fails([str(a), "--classes", "cat", "--out", out, "--checkpoint", empty], "no 'model'")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    assert main([str(bad), str(a), "--classes", "cat,dog", "--out", out, *ck]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert (tmp_path / "out" / "a_label.png").is_file()
