"""``conf/cc12m.yaml`` is the paper, and ``conf/cc12m_local.yaml`` differs from it only in sizes
and locations, so the CI run of the sibling (``tests/cluster/test_ray_job.py``) runs the paper path.

The allowlist below is the whole contract: a key that differs between the two resolved
configs and matches none of its patterns fails the test, whatever its value.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from ovs.config import Config, to_dict
from ovs.data.world_export import benchmark_roots
from ovs.methods.sseg.config import paper, paper_sseg
from ovs.selftrain.training import paper_self_train
from pipelines.graph import load_config

CONF = Path(__file__).resolve().parents[2] / "conf"
WORKDIR = "/tmp/sibling-workdir"

# key pattern (flattened keys, list items as [*]; a trailing ".*" covers a whole section) ->
# why it may differ.
SIZE_AND_LOCATION: dict[str, str] = {
    "experiment": "location: the MLflow experiment (and default workdir) name",
    "pipeline.stages": "location: adds only 'world', the data stand-in (checked below)",
    # The world is the data-location difference: it generates, under world.export_dir, the
    # headerless cc12m.tsv and the VOC / Context / COCO-Object folders that cc12m reads from
    # /shared and /data. Its section is unused by cc12m (no world stage there).
    "world.*": "location: the synthetic stand-in for CC12M and the benchmarks",
    "download.url_list": "location: the exported cc12m.tsv instead of the real one",
    "download.image_size": "size: downloaded image side",
    "download.number_sample_per_shard": "size: samples per shard",
    "download.processes_count": "worker count",
    "download.thread_count": "worker count",
    "entities.num_actors": "worker count",
    "entities.pairs_bucket_rows": "size: samples per cross-image bucket",
    "pseudo_masks.pretrained": "weights: DINO weights cannot be downloaded here",
    "pseudo_masks.random_init": "weights: explicit random init instead",
    "pseudo_masks.image_size": "size: image side",
    "pseudo_masks.batch_size": "size: batch",
    "pseudo_masks.num_actors": "worker count",
    "pseudo_masks.num_cpus": "worker resources",
    "pseudo_masks.num_gpus": "worker resources (location: no GPU here)",
    "train.sseg.model.maskformer.backbone_kwargs.embed_dim": "width: Swin embedding width",
    "train.sseg.model.maskformer.backbone_kwargs.depths": "depth: Swin blocks per stage",
    "train.sseg.model.maskformer.backbone_kwargs.num_heads": "width: Swin heads per stage",
    "train.sseg.model.maskformer.pixel_dim": "width",
    "train.sseg.model.maskformer.mask_dim": "width",
    "train.sseg.model.maskformer.hidden_dim": "width",
    "train.sseg.model.maskformer.ffn_dim": "width",
    "train.sseg.model.maskformer.num_heads": "width: decoder heads",
    "train.sseg.model.maskformer.num_queries": "size: queries (masks per image)",
    "train.sseg.model.maskformer.dec_layers": "depth",
    "train.sseg.model.text.width": "width",
    "train.sseg.model.text.heads": "width: heads",
    "train.sseg.model.text.layers": "depth",
    "train.sseg.model.embed_dim": "width",
    "train.sseg.model.input_size": "size: crop side",
    "train.augment.size": "size: crop side",
    "train.num_workers": "worker count",
    "train.cpus_per_worker": "worker resources",
    "train.use_gpu": "location: no GPU here",
    "train.batch_size": "size: batch",
    "train.steps": "size: steps",
    "train.warmup_steps": "size: steps",
    "train.log_every": "size: cadence in steps",
    "train.checkpoint_every": "size: cadence in steps",
    "train.shuffle_buffer": "size: samples in the shuffle window",
    "train.eval_limit": "size: eval image count",
    "evaluate.datasets[*].root": "location: the exported benchmark folders",
    "evaluate.datasets[*].from_stage": "location: the data is made by the world stage",
    "evaluate.datasets[*].max_images": "size: eval image count",
    "evaluate.world_max_images": "size: eval image count (the world split is sibling-only)",
    "evaluate.baselines[*].pretrained": "weights: open_clip weights cannot be downloaded here",
    # open_clip's own CLIP class at a 2-layer debug width (ovs.eval.baselines.TINY_CLIP): with
    # random weights ViT-B/16 at 448 measures nothing and was most of the sibling's evaluate time
    "evaluate.baselines[*].model": "width and depth",
    "evaluate.num_actors": "worker count",
    "evaluate.num_cpus": "worker resources",
    "evaluate.num_gpus": "worker resources (location: no GPU here)",
    "evaluate.batch_size": "size: batch",
    "evaluate.num_examples": "size: figure image count",
    "self_train.target.root": "location: the exported VOC folder",
    "self_train.target.limit": "size: target image count",
    "self_train.label.num_actors": "worker count",
    "self_train.label.num_cpus": "worker resources",
    "self_train.label.num_gpus": "worker resources (location: no GPU here)",
    "self_train.label.shard_size": "size: images per shard",
    "self_train.model.pretrained": "weights: MAE weights cannot be downloaded here",
    "self_train.model.backbone_kwargs.img_size": "size: image side",
    "self_train.model.backbone_kwargs.embed_dim": "width: ViT width",
    "self_train.model.backbone_kwargs.num_heads": "width: ViT heads",
    "self_train.model.channels": "width: UperNet channels",
    "self_train.augment.size": "size: crop side",
    "self_train.num_workers": "worker count",
    "self_train.cpus_per_worker": "worker resources",
    "self_train.use_gpu": "location: no GPU here",
    "self_train.batch_size": "size: batch",
    "self_train.steps": "size: steps",
    "self_train.warmup_steps": "size: steps",
    "self_train.log_every": "size: cadence in steps",
    "self_train.checkpoint_every": "size: cadence in steps",
    "self_train.eval_limit": "size: eval image count",
}

ABSENT = "<absent>"


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys; list items get ``[i]`` (lists of scalars stay one value)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(tree, list) and any(isinstance(v, dict) for v in tree):
        out = {f"{prefix}.len": len(tree)}
        for i, v in enumerate(tree):
            out.update(flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def resolved(name: str, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    return load_config(CONF / name, [f"workdir={WORKDIR}", *overrides])


def differences(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    keys = sorted(set(fa) | set(fb))
    return {
        k: (fa.get(k, ABSENT), fb.get(k, ABSENT))
        for k in keys
        if fa.get(k, ABSENT) != fb.get(k, ABSENT)
    }


def not_allowed(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """The differences no allowlist pattern covers (``[i]`` matches ``[*]``)."""
    out = {}
    for key, values in differences(a, b).items():
        generic = re.sub(r"\[\d+\]", "[*]", key)
        if not any(_covers(pat, generic) for pat in SIZE_AND_LOCATION):
            out[key] = values
    return out


def _covers(pattern: str, key: str) -> bool:
    if pattern.endswith(".*"):
        return key.startswith(pattern[:-1])
    return key == pattern


def plain(obj: Any) -> Any:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def test_cc12m_model_is_paper_sseg() -> None:
    train = resolved("cc12m.yaml").train
    assert train.method == "sseg"
    got, want = flat(to_dict(train.sseg)), flat(plain(paper()))
    assert got.keys() == want.keys()
    assert {k: got[k] for k in got if got[k] != want[k]} == {}
    assert got["model.maskformer.mask_features"] == "query"
    assert plain(paper().model) == plain(paper_sseg())


def test_cc12m_self_train_is_the_paper_recipe() -> None:
    cfg = resolved("cc12m.yaml").self_train
    want = flat(plain(paper_self_train("voc21", "/data/VOCdevkit/VOC2012")))
    got = flat(to_dict(cfg))
    locations = {"target.root"}  # the only location in the recipe
    assert got.keys() == want.keys()
    assert {k: (got[k], want[k]) for k in got if got[k] != want[k] and k not in locations} == {}
    assert cfg.target.dataset == "voc21" and cfg.model.pretrained
    assert "self_train" in resolved("cc12m.yaml").pipeline.stages  # S-Seg+ is the paper path


def test_sibling_differs_only_in_sizes_and_locations() -> None:
    paper, local = resolved("cc12m.yaml"), resolved("cc12m_local.yaml")
    assert not_allowed(paper, local) == {}
    # The one stage difference is the data stand-in, in front of the paper's stages.
    assert local.pipeline.stages == ["world", *paper.pipeline.stages]


def test_allowlist_catches_a_structural_change() -> None:
    """The check can fail: structural edits to the sibling are reported, sizes are not."""
    paper = resolved("cc12m.yaml")
    for overrides in (
        ["train.sseg.model.maskformer.mask_features=pooled"],
        ["train.cache_in_memory=true"],
        ["pseudo_masks.extractor=pixels"],
        ["pseudo_masks.decode=cpu"],
        ["entities.text_mode=caption"],
        ["download.header=true", "download.columns=[]"],
        ["evaluate.protocols=[tiny]"],
        ["train.amp_dtype=float32"],
        ["self_train.layer_decay=1.0"],
        ["train.sseg.model.maskformer.backbone=resnet18"],
    ):
        bad = not_allowed(paper, resolved("cc12m_local.yaml", overrides))
        assert overrides[0].split("=")[0] in bad, overrides
    sized = resolved("cc12m_local.yaml", ["train.steps=7", "evaluate.batch_size=1"])
    assert not_allowed(paper, sized) == {}
    dropped = resolved("cc12m_local.yaml", ["evaluate.datasets=[]"])  # a benchmark fewer
    assert "evaluate.datasets" in not_allowed(paper, dropped)


def test_sibling_reads_what_the_world_writes() -> None:
    """Every path the sibling reads is where the world stage exports it."""
    from pipelines.evaluate import dataset_root

    local = resolved("cc12m_local.yaml")
    export = Path(local.world.export_dir)
    assert export == Path(WORKDIR) / "data"
    assert local.download.url_list == [str(export / "cc12m.tsv")]
    assert not local.download.header and local.download.columns == ["url", "caption"]
    roots = benchmark_roots(export)
    paper = resolved("cc12m.yaml")
    assert [d.name for d in local.evaluate.datasets] == [d.name for d in paper.evaluate.datasets]
    for d in local.evaluate.datasets:
        assert Path(dataset_root(d, Path(WORKDIR) / "world" / "h")) == roots[d.name]
    assert Path(local.self_train.target.root) == roots[local.self_train.target.dataset]
    # the paper path's structural choices, stated once more for the reader
    assert local.entities.text_mode == "nouns_verbs"
    assert (local.pseudo_masks.extractor, local.pseudo_masks.decode) == ("dino_vits8", "device")
    assert local.train.cache_in_memory is False
    assert local.train.sseg.model.maskformer.mask_features == "query"
    assert local.evaluate.protocols == ["mask_free"] and local.train.eval_protocol == "mask_free"
    short = {p.name: p.short_side for p in local.evaluate.resolved_protocols()}
    assert short == {"mask_free": 448}
