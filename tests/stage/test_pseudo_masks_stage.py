"""The pseudo_masks stage on a real local Ray and real MLflow (sqlite), on tiny shards made here."""

import io
import json
import tarfile
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ovs.codecs import decode_label_png
from ovs.config import Config
from ovs.data import world
from ovs.pseudo_masks.masker import PseudoMaskConfig
from ovs.stage import Progress, StageContext
from pipelines.pseudo_masks import run
from pipelines.tracking import MlflowTracker


@dataclass
class _Config(Config):
    """A root config with only the section this stage reads."""

    pseudo_masks: PseudoMaskConfig = field(default_factory=PseudoMaskConfig)


def _write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, data in samples:
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (path.parent / f"{path.stem}_stats.json").write_text(json.dumps({"count": len(samples)}))


def _jpeg(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.slow
def test_stage_writes_masks_resumes_and_reports_oracle(tmp_path, mlflow_uri, ray_local):
    wroot = tmp_path / "world"
    world.generate(world.WorldConfig(image_size=32, num_train=7, num_eval=8), wroot, workers=1)
    train = world.load_split(wroot, "train")
    shards = tmp_path / "download"
    shards.mkdir()
    jpgs = [(f"{i:09d}", _jpeg(s["image"])) for i, s in enumerate(train)]
    _write_shard(shards / "00000.tar", jpgs[:4])
    _write_shard(shards / "00001.tar", [*jpgs[4:], ("000000099", b"corrupt")])
    (shards / "00002.tar").write_bytes(b"")  # unfinished shard (no _stats.json): never read

    cfg = _Config(
        workdir=str(tmp_path / "runs"),
        pseudo_masks=PseudoMaskConfig(
            image_size=32, batch_size=3, oracle_images=8, figure_images=2
        ),
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)  # artifacts under tmp_path, not ./mlruns
    exp_id = client.create_experiment("unit", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp_id, run_name="pm").info.run_id
    out = tmp_path / "out"

    def context():
        return StageContext(
            "pseudo_masks",
            cfg,
            out,
            {"download": shards, "world": wroot},
            {},
            MlflowTracker(client, run_id),
            Progress("pseudo_masks"),
        )

    result = run(context())
    assert result["counts"] == {
        "shards": 2,
        "shards_resumed": 0,
        "images_ok": 7,
        "images_decode_error": 1,
        "images_bad_image": 0,
    }
    assert 0.5 < result["metrics"]["oracle_miou"] <= 1.0
    table = pq.read_table(out / "masks" / "00001.parquet").to_pylist()
    assert [r["key"] for r in table] == ["000000004", "000000005", "000000006", "000000099"]
    assert [r["status"] for r in table] == ["ok", "ok", "ok", "decode_error"]
    label = decode_label_png(table[0]["label_png"])
    assert label.shape == (32, 32) == (table[0]["grid_h"], table[0]["grid_w"])
    assert label.max() < table[0]["k"] == 8
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    assert "pseudo_masks_grid.png" in artifacts

    # Resume: a shard lost by a killed attempt is redone, the other is kept, results identical.
    before = pq.read_table(out / "masks" / "00000.parquet")
    (out / "masks" / "00000.parquet").unlink()
    again = run(context())
    # counts describe the whole output (the kept shard too), as in the uninterrupted run
    assert again["counts"] == {**result["counts"], "shards_resumed": 1}
    assert pq.read_table(out / "masks" / "00000.parquet").equals(before)
    assert np.isclose(again["metrics"]["oracle_miou"], result["metrics"]["oracle_miou"])

    # The actors decode the JPEG bytes themselves (decode: device): the CPU decode tasks drop
    # out of the plan; same rows, same skip counts.
    dev_cfg = _Config(
        workdir=str(tmp_path / "runs"),
        pseudo_masks=replace(cfg.pseudo_masks, decode="device", oracle_images=0),
    )
    dev_out = tmp_path / "out_device"
    dev = run(
        StageContext(
            "pseudo_masks",
            dev_cfg,
            dev_out,
            {"download": shards, "world": wroot},
            {},
            MlflowTracker(client, run_id),
            Progress("pseudo_masks"),
        )
    )
    assert dev["counts"] == result["counts"]
    dev_table = pq.read_table(dev_out / "masks" / "00001.parquet").to_pylist()
    assert [(r["key"], r["status"]) for r in dev_table] == [(r["key"], r["status"]) for r in table]
