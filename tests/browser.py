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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """A page in headless Chromium driven over the DevTools protocol (``websockets``): what a
    user does (pick a file, type, click) and what they see (``eval``, ``screenshot``)."""

    def __init__(self, url: str, timeout_s: float = 60.0):
        import json
        import time
        import urllib.request

        from websockets.sync.client import connect

        self.port, self._id = _free_port(), 0
        self.proc = subprocess.Popen(
            [chromium(), *FLAGS, f"--remote-debugging-port={self.port}",
             "--window-size=1100,1400", f"--user-data-dir=/tmp/ovs-chromium-{self.port}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        ws_url = None
        while ws_url is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list") as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
            except OSError:
                pass
            if ws_url is None:
                if time.monotonic() > deadline:
                    self.close()
                    raise TimeoutError("chromium's DevTools endpoint did not come up")
                time.sleep(0.2)
        self.ws = connect(ws_url, max_size=2**26, open_timeout=timeout_s)
        self.wait_for("document.readyState === 'complete'", timeout_s)

    def send(self, method: str, **params):
        import json

        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str):
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60.0):
        import time

        deadline = time.monotonic() + timeout_s
        while not (value := self.eval(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied {expression!r}")
            time.sleep(0.2)
        return value

    def set_file(self, selector: str, path: Path) -> None:
        import json

        # the first "complete" document can be the blank one chromium shows before it navigates
        self.wait_for(f"document.querySelector({json.dumps(selector)}) !== null")
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot")["data"]))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(f"/tmp/ovs-chromium-{self.port}", ignore_errors=True)
