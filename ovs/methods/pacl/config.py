"""PACL (Mukhoti et al., CVPR 2023; seed 001): typed configuration.

:class:`PACLConfig` is the model: the frozen CLIP (a :class:`~ovs.methods.clip.config.ClipConfig`;
its weights from the ``clip`` method's checkpoint trained in the same run, ``clip_checkpoint``,
filled in by the spec's ``bind``, or open_clip pretrained weights at paper scale) and the
residual patch embedder trained on top. :class:`PACLMethodConfig` is the ``train.pacl``
section. Defaults are the tiny flavour (the ``clip`` method's tiny towers, 64-px inputs).

Published hyper-parameters: seed 001 is the authors' poster, which gives the encoder (CLIP
ViT-B/16, frozen), the embedder's form and the data (GCC3M + GCC12M + YFCC15M) but no optimiser
settings, so the section holds none of its own: PACL trains with the ``train`` stage's loop
settings (AdamW, cosine), an assumption, not a published recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ovs.methods.clip.config import ClipConfig
from ovs.methods.clip.config import paper as paper_clip


@dataclass
class PACLConfig:
    """The PACL model. ``hidden_dim``: the residual MLP's hidden width (None: the CLIP embedding
    width). The embedder maps CLIP's projected patch tokens (``clip.embed_dim``) into the text
    embedding space (the same width): ``e(x) = Linear(x) + MLP_2(x)``.

    ``clip_checkpoint`` is left out of the stage hash: bound by the ``train`` stage, it is the
    output of the ``train.clip`` section trained in the same run, which that hash holds already,
    so PACL's output is the same whether it is trained alone or beside other methods. (A path
    set by hand to an outside file is not hashed either: change another key to retrain.)"""

    UNHASHED: ClassVar[tuple[str, ...]] = ("clip_checkpoint",)

    clip: ClipConfig = field(default_factory=ClipConfig)
    clip_checkpoint: str | None = None  # a ``clip`` method checkpoint (bind fills it in)
    hidden_dim: int | None = None
    init_temperature: float = 0.07  # sigma of the PACL logits at init; learnable
    max_logit_scale: float = 100.0
    input_size: int = 64  # training crop side (the CLIP's image size)
    text_batch_size: int = 256

    def validate(self) -> None:
        """``ValueError`` naming the bad ``train.pacl.model`` key."""
        self.clip.validate()
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise ValueError(f"train.pacl.model.hidden_dim must be >= 1, got {self.hidden_dim}")
        if not 0 < self.init_temperature < 1:
            raise ValueError("train.pacl.model.init_temperature must be in (0, 1)")
        if not self.clip.model and self.input_size % self.clip.vision.patch_size:
            raise ValueError(
                f"train.pacl.model.input_size {self.input_size} is not a multiple of the CLIP "
                f"patch size {self.clip.vision.patch_size}"
            )


def paper_pacl() -> PACLConfig:
    """Paper scale: OpenAI's CLIP ViT-B/16 (frozen), 224 crops, embedder into its 512-d space."""
    return PACLConfig(clip=paper_clip(), input_size=224)


@dataclass
class PACLMethodConfig:
    """The ``train.pacl`` section: the model; the loss is PACL's symmetric InfoNCE alone."""

    model: PACLConfig = field(default_factory=PACLConfig)

    def validate(self) -> None:
        self.model.validate()


def paper() -> PACLMethodConfig:
    """The paper-scale ``train.pacl`` section."""
    return PACLMethodConfig(model=paper_pacl())
