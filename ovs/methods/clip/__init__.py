"""CLIP (Radford et al.) on open_clip's own classes: trained contrastively on the captions by the
shared loop, or loaded from open_clip pretrained weights / a local checkpoint (then not
trained).

- ``config``: ``ClipConfig``, the ``train.clip`` section, and the paper presets.
- ``model``: ``build_clip`` (an ``open_clip.CLIP``) and its tokenizer.
"""
