"""OVSegmentor's typed configuration: the model (:class:`OVSegmentorConfig`: GroupViT's
grouping encoder with a BERT-base or from-scratch text tower), its loss and proxy-task switches
(:class:`OVSegmentorLossConfig`) and the ``train.ovsegmentor`` section.

Defaults are the tiny flavour (the from-scratch CLIP-BPE text Transformer); :func:`paper` is
OVSegmentor with ViT-S GroupViT grouping (64 then 8 groups) and BERT-base (random init here;
``bert.pretrained: true`` loads ``bert.name`` from the hub or ``bert.checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovs.config import check_choice
from ovs.methods.groupvit.config import GroupViTConfig, paper_groupvit

TEXT_ENCODERS = ("transformer", "bert")


@dataclass
class BertTextConfig:
    """BERT text tower (defaults: bert-base-uncased's sizes, 110M parameters published)."""

    name: str = "bert-base-uncased"  # hub name of the tokenizer and (pretrained) weights
    pretrained: bool = False  # True: from_pretrained(checkpoint or name); False: random init
    checkpoint: str | None = None  # a local directory with the weights (offline clusters)
    vocab_size: int = 30522
    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    context_length: int = 77  # tokens per caption (GroupViT's context)


@dataclass
class OVSegmentorConfig(GroupViTConfig):
    """GroupViT's model with a choice of text tower: ``transformer`` (the from-scratch CLIP-BPE
    Transformer of ``text``, with one extra row for the mask token) or ``bert``."""

    text_encoder: str = "transformer"
    bert: BertTextConfig = field(default_factory=BertTextConfig)

    def validate(self) -> None:
        check_choice("ovsegmentor.model.text_encoder", self.text_encoder, TEXT_ENCODERS)


@dataclass
class OVSegmentorLossConfig:
    """The objective: image-caption InfoNCE, then the two proxy tasks (seed 000), each with an
    ablation switch.

    * masked entity completion (``masked_entity``, weight 1.0): the caption's entity words are
      replaced by the mask token; the masked caption must retrieve its image (InfoNCE against
      the image embedding pooled from the visual groups);
    * cross-image mask consistency (``cross_image``, weight 0.1): for a sample and a partner
      sharing an entity, the ``entity_groups`` groups most similar to the entity's prompt in
      each image are matched (Hungarian, dice cost) and their masks made consistent (dice).
    """

    contrastive_weight: float = 1.0
    masked_entity: bool = True
    entity_weight: float = 1.0
    cross_image: bool = True
    cross_weight: float = 0.1
    entity_groups: int = 2  # entity-relevant groups per image (top-k by similarity)
    entity_template: str = "a photo of a {}."
    noun_weight: float = 0.0  # GroupViT's multi-label noun loss (not in OVSegmentor)
    nouns_per_image: int = 3
    noun_template: str = "a photo of a {}."


@dataclass
class OVSegmentorMethodConfig:
    """The ``train.ovsegmentor`` section."""

    model: OVSegmentorConfig = field(default_factory=OVSegmentorConfig)
    loss: OVSegmentorLossConfig = field(default_factory=OVSegmentorLossConfig)


def paper_ovsegmentor() -> OVSegmentorConfig:
    """ViT-S grouping (GroupViT-S) with BERT-base."""
    g = paper_groupvit()
    return OVSegmentorConfig(
        image=g.image,
        text=g.text,
        embed_dim=g.embed_dim,
        proj_hidden=g.proj_hidden,
        text_encoder="bert",
    )


def paper() -> OVSegmentorMethodConfig:
    """The paper's ``train.ovsegmentor`` section."""
    return OVSegmentorMethodConfig(model=paper_ovsegmentor())
