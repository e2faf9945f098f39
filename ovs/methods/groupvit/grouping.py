"""GroupViT's grouping image encoder: Transformer stages over patch and group tokens, and the
grouping blocks that merge the tokens into fewer segments between stages.

* :func:`gumbel_assign`: soft assignment of tokens to groups (softmax over the *groups*, with
  Gumbel noise while training) and its straight-through hard version (one-hot forward, the soft
  assignment's gradient backward).
* :class:`GroupingBlock`: group tokens attend to the tokens, then every token is assigned to one
  group and each group becomes the assignment-weighted mean of its tokens (plus its own token).
* :class:`GroupingEncoder`: patch embedding -> stage 1 (patches + 64 groups in the paper) ->
  grouping -> stage 2 (groups + 8 new groups) -> grouping -> stage 3 over the 8 groups. Its
  forward returns the final groups and each grouping block's assignment, which inference
  composes into a patch -> final group map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ovs.methods.groupvit.config import GroupingConfig
from ovs.models.layers import MLP, Attention


def gumbel_assign(
    logits: torch.Tensor,
    tau: float = 1.0,
    hard: bool = True,
    gumbel: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assignment of N tokens to S groups from ``logits [B,S,N]`` (softmax over dim 1, the groups).

    Returns ``(assign, soft)``, both ``[B,S,N]``: ``soft = softmax((logits + g) / tau)`` with
    ``g`` standard Gumbel noise when ``gumbel`` (else 0); ``assign`` is ``soft`` when not ``hard``,
    else the one-hot of its argmax group per token with the straight-through gradient
    (``onehot - soft.detach() + soft``: forward one-hot, backward d soft).
    """
    if gumbel:
        u = torch.rand(logits.shape, generator=generator, device=logits.device)
        logits = logits - torch.log((-torch.log(u.clamp(1e-10, 1.0))).clamp_min(1e-10))
    soft = (logits / tau).softmax(dim=1)
    if not hard:
        return soft, soft
    onehot = F.one_hot(soft.argmax(dim=1), soft.shape[1]).transpose(1, 2).to(soft.dtype)
    return onehot - soft.detach() + soft, soft


