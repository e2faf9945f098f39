"""Which code made a result: the git commit, a dirty flag and a content hash of the sources.

:func:`code_version` returns ``{"git_commit", "git_dirty", "code_hash"}``; the pipeline driver
records it as tags on every MLflow run (``ovs.git_commit``, ``ovs.git_dirty``,
``ovs.code_hash``; :func:`pipelines.tracking.code_tags`) and under ``"code"`` in every stage
manifest.

- ``git_commit``: ``git rev-parse HEAD`` of the repository the code runs from; where there is
  no ``.git`` (``ray job submit --working-dir .`` uploads the files only), ``$OVS_GIT_COMMIT``
  if set, else ``""``.
- ``git_dirty``: whether a *tracked* file differs from ``HEAD`` (``git status --porcelain
  --untracked-files=no``). Untracked files are left out: scratch files, run outputs and
  editor droppings would make every checkout dirty; an untracked source file that the code
  imports still changes ``code_hash``. ``None`` when git cannot tell (no repository).
- ``code_hash``: SHA-256 over the relative paths and bytes of the project's own sources
  (``ovs/**/*.py``, ``pipelines/**/*.py``, ``conf/*.yaml``), sorted by path. It identifies the
  code with or without ``.git``: the same files give the same hash on a laptop and in an
  uploaded Ray working directory.

Pure: reads files and runs ``git`` read-only; nothing is written.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from functools import lru_cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_GLOBS = ("ovs/**/*.py", "pipelines/**/*.py", "conf/*.yaml")
COMMIT_ENV = "OVS_GIT_COMMIT"


def source_files(root: Path = REPO_ROOT) -> list[Path]:
    """The files :func:`code_hash` covers, sorted by their path relative to ``root``."""
    files = {p for pattern in SOURCE_GLOBS for p in root.glob(pattern) if p.is_file()}
    files = {p for p in files if "__pycache__" not in p.parts}
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def code_hash(root: Path = REPO_ROOT, length: int = 16) -> str:
    """Hex SHA-256 (first ``length`` digits) of the sources' relative paths and contents."""
    h = hashlib.sha256()
    for path in source_files(root):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        h.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:length]


def _git(root: Path, *args: str) -> str | None:
    """stdout of ``git -C root args``, or None when git is missing or fails."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(root: Path = REPO_ROOT) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the repository at ``root``.

    Without a repository: ``($OVS_GIT_COMMIT or "", None)``. A repository whose own top
    level is not ``root`` (e.g. an uploaded working dir inside some other checkout) counts
    as none, so its commit is never mistaken for this code's.
    """
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root.resolve():
        return os.environ.get(COMMIT_ENV, ""), None
    commit = (_git(root, "rev-parse", "HEAD") or "").strip()
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status.strip()))


def code_version(root: Path = REPO_ROOT) -> dict[str, str | bool | None]:
    """``{"git_commit": str, "git_dirty": bool | None, "code_hash": str}`` of ``root``."""
    commit, dirty = git_state(root)
    return {"git_commit": commit, "git_dirty": dirty, "code_hash": code_hash(root)}


@lru_cache(maxsize=1)
def current() -> dict[str, str | bool | None]:
    """:func:`code_version` of the running code, computed once per process (the sources of a
    running process do not change under it as far as its results are concerned)."""
    return code_version(REPO_ROOT)


def differs(made: dict | None, now: dict) -> str | None:
    """One phrase naming how ``made`` (a manifest's ``"code"``) differs from ``now``, or None.

    Compares the commit when both are known, and the code hash (which also catches
    uncommitted edits). A manifest from before code versions were recorded counts as
    different ("unrecorded").
    """
    if not made:
        return "made by code whose version was not recorded"
    parts = []
    old_c, new_c = made.get("git_commit") or "", now.get("git_commit") or ""
    if old_c and new_c and old_c != new_c:
        parts.append(f"commit {old_c[:12]} (now {new_c[:12]})")
    if made.get("code_hash") != now.get("code_hash"):
        parts.append(f"code hash {made.get('code_hash')} (now {now.get('code_hash')})")
    return ", ".join(parts) or None
