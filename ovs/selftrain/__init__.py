"""S-Seg+ self-training: pseudo-label a target dataset with S-Seg, train a closed-vocabulary
segmenter on the labels, evaluate it with the same protocol.

- ``pseudo_labels``: target images, per-image pseudo-labels + confidence, the confidence rule.
- ``loss``: pixel cross-entropy with an ignore index.
- ``training``: ``SelfTrainConfig``, layer-decay AdamW, poly schedule, labelled batches.
- ``evaluate``: closed-vocabulary sliding-window prediction and mIoU with the eval harness.

The model (timm backbone + UperNet) is :mod:`ovs.models.upernet`; the Ray stage is
``pipelines/self_train.py``.
"""
