"""Text tower trained from scratch: CLIP BPE tokens -> causal Transformer -> [EOS] feature.

Tokenisation reuses open_clip's ``SimpleTokenizer`` (the BPE merges ship inside the package,
so it works offline): ``[SOT] tokens [EOT] 0 0 ...``, truncated to the context length with the
last slot forced to [EOT]. [EOT] has the largest id (49407), so ``argmax`` over the ids finds
it, as in CLIP. No CLIP weights are used anywhere.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ovs.models.layers import Attention

CLIP_VOCAB_SIZE = 49408


@dataclass
class TextConfig:
    """Text Transformer. Defaults are the tiny flavour; paper (appendix A.1): 12 layers, width
    256, context 77, vocab 49408 (heads 4: CLIP's width/64)."""

    vocab_size: int = CLIP_VOCAB_SIZE
    context_length: int = 32  # paper 77
    width: int = 64  # paper 256
    layers: int = 2  # paper 12
    heads: int = 4  # paper 4
    mlp_ratio: float = 4.0


def paper_text() -> TextConfig:
    return TextConfig(context_length=77, width=256, layers=12, heads=4)


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """CLIP BPE token ids, ``[len(texts), context_length]`` int64, zero padded."""
    return _tokenizer(context_length)([str(t) for t in texts], context_length=context_length)


class Block(nn.Module):
    """Pre-norm residual Transformer block with causal self-attention (CLIP's text block)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, is_causal=True)
        return x + self.fc2(F.gelu(self.fc1(self.ln_2(x))))


class TextTransformer(nn.Module):
    """``forward(tokens [B,L] int64) -> [B,width]``: the final-LayerNorm feature at [EOT].

    ``L`` may be shorter than ``context_length`` (positions are taken from the start).
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.blocks: list[Block] = nn.ModuleList(  # type: ignore[assignment]
            Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(cfg.width)
        self._init()

    def _init(self) -> None:
        # CLIP's initialisation (open_clip TextTransformer.init_parameters).
        w, n = self.cfg.width, self.cfg.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = w**-0.5
        proj_std = attn_std * (2 * n) ** -0.5
        fc_std = (2 * w) ** -0.5
        for blk in self.blocks:
            for lin in (blk.attn.q_proj, blk.attn.k_proj, blk.attn.v_proj):
                nn.init.normal_(lin.weight, std=attn_std)
            nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(blk.fc1.weight, std=fc_std)
            nn.init.normal_(blk.fc2.weight, std=proj_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, length = tokens.shape
        if length > self.cfg.context_length:
            raise ValueError(f"{length} tokens > context length {self.cfg.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)
        return x[torch.arange(b, device=x.device), eot]
