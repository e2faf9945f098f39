"""CLIP's typed configuration: the ``train.clip`` section (:class:`ClipConfig`).

Defaults are the tiny flavour for the embedded world: a custom open_clip ``CLIP`` (64-px ViT
of 4 layers x 128, text Transformer 2 x 64, context 32: S-Seg's tiny text tower) trained from
scratch on the captions. :func:`paper` names real open_clip weights (``ViT-B-16`` /
``openai``): with ``pretrained`` set the model is loaded, not trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipVisionConfig:
    """open_clip ``CLIPVisionCfg`` sizes of a custom ViT image tower (``model: ""``)."""

    image_size: int = 64  # training crop side (train.augment.size)
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    head_width: int = 32
    mlp_ratio: float = 4.0


@dataclass
class ClipTextConfig:
    """open_clip ``CLIPTextCfg`` sizes of a custom text tower (``model: ""``)."""

    context_length: int = 32
    vocab_size: int = 49408  # CLIP BPE (open_clip's SimpleTokenizer)
    width: int = 64
    heads: int = 4
    layers: int = 2
    mlp_ratio: float = 4.0


@dataclass
class ClipConfig:
    """The ``train.clip`` section: which open_clip CLIP, and whether it is trained.

    ``model``: an open_clip model name (``ViT-B-16``, ``ViT-L-14``, ...) or ``""`` for the custom
    towers of ``vision`` / ``text`` (the embedded world). ``pretrained``: an open_clip
    pretrained tag (``openai``, ``laion2b_s34b_b88k``) or a local checkpoint file; set, the
    weights are loaded and the ``train`` stage does not train the model (``trainable``).
    ``init_temperature``: sigma at init (CLIP 0.07), learnable, 1/sigma clamped to
    ``max_logit_scale``.
    """

    model: str = ""
    pretrained: str | None = None
    embed_dim: int = 64
    vision: ClipVisionConfig = field(default_factory=ClipVisionConfig)
    text: ClipTextConfig = field(default_factory=ClipTextConfig)
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    pixel_mean: tuple[float, float, float] = OPENAI_MEAN
    pixel_std: tuple[float, float, float] = OPENAI_STD
    text_batch_size: int = 256  # names encoded per forward in text_embeddings

    @property
    def trainable(self) -> bool:
        """Whether the ``train`` stage trains it (no pretrained weights named)."""
        return not self.pretrained

    @property
    def context_length(self) -> int:
        """Token context of the text tower (open_clip's own for a named model)."""
        if not self.model:
            return self.text.context_length
        import open_clip

        return int(open_clip.get_model_config(self.model)["text_cfg"].get("context_length", 77))

    def validate(self) -> None:
        """``ValueError`` naming the bad ``train.clip`` key."""
        if self.embed_dim < 1 or self.vision.width < 1 or self.text.width < 1:
            raise ValueError("train.clip: embed_dim and tower widths must be >= 1")
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(
                f"train.clip.vision.image_size {self.vision.image_size} is not a multiple of "
                f"patch_size {self.vision.patch_size}"
            )
        if self.vision.width % self.vision.head_width or self.text.width % self.text.heads:
            raise ValueError("train.clip: widths must be multiples of head_width / heads")
        if self.model:
            import open_clip

            if open_clip.get_model_config(self.model) is None:
                raise ValueError(f"train.clip.model: unknown open_clip model {self.model!r}")
        if not 0 < self.init_temperature < 1:
            raise ValueError("train.clip.init_temperature must be in (0, 1)")


def paper() -> ClipConfig:
    """The S-Seg paper's CLIP rows (Tables 2-3): OpenAI's ViT-B/16 weights, not trained."""
    return ClipConfig(model="ViT-B-16", pretrained="openai", embed_dim=512)


def paper_large() -> ClipConfig:
    """Baseline 1's classifier in the S-Seg paper: OpenAI's ViT-L/14."""
    return ClipConfig(model="ViT-L-14", pretrained="openai", embed_dim=768)
