"""S-Seg+ self-training: pseudo-label a target dataset with S-Seg, train a closed-vocabulary
segmenter on the labels, evaluate it with the same protocol.

- ``pseudo_labels``: target images, per-image pseudo-labels + confidence, the confidence rule.
- ``training``: ``SelfTrainConfig``, poly schedule, labelled batches.
- ``evaluate``: closed-vocabulary sliding-window prediction and mIoU with the eval harness.

The model, its loss and optimiser recipe are the ``segmenter`` method
(:mod:`ovs.methods.segmenter`); the Ray stage is
``pipelines/self_train.py``.
"""
