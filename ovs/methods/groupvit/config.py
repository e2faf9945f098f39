"""GroupViT's typed configuration: the model (:class:`GroupViTConfig`), the loss weights
(:class:`GroupViTLossConfig`) and the ``train.groupvit`` section holding both
(:class:`GroupViTMethodConfig`).

Defaults are the tiny flavour (64-px inputs, two grouping stages of 8 and 4 groups, runs on CPU
in seconds); :func:`paper_groupvit` / :func:`paper` give GroupViT-S (NVlabs/GroupViT
``configs/default.yml``: embed 384, 6 heads, depths 6/3/3, 64 then 8 groups, patch 16, drop
path 0.1; text Transformer 12 x 256, context 77; 2-layer MLP projections into 256-d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovs.models.text import TextConfig, paper_text

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class GroupingConfig:
    """The grouping image encoder. ``depths[i]`` Transformer blocks run in stage ``i`` over the
    tokens and ``group_tokens[i]`` learnable group tokens; a grouping block after every stage
    but the last merges the tokens into ``output_groups[i]`` groups (tiny: 8 then 4)."""

    input_size: int = 64  # training crop side (paper 224; inference 448, harness-side)
    patch_size: int = 8  # paper 16
    width: int = 64  # paper 384
    heads: int = 2  # paper 6
    depths: tuple[int, ...] = (2, 1, 1)  # paper (6, 3, 3)
    group_tokens: tuple[int, ...] = (8, 4, 0)  # paper (64, 8, 0)
    output_groups: tuple[int, ...] = (8, 4)  # paper (64, 8)
    mlp_ratio: float = 4.0
    tokens_mlp_ratio: float = 0.5  # the token-mixing MLPs' hidden width / width (GroupViT)
    drop_path: float = 0.0  # paper 0.1
    gumbel: bool = True  # Gumbel noise on the assignment logits while training
    gumbel_tau: float = 1.0
    hard_assignment: bool = True  # straight-through one-hot assignment (paper)

    def validate(self) -> None:
        n = len(self.depths)
        if len(self.group_tokens) != n or len(self.output_groups) != n - 1:
            raise ValueError(
                "grouping: depths and group_tokens need one entry per stage and "
                "output_groups one per grouping block (stages - 1)"
            )
        if self.group_tokens[-1] != 0 or any(g <= 0 for g in self.group_tokens[:-1]):
            raise ValueError("grouping: every stage but the last has group tokens, the last none")
        if self.width % self.heads or self.input_size % self.patch_size:
            raise ValueError("grouping: width % heads and input_size % patch_size must be 0")


def paper_grouping() -> GroupingConfig:
    """GroupViT-S's image encoder."""
    return GroupingConfig(
        input_size=224,
        patch_size=16,
        width=384,
        heads=6,
        depths=(6, 3, 3),
        group_tokens=(64, 8, 0),
        output_groups=(64, 8),
        drop_path=0.1,
    )


@dataclass
class GroupViTConfig:
    """The whole GroupViT model. Defaults: tiny flavour; :func:`paper_groupvit` is GroupViT-S."""

    image: GroupingConfig = field(default_factory=GroupingConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 64  # shared image-text space (paper 256)
    proj_hidden: int = 64  # hidden width of both 2-layer projection MLPs (paper 4096)
    init_temperature: float = 0.07  # sigma at init (CLIP); learnable
    max_logit_scale: float = 100.0
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    text_batch_size: int = 256  # names encoded per forward in text_embeddings

    @property
    def input_size(self) -> int:
        return self.image.input_size


def paper_groupvit() -> GroupViTConfig:
    """GroupViT-S with its text Transformer (12 x 256, context 77) and 4096-wide projections."""
    return GroupViTConfig(
        image=paper_grouping(), text=paper_text(), embed_dim=256, proj_hidden=4096
    )


@dataclass
class GroupViTLossConfig:
    """GroupViT's loss: image-text InfoNCE plus the multi-label InfoNCE on up to
    ``nouns_per_image`` prompted caption nouns (paper ``multi_label: 3``), both weight 1."""

    contrastive_weight: float = 1.0
    noun_weight: float = 1.0
    nouns_per_image: int = 3
    noun_template: str = "a photo of a {}."


@dataclass
class GroupViTMethodConfig:
    """The ``train.groupvit`` section: what GroupViT trains and with which loss."""

    model: GroupViTConfig = field(default_factory=GroupViTConfig)
    loss: GroupViTLossConfig = field(default_factory=GroupViTLossConfig)


def paper() -> GroupViTMethodConfig:
    """The paper's ``train.groupvit`` section."""
    return GroupViTMethodConfig(model=paper_groupvit())
