"""CLIP (Radford et al.) on open_clip's own classes: trained contrastively on the captions by the
shared loop, or loaded from open_clip pretrained weights / a local checkpoint (then not
trained). Evaluated as three rows: ``clip`` (dense patch tokens), ``maskclip`` (value
embeddings of the last attention layer) and ``pm_clip`` (Baseline 1: pseudo-mask + CLIP).

- ``config``: ``ClipConfig``, the ``train.clip`` section, and the paper presets.
- ``model``: ``build_clip`` (an ``open_clip.CLIP``), the tokenizer, ``ClipModel``.
- ``objective``: open_clip's ``ClipLoss`` on one caption batch. ``recipe``: AdamW groups.
- ``checkpoint``: the file format. ``adapters``, ``pseudo_mask_clip``: the evaluation rows.
"""

from __future__ import annotations

from ovs.methods.clip import adapters, checkpoint, config, recipe
from ovs.methods.clip.model import build_model
from ovs.methods.clip.objective import objective
from ovs.methods.spec import MethodSpec

SPEC = MethodSpec(
    name=checkpoint.NAME,
    config=config.ClipConfig,
    flavors={"tiny": config.ClipConfig, "paper": config.paper},
    build_model=build_model,
    objective=objective,
    optimizer=recipe.build_optimizer,
    save_checkpoint=checkpoint.save_checkpoint,
    from_checkpoint=checkpoint.from_checkpoint,
    seg_method=adapters.seg_method,
    rows=adapters.ROWS,
    trainable=lambda cfg: cfg.trainable,
    context_length=lambda cfg: cfg.context_length,
    input_size=lambda cfg: cfg.vision.image_size,
)
