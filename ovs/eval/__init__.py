"""Evaluation harness: benchmark datasets, protocols, baselines, metrics glue, pictures.

- ``method``: the ``SegMethod`` interface and ``load_method(ref)`` (baselines; trained methods
  through their spec).
- ``datasets``: mmseg-layout loaders (VOC, Context, COCO-Object/Stuff, ADE20K, Cityscapes,
  synthetic world).
- ``coco_object``: COCO-Stuff / instance JSON → COCO-Object labels (+ CLI).
- ``names`` / ``classnames/``: class-name files and renames; ``templates``: prompt templates.
- ``protocol``: ``ProtocolConfig`` presets, sliding-window inference, ``evaluate``.
- ``baselines``: CLIP and MaskCLIP dense baselines on open_clip.
- ``visualize``: palettes, overlays, grids, IoU bar charts.
- ``config``: ``EvalConfig``, the evaluation stage's config section.
- ``runner``: ``EvalTask`` + ``ShardEvaluator`` (the sharded evaluation's per-item function),
  ``MethodsEvaluator`` (one pool for several methods) and ``combine_rows``.
"""
