"""OVSegmentor's text towers and caption masking.

* :func:`mask_entity_words`: the caption with every word whose CC4M class is one of the
  sample's entities replaced by a mask marker (masked entity completion's input).
* :class:`MaskedClipText`: the from-scratch CLIP-BPE Transformer with one extra token row, the
  mask token (id 49408, above [EOT]; the feature is read at the first [EOT], not the argmax).
* :class:`BertText`: BERT (``transformers``), random init or ``from_pretrained``; the feature
  is the last layer's [CLS]; the tokenizer's own ``[MASK]``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from ovs.methods.ovsegmentor.config import BertTextConfig
from ovs.models.text import TextConfig, TextTransformer, _tokenizer
from ovs.text.cc4m import CC4M_VOCAB

MASK = "[MASK]"
_WORD = re.compile(r"[\w-]+")


def mask_entity_words(caption: str, entities: Sequence[str], mask: str = MASK) -> str:
    """``caption`` with each word whose folded CC4M class is in ``entities`` replaced by
    ``mask`` ("a man and his dog", ["people", "dog"] -> "a [MASK] and his [MASK]")."""
    wanted = set(entities)

    def sub(m: re.Match[str]) -> str:
        w = m.group(0)
        c = CC4M_VOCAB.exact.get(w) or CC4M_VOCAB.lower.get(w.lower())
        return mask if c is not None and c in wanted else w

    return _WORD.sub(sub, caption)


class MaskedClipText(TextTransformer):
    """``forward(tokens [B,L]) -> [B,width]`` at the first [EOT]; token id ``vocab_size`` (of
    the configured, unextended table) is the mask token."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__(replace(cfg, vocab_size=cfg.vocab_size + 1))
        self.mask_id = cfg.vocab_size
        tok = _tokenizer(cfg.context_length)
        self.sot, self.eot = int(tok.sot_token_id), int(tok.eot_token_id)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP BPE ids ``[B, context_length]``; each ``MASK`` marker becomes the mask id."""
        tok, n = _tokenizer(self.cfg.context_length), self.cfg.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            ids: list[int] = []
            for j, piece in enumerate(str(text).split(MASK)):
                if j:
                    ids.append(self.mask_id)
                ids.extend(tok.encode(piece))
            ids = [self.sot, *ids[: n - 2], self.eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, length = tokens.shape
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_final(x)
        eot = (tokens == self.eot).int().argmax(dim=-1)
        return x[torch.arange(b, device=x.device), eot]


@functools.lru_cache(maxsize=2)
def _bert_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


class BertText(nn.Module):
    """``forward(ids [B,L]) -> [B,hidden]``: BERT's last-layer [CLS] feature (pad id 0 masked)."""

    def __init__(self, cfg: BertTextConfig) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.cfg = cfg
        if cfg.pretrained:
            self.bert = BertModel.from_pretrained(
                cfg.checkpoint or cfg.name, add_pooling_layer=False
            )
        else:
            conf = BertConfig(
                vocab_size=cfg.vocab_size,
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.layers,
                num_attention_heads=cfg.heads,
                intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_positions,
            )
            self.bert = BertModel(conf, add_pooling_layer=False)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """The hub tokenizer of ``cfg.name`` (its ``[MASK]`` is the mask token)."""
        tok = _bert_tokenizer(self.cfg.checkpoint or self.cfg.name)
        enc = tok(
            [str(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.cfg.context_length,
            return_tensors="pt",
        )
        return enc["input_ids"]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.bert(input_ids=ids, attention_mask=(ids != 0).long())
        return out.last_hidden_state[:, 0]