class Block(nn.Module):
    """Pre-norm Transformer block (self-attention + MLP, drop path on both residuals)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio), width, 2, act="gelu")
        if drop_path > 0:
            from timm.layers import DropPath  # timm (and torchvision) only when used: ~3 s

            self.drop_path: nn.Module = DropPath(drop_path)
        else:
            self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop_path(self.attn(h, h, h))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokenMixer(nn.Module):
    """MLP along the token axis: ``[B, n_in, D] -> [B, n_out, D]`` (GroupViT's MixerMLP)."""

    def __init__(self, n_in: int, n_out: int, width: int, ratio: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = MLP(n_in, max(1, int(width * ratio)), n_out, 2, act="gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x).transpose(1, 2)).transpose(1, 2)


class GroupingBlock(nn.Module):
    """Merge ``[B,N,D]`` tokens into ``[B,S,D]`` groups given ``[B,G,D]`` group tokens.

    The G group tokens are mixed into S output groups (:class:`TokenMixer`), attend to the tokens
    (cross-attention + MLP), then each token is assigned to one group (:func:`gumbel_assign` of
    ``q(groups) . k(tokens) / sqrt(D)``) and group s becomes ``proj(sum_n a[s,n] v(x_n) /
    (sum_n a[s,n] + 1)) + token_s``, followed by a residual MLP. ``forward`` returns
    ``(groups [B,S,D], assign [B,S,N], soft [B,S,N])``.
    """

    def __init__(self, cfg: GroupingConfig, num_tokens: int, num_groups: int) -> None:
        super().__init__()
        d = cfg.width
        self.cfg = cfg
        self.norm_tokens = nn.LayerNorm(d)
        self.norm_x = nn.LayerNorm(d)
        self.mixer = TokenMixer(num_tokens, num_groups, d, cfg.tokens_mlp_ratio)
        self.norm_groups = nn.LayerNorm(d)
        self.cross_attn = Attention(d, cfg.heads)
        self.norm_cross = nn.LayerNorm(d)
        self.cross_mlp = MLP(d, int(d * cfg.mlp_ratio), d, 2, act="gelu")
        self.norm_assign = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.norm_out = nn.LayerNorm(d)
        self.out_mlp = MLP(d, int(d * cfg.mlp_ratio), d, 2, act="gelu")

    def assignment_logits(self, groups: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[B,S,D], [B,N,D] (normed) -> [B,S,N]`` scaled dot products."""
        return self.q(groups) @ self.k(x).transpose(1, 2) / math.sqrt(groups.shape[-1])

    def forward(
        self, x: torch.Tensor, group_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.norm_x(x)
        g = self.norm_tokens(group_tokens)
        g = self.norm_groups(self.mixer(g))
        g = g + self.cross_attn(g, x, x)
        g = g + self.cross_mlp(self.norm_cross(g))
        g = self.norm_assign(g)
        cfg = self.cfg
        assign, soft = gumbel_assign(
            self.assignment_logits(g, x),
            tau=cfg.gumbel_tau,
            hard=cfg.hard_assignment,
            gumbel=cfg.gumbel and self.training,
        )
        pooled = assign @ self.v(x) / (assign.sum(dim=-1, keepdim=True) + 1.0)
        out = g + self.proj(pooled)
        return out + self.out_mlp(self.norm_out(out)), assign, soft


class GroupingEncoder(nn.Module):
    """The grouping ViT: ``forward(x [B,3,H,W] normalised) -> (groups [B,S,D] after the final
    LayerNorm, assigns: list of [B,S_i,N_i] per grouping block, soft: the same, soft)``.

    ``H, W`` must be multiples of the patch size; positional embeddings are learnt for the
    training grid and resized (bicubic) for other grids.
    """

    def __init__(self, cfg: GroupingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, p = cfg.width, cfg.patch_size
        self.grid = cfg.input_size // p
        self.patch_embed = nn.Conv2d(3, d, p, stride=p)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, d))
        total = sum(cfg.depths)
        # stochastic depth rising linearly over all blocks (plain floats: builds on "meta" too)
        rates = [cfg.drop_path * j / max(total - 1, 1) for j in range(total)]
        self.stages = nn.ModuleList()
        self.group_token_params = nn.ParameterList()
        self.group_projectors = nn.ModuleList()  # previous stage's groups -> this stage's tokens
        self.grouping = nn.ModuleList()
        start = 0
        for i, depth in enumerate(cfg.depths):
            self.stages.append(
                nn.ModuleList(
                    Block(d, cfg.heads, cfg.mlp_ratio, rates[start + j]) for j in range(depth)
                )
            )
            start += depth
            g = cfg.group_tokens[i]
            if g:
                self.group_token_params.append(nn.Parameter(torch.zeros(1, g, d)))
                self.grouping.append(GroupingBlock(cfg, g, cfg.output_groups[i]))
            if i > 0 and g:
                self.group_projectors.append(
                    TokenMixer(cfg.group_tokens[i - 1], g, d, cfg.tokens_mlp_ratio)
                )
        self.norm = nn.LayerNorm(d)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for t in self.group_token_params:
            nn.init.trunc_normal_(t, std=0.02)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """``[1, h*w, D]`` positional embeddings for an ``h x w`` patch grid."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        pe = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        pe = F.interpolate(pe, size=(h, w), mode="bicubic", align_corners=False)
        return pe.permute(0, 2, 3, 1).reshape(1, h * w, -1)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.positions(h, w)
        assigns: list[torch.Tensor] = []
        softs: list[torch.Tensor] = []
        prev_groups: torch.Tensor | None = None
        for i, stage in enumerate(self.stages):
            blocks: nn.ModuleList = stage  # type: ignore[assignment]
            n_group = self.cfg.group_tokens[i]
            tokens = None
            if n_group:
                tokens = self.group_token_params[len(assigns)].expand(b, -1, -1)
                if prev_groups is not None:
                    tokens = tokens + self.group_projectors[len(assigns) - 1](prev_groups)
                x = torch.cat([x, tokens], dim=1)
            for blk in blocks:
                x = blk(x)
            if tokens is not None:
                x, tokens = x[:, :-n_group], x[:, -n_group:]
                prev_groups = tokens
                x, assign, soft = self.grouping[len(assigns)](x, tokens)
                assigns.append(assign)
                softs.append(soft)
        return self.norm(x), assigns, softs


def patch_to_groups(assigns: list[torch.Tensor]) -> torch.Tensor:
    """Compose the grouping blocks' assignments into the final groups' maps over the patches:
    ``[B,S_1,N], [B,S_2,S_1], ... -> [B,S_last,N]`` (``A_k @ ... @ A_1``)."""
    out = assigns[0]
    for a in assigns[1:]:
        out = a @ out
    return out
