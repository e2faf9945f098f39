"""A real Ray head on loopback + ``ray job submit --working-dir .`` of the smoke pipeline."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ray_nodes import free_port, stop_nodes, submit_job

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head(tmp_path):
    temp = Path(f"/tmp/rt{os.getpid()}")  # short: Ray's unix socket paths must stay < 108 chars
    port, dash = free_port(), free_port()
    # Token auth on, with a token of this test's own (Ray >= 2.5x enables it for local clusters).
    env = {
        **os.environ,
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=180,
    )
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop_nodes(temp)  # not `ray stop`: it would kill every Ray on the machine
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_full_pipeline(ray_head, tmp_path):
    address, env = ray_head
    workdir = tmp_path / "work"
    runtime_env = {
        "env_vars": {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        },
        "excludes": [".venv", ".git", "runs", "mlflow.db", "mlartifacts", "*.egg-info"],
    }
    t0 = time.time()
    r = submit_job(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            sys.executable,
            "pipelines/full.py",
            "--config",
            "conf/smoke.yaml",
            f"workdir={workdir}",
        ],
        env,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-4000:]
    assert "joining Ray cluster" in out  # the driver joined the cluster instead of starting Ray
    assert list(workdir.glob("*/*/_SUCCESS.json")), "stage manifests written"
    print(f"ray job submit round trip: {time.time() - t0:.1f}s")
