"""Prompt templates: a class name becomes one or more sentences whose text embeddings are averaged.

``imagenet80`` is the list of 80 prompts from the CLIP paper's ImageNet zero-shot notebook
(the training-free family, e.g. SCLIP, uses it); ``single`` is the one prompt the mask-free
family (GroupViT, TCL, OVSegmentor) evaluates with.
"""

from __future__ import annotations

SINGLE_TEMPLATE: tuple[str, ...] = ("a photo of a {}.",)

IMAGENET80_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "single": SINGLE_TEMPLATE,
    "imagenet80": IMAGENET80_TEMPLATES,
}


def get_templates(name: str) -> tuple[str, ...]:
    """Template set by name (``"single"`` or ``"imagenet80"``); each has one ``{}`` slot."""
    if name not in TEMPLATES:
        raise KeyError(f"unknown template set {name!r}; choose from {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def apply_templates(names: list[str], templates: tuple[str, ...]) -> list[str]:
    """All prompts, name-major: ``[t.format(n) for n in names for t in templates]``."""
    return [t.format(n) for n in names for t in templates]
