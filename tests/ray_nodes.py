"""Helpers for tests that start their own Ray nodes with ``ray start``.

``ray stop`` kills every Ray process on the machine, including the session's local Ray of
other tests (``ray_local``) and anything else running; these helpers stop only the processes of
one node's ``--temp-dir`` and wait for the job agent before submitting.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline) from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (ppid, cmd)
    return table


def node_pids(temp_dir: str | Path) -> set[int]:
    """Processes of the Ray node(s) started with ``--temp-dir=temp_dir`` and their descendants."""
    table = _proc_table()
    marker = str(temp_dir)
    pids = {pid for pid, (_, cmd) in table.items() if marker in cmd and pid != os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in table.items() if ppid in pids} - pids
        grew = bool(children)
        pids |= children
    return pids


def stop_nodes(temp_dir: str | Path, timeout: float = 20.0) -> None:
    """SIGTERM the node's processes, SIGKILL whatever is left after ``timeout`` seconds."""
    pids = node_pids(temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
            if not pids:
                return
            time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def submit_job(cmd: list[str], env: dict, timeout: float = 900, agent_wait: float = 420):
    """``ray job submit ...``, retried while the head's job agent is still starting."""
    deadline = time.monotonic() + agent_wait
    while True:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        out = r.stdout + r.stderr
        if r.returncode == 0 or "No available agent" not in out or time.monotonic() > deadline:
            return r
        time.sleep(2)
