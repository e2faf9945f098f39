"""The S-Seg+ segmenter: a closed-vocabulary UperNet on a timm backbone, trained on S-Seg's
pseudo-labels of one target dataset (S-Seg paper §4.4).

- ``config``: ``SegmenterConfig`` (the ``self_train.model`` section), ``paper_segmenter``.
- ``model``: ``Segmenter`` and its seeded builder. ``losses``/``objective``: pixel CE.
- ``recipe``: layer-decay AdamW, backbone init from a trained image backbone.
- ``checkpoint``: the file format. ``adapters``: the closed-vocabulary ``SegMethod``.
"""

from __future__ import annotations

from ovs.methods.segmenter import adapters, checkpoint, config, recipe
from ovs.methods.segmenter.model import Segmenter, build_segmenter
from ovs.methods.segmenter.objective import SegmenterObjective
from ovs.methods.spec import MethodSpec


def build_model(cfg: config.SegmenterConfig, seed: int, num_classes: int | None) -> Segmenter:
    """A seeded segmenter over ``num_classes`` classes (closed vocabulary: required)."""
    if num_classes is None:
        raise ValueError("the segmenter is closed-vocabulary: give num_classes")
    return build_segmenter(cfg, num_classes, seed)


def objective(model: Segmenter, cfg: config.SegmenterConfig) -> SegmenterObjective:
    """Pixel cross-entropy on the pseudo-labels (``cfg`` has no loss settings)."""
    return SegmenterObjective(model)


SPEC = MethodSpec(
    name=checkpoint.NAME,
    config=config.SegmenterConfig,
    flavors={"tiny": config.SegmenterConfig, "paper": config.paper_segmenter},
    build_model=build_model,
    objective=objective,
    optimizer=recipe.build_optimizer,
    save_checkpoint=checkpoint.save_checkpoint,
    from_checkpoint=checkpoint.from_checkpoint,
    seg_method=adapters.seg_method,
)
