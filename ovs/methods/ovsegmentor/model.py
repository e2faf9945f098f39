"""OVSegmentor (Xu et al., CVPR 2023): GroupViT's grouping encoder and projections with a text
tower that knows a mask token (:mod:`ovs.methods.ovsegmentor.text`). Training and inference
are GroupViT's (:class:`~ovs.methods.groupvit.model.GroupViT`); only the text tower differs."""

from __future__ import annotations

import torch
from torch import nn

from ovs.methods.groupvit.model import GroupViT
from ovs.methods.ovsegmentor.config import OVSegmentorConfig
from ovs.methods.ovsegmentor.text import BertText, MaskedClipText


class OVSegmentor(GroupViT):
    """``tokenize(texts)`` understands the ``[MASK]`` marker in either text tower."""

    cfg: OVSegmentorConfig

    def __init__(self, cfg: OVSegmentorConfig) -> None:
        super().__init__(cfg)

    def build_text(self) -> nn.Module:
        cfg = self.cfg
        assert isinstance(cfg, OVSegmentorConfig)
        return BertText(cfg.bert) if cfg.text_encoder == "bert" else MaskedClipText(cfg.text)

    def text_width(self) -> int:
        cfg = self.cfg
        assert isinstance(cfg, OVSegmentorConfig)
        return cfg.bert.hidden_size if cfg.text_encoder == "bert" else cfg.text.width

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        text: MaskedClipText | BertText = self.text  # type: ignore[assignment]
        return text.tokenize(texts).to(self.pixel_mean.device)
