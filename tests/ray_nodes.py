"""Helpers for tests that start their own Ray nodes with ``ray start``.

``ray stop`` kills every Ray process on the machine, including the session's local Ray of
other tests (``ray_local``) and anything else running; these helpers stop only the processes of
one node's ``--temp-dir`` and wait for the job agent before submitting.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


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


def submit_job(cmd: list[str], env: dict, timeout: float = 900, agent_wait: float = 180):
    """``ray job submit ...``, retried while the head's job agent is still starting."""
    deadline = time.monotonic() + agent_wait
    while True:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        out = r.stdout + r.stderr
        if r.returncode == 0 or "No available agent" not in out or time.monotonic() > deadline:
            return r
        time.sleep(2)


def submit_pipeline(
    address: str,
    env: dict,
    tmp_path: Path,
    overrides: list[str],
    env_vars: dict[str, str] | None = None,
    config: str = "conf/smoke.yaml",
) -> subprocess.CompletedProcess:
    """``ray job submit --working-dir <repo> -- python pipelines/full.py --config <config>``
    with MLflow in ``tmp_path/mlflow.db`` and the given ``key=value`` overrides."""
    runtime_env = {
        "env_vars": {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            **(env_vars or {}),
        },
        "excludes": [".venv", ".git", "runs", "mlflow.db", "mlartifacts", "*.egg-info"],
    }
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO)]
    cmd += ["--runtime-env-json", json.dumps(runtime_env), "--", sys.executable]
    return submit_job([*cmd, "pipelines/full.py", "--config", config, *overrides], env)


def node_ports() -> list[str]:
    """Free ports for every listener a node opens.

    Ray's defaults (dashboard agent 52365, ...) are shared by all nodes on a machine: the
    session-wide ``ray_local`` of other tests already holds them, and a second node whose agent
    cannot bind them never gets a job agent ("No available agent to submit job").
    """
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


def ray_cli(args: list[str], env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@contextlib.contextmanager
def ray_cluster(
    node_resources: list[dict[str, float]], num_cpus: int, extra: list[str] = ()
) -> Iterator[tuple[str, dict]]:
    """Start a head (+ one worker per further entry of ``node_resources``) on loopback.

    Yields ``(dashboard_url, env)``; ``env`` carries a token of the cluster's own (token auth
    on, as Ray >= 2.5x enables for local clusters). Stops exactly these nodes afterwards.
    """
    tag = f"{os.getpid()}{secrets.token_hex(2)}"
    # short: Ray's unix socket paths must stay < 108 chars; one temp dir per node
    temps = [Path(f"/tmp/rn{tag}{i}") for i in range(len(node_resources))]
    port, dash = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--disable-usage-stats"]
    common += list(extra)
    try:
        for i, (temp, resources) in enumerate(zip(temps, node_resources, strict=True)):
            if i == 0:
                role = ["--head", f"--port={port}", "--include-dashboard=true"]
                role += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
            else:
                role = [f"--address=127.0.0.1:{port}"]
            args = ["start", *role, *node_ports(), f"--temp-dir={temp}", *common]
            if resources:
                args.append("--resources=" + json.dumps(resources))
            r = ray_cli(args, env)
            assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        yield f"http://127.0.0.1:{dash}", env
    finally:
        for temp in reversed(temps):  # not `ray stop`: it would kill every Ray on the machine
            stop_nodes(temp, timeout=5)
            shutil.rmtree(temp, ignore_errors=True)
