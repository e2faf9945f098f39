"""Class-name lists of the benchmark datasets and how they are turned into text queries.

Each ``classnames/cls_<key>.txt`` has one line per dataset class, in label-id order. A line
is comma-separated: the first name is the dataset's official class name (mmsegmentation's
``CLASSES``), the rest are synonyms (SCLIP-style files). Three ways to query a class:

- ``"dataset"``: the official name only (``diningtable``).
- ``"renamed"``: the official name with the mask-free family's renames applied
  (``diningtable → table``, ``pottedplant → plant``, ``tvmonitor → monitor``); one name each.
- ``"synonyms"``: every name on the line; the harness takes the max over them.
"""

from __future__ import annotations

from pathlib import Path

CLASSNAME_DIR = Path(__file__).parent / "classnames"

# GroupViT / TCL / OVSegmentor rename these VOC/Context names before prompting.
MASK_FREE_RENAMES: dict[str, str] = {
    "diningtable": "table",
    "pottedplant": "plant",
    "tvmonitor": "monitor",
}

NAME_MODES = ("dataset", "renamed", "synonyms")


def parse_class_lines(text: str) -> list[list[str]]:
    """Parse a class file: one class per non-empty line, synonyms comma-separated."""
    classes = []
    for line in text.splitlines():
        names = [n.strip() for n in line.split(",") if n.strip()]
        if names:
            classes.append(names)
    return classes


def read_class_file(path: str | Path) -> list[list[str]]:
    """``[[official, synonym, ...], ...]`` from a class file (see module docstring)."""
    return parse_class_lines(Path(path).read_text(encoding="utf-8"))


def load_class_names(key: str) -> list[list[str]]:
    """Class names of a benchmark by key (``voc21``, ``context59``, ``ade150``, ...)."""
    path = CLASSNAME_DIR / f"cls_{key}.txt"
    if not path.exists():
        known = sorted(p.stem[4:] for p in CLASSNAME_DIR.glob("cls_*.txt"))
        raise KeyError(f"no class-name file for {key!r}; known: {known}")
    return read_class_file(path)


def query_names(classes: list[list[str]], mode: str) -> list[list[str]]:
    """The names to prompt for each class under ``mode`` (one of :data:`NAME_MODES`)."""
    if mode == "dataset":
        return [[c[0]] for c in classes]
    if mode == "renamed":
        return [[MASK_FREE_RENAMES.get(c[0], c[0])] for c in classes]
    if mode == "synonyms":
        return [list(c) for c in classes]
    raise ValueError(f"unknown name mode {mode!r}; choose from {NAME_MODES}")
