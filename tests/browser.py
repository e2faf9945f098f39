"""Headless Chromium for the browser tests (Debian's ``chromium``; ``.ci/run`` installs it):
render a page to a screenshot and to its DOM after the page's scripts ran."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium() -> str:
    """Path of the browser; skips the test (with the fix) when it is not installed."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless browser test: apt-get install chromium (.ci/run does)")
    return exe


def render(url: str, screenshot: Path, budget_ms: int = 5000, size: str = "1280,2400") -> str:
    """Screenshot ``url`` to ``screenshot`` and return its DOM after load (``--dump-dom``;
    ``budget_ms`` of virtual time lets the page's load handlers run)."""
    exe = chromium()
    common = [*FLAGS, f"--virtual-time-budget={budget_ms}", f"--window-size={size}"]
    subprocess.run(
        [exe, *common, f"--screenshot={screenshot}", url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    out = subprocess.run(
        [exe, *common, "--dump-dom", url], check=True, capture_output=True, timeout=120, text=True
    )
    return out.stdout
