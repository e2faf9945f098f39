"""Code version: git commit + dirty flag where there is a repository, a source content hash
everywhere (an uploaded Ray working directory has no .git)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ovs import provenance
from ovs.provenance import code_hash, code_version, differs, git_state, source_files

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> Path:
    (root / "ovs" / "sub").mkdir(parents=True)
    (root / "pipelines").mkdir()
    (root / "conf").mkdir()
    (root / "ovs" / "a.py").write_text("A = 1\n")
    (root / "ovs" / "sub" / "b.py").write_text("B = 2\n")
    (root / "pipelines" / "p.py").write_text("P = 3\n")
    (root / "conf" / "c.yaml").write_text("x: 1\n")
    (root / "README.md").write_text("not code\n")
    return root


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


def test_code_hash_covers_sources_only(tmp_path):
    root = _tree(tmp_path / "r")
    rel = [p.relative_to(root).as_posix() for p in source_files(root)]
    assert rel == ["conf/c.yaml", "ovs/a.py", "ovs/sub/b.py", "pipelines/p.py"]
    h = code_hash(root)
    (root / "README.md").write_text("edited docs\n")
    (root / "ovs" / "__pycache__").mkdir()
    (root / "ovs" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert code_hash(root) == h  # docs and bytecode are not the code
    for path, text in [
        ("ovs/sub/b.py", "B = 3\n"),
        ("conf/c.yaml", "x: 2\n"),
        ("pipelines/new.py", ""),  # a new (untracked) source file counts
    ]:
        before = code_hash(root)
        (root / path).write_text(text)
        assert code_hash(root) != before, path
    # A moved file is different code even with the same bytes.
    moved = _tree(tmp_path / "m")
    (moved / "ovs" / "sub" / "b.py").rename(moved / "ovs" / "b.py")
    assert code_hash(moved) != code_hash(_tree(tmp_path / "n"))


def test_git_commit_and_dirty_flag(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    monkeypatch.delenv(provenance.COMMIT_ENV, raising=False)
    root = _tree(tmp_path / "r")
    assert git_state(root) == ("", None)  # no repository, no env var
    _git(root, "init", "-q")
    _git(root, "add", "ovs", "pipelines", "conf")
    _git(root, "commit", "-q", "-m", "x")
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert git_state(root) == (head, False)
    (root / "scratch.txt").write_text("untracked files do not make it dirty")
    assert git_state(root) == (head, False)
    (root / "ovs" / "a.py").write_text("A = 2\n")
    v = code_version(root)
    assert v["git_commit"] == head and v["git_dirty"] is True and v["code_hash"] == code_hash(root)
    # A directory inside some other checkout is not that checkout's code.
    inner = _tree(root / "upload")
    assert git_state(inner) == ("", None)


def test_uploaded_copy_without_git(tmp_path, monkeypatch):
    """What `ray job submit --working-dir .` runs: the files without .git."""
    upload = tmp_path / "upload"
    for part in ("ovs", "pipelines", "conf"):
        shutil.copytree(REPO / part, upload / part, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv(provenance.COMMIT_ENV, "abc123")
    v = code_version(upload)
    assert v == {"git_commit": "abc123", "git_dirty": None, "code_hash": code_hash(REPO)}
    monkeypatch.delenv(provenance.COMMIT_ENV)
    assert code_version(upload)["git_commit"] == ""


def test_differs_names_both_versions():
    now = {"git_commit": "b" * 40, "git_dirty": False, "code_hash": "h2"}
    assert differs(dict(now), now) is None
    msg = differs({"git_commit": "a" * 40, "code_hash": "h1"}, now)
    assert msg == f"commit {'a' * 12} (now {'b' * 12}), code hash h1 (now h2)"
    # Same commit, uncommitted edits: the hash tells them apart.
    assert differs({**now, "code_hash": "h1"}, now) == "code hash h1 (now h2)"
    # No commit on one side (an uploaded working dir): only the hash is compared.
    assert differs({"git_commit": "", "code_hash": "h2"}, now) is None
    assert "not recorded" in (differs(None, now) or "")
