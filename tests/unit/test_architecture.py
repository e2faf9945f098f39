"""ARCHITECTURE.md matches the tree: every module of ``ovs/``, ``pipelines/`` and ``tools/`` is
named in its package's section (as a path relative to the package, e.g. ``pseudo_masks/masker.py``
under ``## `ovs/```), and every module the page names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ovs", "pipelines", "tools")
# Package markers and `python -m` entries need no line (a package's may have one).
EXEMPT = {"__init__.py", "__main__.py"}


def sections() -> dict[str, str]:
    """``package -> text of its "## `package/`" section``."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    parts = re.split(r"^## ", text, flags=re.M)
    out = {}
    for part in parts[1:]:
        m = re.match(r"`([a-z_]+)/`", part)
        if m:
            out[m.group(1)] = part
    return out


def modules(package: str) -> set[str]:
    root = REPO / package
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if p.name not in EXEMPT and "__pycache__" not in p.parts
    }


def named(section: str) -> set[str]:
    """Module paths a section lists: ``- `path.py` —`` items (also ``- `a.py`, `b.py` —``)."""
    found = set()
    for line in section.splitlines():
        m = re.match(r"\s*- ((?:`[A-Za-z0-9_/]+\.py`(?:, | and )?)+) —", line)
        if m:
            found |= set(re.findall(r"`([A-Za-z0-9_/]+\.py)`", m.group(1)))
    return found


def test_every_module_is_named_and_every_named_module_exists():
    docs = sections()
    assert set(PACKAGES) <= set(docs), f"ARCHITECTURE.md sections: {sorted(docs)}"
    for package in PACKAGES:
        have = modules(package)
        listed = {m for m in named(docs[package]) if m.rsplit("/", 1)[-1] not in EXEMPT}
        assert not have - listed, (
            f"{package}/ modules missing from ARCHITECTURE.md: {sorted(have - listed)}"
        )
        assert not listed - have, (
            f"ARCHITECTURE.md names {package}/ modules that do not exist: {sorted(listed - have)}"
        )


def test_the_check_can_fail():
    assert named("- `a.py` — x\n- `b/c.py`, `d.py` — y\n  `e.py` — prose\n") == {
        "a.py",
        "b/c.py",
        "d.py",
    }
