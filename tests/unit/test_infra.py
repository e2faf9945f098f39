"""infra/: every deployment file parses and carries what its tool requires, the image's pins
match the project's, the MLflow server script starts and serves, the estimate recomputes.

No cluster, registry or Docker engine is needed: the Ray files are checked with Ray's own
validators and packager, the KubeRay CRs against the ray.io/v1 field names, the Dockerfile by
parsing it, and ``server.sh`` by running it on a loopback port.
"""

from __future__ import annotations

import copy
import http.client
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMAGE_REPO = "registry.example.com/ovs"


def _load(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / rel).read_text()) if d is not None]


def _one(rel: str) -> dict:
    (doc,) = _load(rel)
    return doc


def _requirements(lines: list[str]) -> dict[str, tuple[Version, list[str]]]:
    """A pip requirements file of ``name==version`` pins, each optionally followed by
    ``--hash=sha256:...`` options on ``\\``-continued lines (comments and blanks skipped) ->
    {canonical name: (version, hashes)}."""
    out: dict[str, tuple[Version, list[str]]] = {}
    entries, entry = [], ""
    for line in lines:
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("--hash") else line
        line = line.strip()
        if line.endswith("\\"):
            entry += line[:-1] + " "
            continue
        entry += line
        if entry.strip():
            entries.append(entry.split())
        entry = ""
    for words in entries:
        pin = words[0]
        hashes = [w.split("=", 1)[1] for w in words[1:] if w.startswith("--hash=")]
        assert len(hashes) == len(words) - 1, f"{pin}: unexpected options {words[1:]}"
        req = Requirement(pin)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{pin!r} is not an exact pin"
        out[canonicalize_name(req.name)] = (Version(spec.version), hashes)
    return out


def _pins(lines: list[str]) -> dict[str, Version]:
    """{canonical name: version} of a requirements file (see :func:`_requirements`)."""
    return {name: version for name, (version, _) in _requirements(lines).items()}


LOCK_TEXT = (REPO / "requirements.lock").read_text().splitlines()
EXTRA_TEXT = (INFRA / "docker" / "requirements-extra.txt").read_text().splitlines()
LOCK = _pins(LOCK_TEXT)
EXTRA = _pins(EXTRA_TEXT)


# ----------------------------------------------------------------------------- all YAML


def test_every_yaml_parses_and_names_its_kind():
    files = sorted(INFRA.rglob("*.yaml"))
    assert {f.relative_to(INFRA).as_posix() for f in files} >= {
        "ray/runtime_env.yaml",
        "ray/cluster-aws.yaml",
        "k8s/raycluster.yaml",
        "k8s/rayjob.yaml",
        "k8s/storage.yaml",
        "k8s/mlflow.yaml",
    }
    for f in files:
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f
        if f.parent.name == "k8s":
            for d in docs:
                assert d.get("apiVersion") and d.get("kind"), f"{f}: apiVersion/kind missing"
                assert d.get("metadata", {}).get("name"), f"{f}: metadata.name missing"


def _images() -> dict[str, str]:
    """Every container image named in infra/, by where it is named."""
    found = {"ray/cluster-aws.yaml docker.image": _one("ray/cluster-aws.yaml")["docker"]["image"]}
    for rel in ("k8s/raycluster.yaml", "k8s/rayjob.yaml", "k8s/mlflow.yaml"):
        for doc in _load(rel):
            for path, container in _containers(doc):
                found[f"{rel} {path}"] = container["image"]
    return found


def test_one_image_everywhere_tagged_with_the_project_version():
    images = _images()
    assert len(images) >= 8
    expected = f"{IMAGE_REPO}:{PYPROJECT['project']['version']}"
    assert set(images.values()) == {expected}, images


# ----------------------------------------------------------------------------- KubeRay

# Field names of the ray.io/v1 types (kuberay ray-operator/apis/ray/v1). The API server prunes
# or rejects unknown fields of a CRD, so a misspelt one would silently do nothing.
RAYCLUSTER_SPEC = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
    "autoscalerOptions", "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions",
    "managedBy", "authOptions",
}  # fmt: skip
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
    "template", "scaleStrategy", "suspend", "idleTimeoutSeconds",
}  # fmt: skip
AUTOSCALER = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts",
    "securityContext", "idleTimeoutSeconds", "upscalingMode", "version",
}  # fmt: skip
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
    "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
    "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
    "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}  # fmt: skip


def _containers(doc: dict):
    """(path, container) for every pod template in a RayCluster, RayJob or Deployment."""
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        spec = spec["rayClusterSpec"]
    if doc["kind"] in ("RayCluster", "RayJob"):
        groups = [("head", spec["headGroupSpec"])]
        groups += [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
        for name, group in groups:
            for c in group["template"]["spec"]["containers"]:
                yield f"{name}/{c['name']}", c
    elif doc["kind"] == "Deployment":
        for c in spec["template"]["spec"]["containers"]:
            yield c["name"], c


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, f"{where}: unknown fields {set(spec) - RAYCLUSTER_SPEC}"
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER, where
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP and {"rayStartParams", "template"} <= set(head), where
    groups = spec["workerGroupSpecs"]
    for g in groups:
        assert set(g) <= WORKER_GROUP, f"{where}: unknown fields {set(g) - WORKER_GROUP}"
        assert {"groupName", "rayStartParams", "template"} <= set(g), where
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], g["groupName"]
    assert len({g["groupName"] for g in groups}) == len(groups), "duplicate groupName"
    for params in [head["rayStartParams"]] + [g["rayStartParams"] for g in groups]:
        # map[string]string in the CRD: an unquoted number would be rejected
        assert all(isinstance(v, str) for v in params.values()), params
    # the Ray version the cluster runs is the one pinned for the project
    assert spec["rayVersion"] == str(LOCK["ray"])
    gpu_groups = [
        g["groupName"]
        for g in groups
        for c in g["template"]["spec"]["containers"]
        if "nvidia.com/gpu" in c["resources"].get("limits", {})
    ]
    assert gpu_groups and len(gpu_groups) < len(groups), "need a GPU group and a CPU group"


def test_raycluster_has_head_cpu_and_gpu_groups_on_the_shared_volume():
    doc = _one("k8s/raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = doc["spec"]
    _check_ray_cluster_spec(spec, "raycluster.yaml")
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no tasks on the head
    assert spec["authOptions"] == {"mode": "token"}  # Ray 2.52+ token auth, KubeRay >= 1.5.1

    pvcs = {d["metadata"]["name"]: d for d in _load("k8s/storage.yaml")}
    assert pvcs["ovs-shared"]["spec"]["accessModes"] == ["ReadWriteMany"]
    service = next(d for d in _load("k8s/mlflow.yaml") if d["kind"] == "Service")
    mlflow_uri = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"

    n = 0
    for path, c in _containers(doc):
        n += 1
        res = c["resources"]
        assert res["limits"] and res["requests"], path
        gpus = res["limits"].get("nvidia.com/gpu")
        assert gpus is None or int(gpus) >= 1, path
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["MLFLOW_TRACKING_URI"] == mlflow_uri, path
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "/shared" in mounts and "/dev/shm" in mounts, path
    assert n == 1 + len(spec["workerGroupSpecs"])
    for _, group in [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec["workerGroupSpecs"]
    ]:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        claims = {
            v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]
        }
        assert claims["shared"] == "ovs-shared"


def test_rayjob_runs_full_pipeline_on_the_raycluster_spec():
    job = _one("k8s/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert "rayClusterSpec" in spec or "clusterSelector" in spec
    # one cluster definition: the job's cluster is raycluster.yaml's, field for field
    assert spec["rayClusterSpec"] == _one("k8s/raycluster.yaml")["spec"]
    _check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml")
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())

    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "/app/pipelines/full.py"]
    assert (REPO / argv[1].removeprefix("/app/")).is_file()
    from ovs.config import parse_overrides
    from pipelines.common import parse_args

    args = parse_args(argv[2:], "test")
    assert args.config == "/app/conf/cc12m.yaml"
    assert parse_overrides(args.overrides)["workdir"].startswith("/shared/")


def test_rayjob_config_loads_with_its_overrides():
    from pipelines.common import parse_args
    from pipelines.graph import load_config

    args = parse_args(shlex.split(_one("k8s/rayjob.yaml")["spec"]["entrypoint"])[2:], "test")
    config = REPO / args.config.removeprefix("/app/")
    if not config.is_file():
        pytest.skip(f"{config.relative_to(REPO)} is not in the repository yet")
    cfg = load_config(config, args.overrides)
    assert str(cfg.workdir_path).startswith("/shared/")


def test_mlflow_deployment_runs_server_sh_behind_its_service():
    docs = {d["kind"]: d for d in _load("k8s/mlflow.yaml")}
    dep, svc = docs["Deployment"], docs["Service"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert (REPO / c["command"][0].removeprefix("/app/")).is_file()
    args = dict(a.removeprefix("--").split("=", 1) for a in c["args"])
    name = svc["metadata"]["name"]
    assert name in args["allowed-hosts"].split(",")  # clients send Host: ovs-mlflow:5000
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    assert int(args["port"]) == c["ports"][0]["containerPort"]
    claim = dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim in {d["metadata"]["name"] for d in _load("k8s/storage.yaml")}


# ----------------------------------------------------------------------------- Ray


def test_cluster_launcher_config_passes_rays_own_validation():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _one("ray/cluster-aws.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    prepared = prepare_config(copy.deepcopy(raw))  # merges the AWS defaults, as `ray up` does
    validate_config(prepared)

    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    instance = {k: v["node_config"]["InstanceType"] for k, v in types.items()}
    assert any(t.startswith(("p4", "p5", "g5", "g6")) for t in instance.values()), instance
    assert raw["provider"]["type"] == "aws"
    # every command is valid shell
    for key in (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        for cmd in raw[key]:
            subprocess.run(["bash", "-n", "-c", cmd], check=True)
    # driver and workers inherit the tracking URI from `ray start`
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("MLFLOW_TRACKING_URI=http://" in c and "ray start" in c for c in raw[key])
    assert any("infra/mlflow/server.sh" in c for c in raw["head_start_ray_commands"])
    # the checkout mount skips what the job upload skips
    assert raw["rsync_exclude"] == _one("ray/runtime_env.yaml")["excludes"]
    # token auth on every node (a worker's `ray start` does not turn it on by itself), with the
    # submitting user's token file
    assert "--env RAY_AUTH_MODE=token" in raw["docker"]["run_options"]
    assert raw["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def test_runtime_env_is_valid_and_leaves_tracking_uri_to_the_nodes():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    env = parse_runtime_env_args(
        runtime_env=str(INFRA / "ray" / "runtime_env.yaml"), working_dir="."
    )  # exactly what `ray job submit --runtime-env ... --working-dir .` builds
    RuntimeEnv(**env)  # raises on unknown fields or wrong types
    assert env["working_dir"] == "."
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert "MLFLOW_TRACKING_URI" not in env["env_vars"]


def test_runtime_env_excludes_keep_code_and_drop_local_state(tmp_path):
    """Package a repo-shaped tree with Ray's own packager and the YAML's excludes."""
    from ray._private.runtime_env.packaging import create_package

    excludes = _one("ray/runtime_env.yaml")["excludes"]
    keep = [
        "ovs/__init__.py",
        "tools/runs.py",  # named like an excluded dir, deeper: must stay
        "ovs/data/shards.py",
        "pipelines/full.py",
        "conf/default.yaml",
        "infra/mlflow/server.sh",
        "pyproject.toml",
    ]
    drop = [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/default/world/_SUCCESS.json",
        "mlflow.db",
        "mlruns/1/meta.yaml",
        "mlartifacts/1/a.txt",
        "ovs/__pycache__/io.cpython-311.pyc",
        "ovs.egg-info/PKG-INFO",
        ".pytest_cache/v/x",
    ]
    root = tmp_path / "repo"
    for rel in keep + drop:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    target = tmp_path / "pkg.zip"
    # gitignore off: the excludes alone must do it (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 users)
    create_package(str(root), target, include_gitignore=False, excludes=excludes)
    names = {n for n in zipfile.ZipFile(target).namelist() if not n.endswith("/")}
    assert names == set(keep)


# ----------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[str]:
    """Instructions of the Dockerfile: continuations joined, comments dropped."""
    text = (INFRA / "docker" / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [ln.strip() for ln in joined.splitlines() if ln.strip()]


def _dockerfile_pins() -> dict[str, Version]:
    pins = {}
    for ins in _dockerfile():
        if ins.startswith("RUN "):
            for name, ver in re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s\"']*)", ins):
                pins[canonicalize_name(name)] = Version(ver)
    return pins


def test_lock_hashes_every_pin_and_every_install_requires_them():
    """issue 17: a fresh machine installs exactly what was tested — every pin of the lock (and of
    the image's extra file) carries sha256 hashes, and every ``pip install`` of them runs in
    hash-checking mode (pip then also refuses any unpinned or unhashed dependency)."""
    for text in (LOCK_TEXT, EXTRA_TEXT):
        reqs = _requirements(text)
        assert reqs
        for name, (_, hashes) in reqs.items():
            assert hashes, f"{name} has no --hash"
            assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    assert len(_requirements(LOCK_TEXT)) == len(LOCK) >= 200
    makefile = (REPO / "Makefile").read_text()
    installs = re.findall(r"pip install [^\n]*-r \S*requirements[^\n]*", makefile)
    assert installs and all("--require-hashes" in i for i in installs), installs
    # `make lock` regenerates the file with hashes, and the file says so
    assert re.search(r"^lock:", makefile, re.M) and "--generate-hashes" in makefile
    assert "make lock" in "\n".join(LOCK_TEXT[:5])
    runs = " ".join(i for i in _dockerfile() if i.startswith("RUN "))
    docker = re.findall(r"pip install [^&]*-r \S*requirements\S*", runs)
    assert len(docker) == 2 and all("--require-hashes" in i for i in docker), docker


def test_lock_pins_every_pyproject_dependency_exactly():
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        (spec,) = req.specifier
        assert spec.operator == "==", f"pyproject pin {dep!r} is not exact"
        name = canonicalize_name(req.name)
        assert LOCK.get(name) == Version(spec.version), f"{dep} vs lock {LOCK.get(name)}"


def test_dockerfile_installs_the_lock_and_its_pins_agree():
    instructions = _dockerfile()
    runs = " ".join(i for i in instructions if i.startswith("RUN "))
    assert "COPY requirements.lock" in " ".join(instructions)
    assert re.search(r"pip install --no-deps --require-hashes -r \S*requirements\.lock", runs)
    assert re.search(r"pip install --no-deps --require-hashes -r \S*requirements-extra\.txt", runs)
    assert "pip check" in runs
    assert re.search(r"pip install --no-deps --no-build-isolation -e /app", runs)
    pins = _dockerfile_pins()
    assert {"pip", "setuptools"} <= set(pins)
    for name, version in pins.items():
        assert name not in LOCK or LOCK[name] == version, f"Dockerfile {name}=={version}"
    for name, version in EXTRA.items():
        assert name not in LOCK or LOCK[name] == version, f"extra {name}=={version}"
    # the interpreter satisfies the project's requires-python
    (arg,) = [i for i in instructions if i.startswith("ARG PYTHON_VERSION=")]
    python = arg.split("=", 1)[1]
    assert Version(python) in Requirement(f"x{PYPROJECT['project']['requires-python']}").specifier
    # the final stage (the default build target) runs as a non-root numeric user
    last = instructions[max(i for i, ins in enumerate(instructions) if ins.startswith("FROM "))]
    tail = instructions[instructions.index(last) :]
    users = [i.split()[1] for i in tail if i.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert any(i.startswith("WORKDIR /app") for i in tail)
    assert "PYTHONUNBUFFERED=1" in " ".join(instructions)
    # `bash -lc ray ...` (KubeRay, the cluster launcher) must still find the venv after Debian's
    # /etc/profile has reset PATH
    assert re.search(r"/etc/profile\.d/\S+\.sh", runs) and "/opt/venv/bin:$PATH" in runs


def test_image_pins_are_closed_under_requirements():
    """What `pip install --no-deps` + `pip check` in the Dockerfile relies on: every requirement
    of every locked package (with the extras asked for) is pinned, to a version it accepts.
    Uses the metadata of the installed packages whose version is the locked one."""
    pins = {**LOCK, **_dockerfile_pins()}
    env = default_environment()  # linux / x86_64, like the image
    extras: dict[str, set[str]] = {name: {""} for name in pins}
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        extras[canonicalize_name(req.name)] |= req.extras
    dists = {}
    for name, version in LOCK.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(dist.version) == version:
            dists[name] = dist
    assert len(dists) >= 0.9 * len(LOCK), "run the tests in the venv made from requirements.lock"
    for _ in range(3):  # extras pull in extras: iterate to a fixpoint
        problems = []
        for name, dist in dists.items():
            for line in dist.requires or []:
                req = Requirement(line)
                if req.marker and not any(
                    req.marker.evaluate({**env, "extra": e}) for e in extras[name]
                ):
                    continue
                dep = canonicalize_name(req.name)
                extras.setdefault(dep, {""}).update(req.extras)
                if dep not in pins:
                    problems.append(f"{name} requires {req}: not pinned")
                elif not req.specifier.contains(pins[dep], prereleases=True):
                    problems.append(f"{name} requires {req}: pinned {pins[dep]}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- server.sh

SERVER = INFRA / "mlflow" / "server.sh"


def test_server_sh_is_valid_bash_and_rejects_bad_arguments(tmp_path):
    subprocess.run(["bash", "-n", str(SERVER)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SERVER)], check=True)
    assert os.access(SERVER, os.X_OK)
    env = {**os.environ, "OVS_MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow")}
    for bad, message in [
        (["--port", "99999"], "--port must be 1-65535"),
        (["--port"], "--port needs a value"),
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--frobnicate"], "unknown argument"),
    ]:
        r = subprocess.run([str(SERVER), *bad], env=env, capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr, (bad, r.stderr)
    r = subprocess.run([str(SERVER), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--allowed-hosts" in r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _listen_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (Linux /proc)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                out.add(addr)
    return out


@pytest.mark.timeout(120)
def test_server_sh_serves_on_loopback_with_host_checks_and_artifacts(tmp_path):
    port = _free_port()
    data = tmp_path / "mlflow"
    env = {**os.environ, "OVS_MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow")}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(SERVER), "--port", str(port), "--data-dir", str(data), "--workers", "1",
         "--allowed-hosts", f"worker.test:{port}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        from mlflow.tracking import MlflowClient  # imported while the server starts

        deadline = time.monotonic() + 90  # ~10 s on an idle machine
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if _get(port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.3)

        if os.path.exists("/proc/net/tcp"):
            assert _listen_addresses(port) == {"0100007F"}  # 127.0.0.1 only
        api = "/api/2.0/mlflow/experiments/search?max_results=5"
        assert _get(port, api)[0] == 200
        assert _get(port, api, host=f"worker.test:{port}")[0] == 200  # --allowed-hosts
        assert _get(port, api, host="evil.example")[0] == 403  # DNS-rebinding guard on
        assert _get(port, "/health", host="evil.example")[0] == 200  # probes need no Host

        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.create_experiment("infra-test")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "x", 1.5)
        client.log_text(run.info.run_id, "hello", "notes/hello.txt")
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.metrics == {"x": 1.5}
        # artifacts went through the server into the data dir (proxied artifact store)
        stored = list((data / "mlartifacts").rglob("hello.txt"))
        assert [p.read_text() for p in stored] == ["hello"]
        assert (data / "mlflow.db").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# ----------------------------------------------------------------------------- estimate


def _estimate_module():
    spec = importlib.util.spec_from_file_location("infra_estimate", INFRA / "estimate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _sample() -> dict:
    bench = json.loads((INFRA / "benchmarks.json").read_text())
    values = {"download": 10.0, "entities": 100.0, "pseudo_masks": 50.0, "train": 25.0,
              "evaluate": 4.0}  # fmt: skip
    for stage, value in values.items():
        bench["measured"][stage]["value"] = value
        bench["measured"][stage]["device"] = "test device"
    workload = {"cc12m_pairs": 36000, "download_success_rate": 0.5, "train_epochs": 3,
                "pseudo_mask_passes": 1, "eval_images": 720, "evaluations": 2}  # fmt: skip
    for key, value in workload.items():
        bench["workload"][key]["value"] = value
    return bench


def test_estimate_arithmetic_against_hand_computed_hours():
    est = _estimate_module()
    rows = {r.work.stage: r for r in est.estimate(_sample(), gpus=4, cpus=8)}
    # 36000 URLs / 10 per s per core = 1 core-hour; 18000 downloaded images
    assert rows["download"].cpu_core_hours == pytest.approx(1.0)
    assert rows["download"].wall_hours == pytest.approx(1.0 / 8)
    assert rows["entities"].cpu_core_hours == pytest.approx(18000 / 100 / 3600)
    assert rows["pseudo_masks"].gpu_hours == pytest.approx(18000 / 50 / 3600)
    assert rows["train"].gpu_hours == pytest.approx(18000 * 3 / 25 / 3600)
    assert rows["train"].wall_hours == pytest.approx(18000 * 3 / 25 / 3600 / 4)
    assert rows["evaluate"].gpu_hours == pytest.approx(720 * 2 / 4 / 3600)
    assert rows["download"].gpu_hours == 0 and rows["train"].cpu_core_hours == 0
    table = est.render(list(rows.values()), 4, 8)
    total_gpu = (18000 / 50 + 18000 * 3 / 25 + 720 * 2 / 4) / 3600
    assert f"| {est._fmt(total_gpu)} |" in table.splitlines()[-1]
    assert "n/a" not in table

    unmeasured = json.loads((INFRA / "benchmarks.json").read_text())
    rows = est.estimate(unmeasured, gpus=4, cpus=8)
    assert all(r.wall_hours is None for r in rows if r.throughput is None)


def test_estimate_cli_prints_table_and_rejects_bad_input(tmp_path):
    sample = tmp_path / "bench.json"
    sample.write_text(json.dumps(_sample()))
    cmd = [sys.executable, str(INFRA / "estimate.py"), "--benchmarks", str(sample)]
    r = subprocess.run([*cmd, "--gpus", "4", "--cpus", "8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("| stage |") and "| train | 54,000 samples | 25" in r.stdout

    bad = _sample()
    bad["measured"]["train"]["value"] = -1
    sample.write_text(json.dumps(bad))
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "measured.train.value must be a positive number" in r.stderr

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- estimate:begin -->\nold\n<!-- estimate:end -->\noutro\n")
    sample.write_text(json.dumps(_sample()))
    r = subprocess.run([*cmd, "--write-readme", "--readme", str(readme)], capture_output=True)
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    assert text.startswith("intro\n<!-- estimate:begin -->\n| stage |")
    assert "old" not in text and text.endswith("<!-- estimate:end -->\noutro\n")


def test_readme_table_is_the_estimate_of_the_committed_benchmarks():
    est = _estimate_module()
    bench = est.load(INFRA / "benchmarks.json")
    table = est.render(
        est.estimate(bench, est.REFERENCE_GPUS, est.REFERENCE_CPUS),
        est.REFERENCE_GPUS,
        est.REFERENCE_CPUS,
    )
    readme = (INFRA / "README.md").read_text()
    assert est.replace_block(readme, table) == readme, (
        "infra/README.md is stale: run python infra/estimate.py --write-readme"
    )


# ----------------------------------------------------------------------------- Ray Serve


def test_serve_config_passes_serves_schema_and_rayservice_runs_the_same_app():
    """``infra/ray/serve_config.yaml`` validates as Ray Serve's deploy schema, its args build a
    valid ``ServeConfig``, and the RayService serves exactly its applications on the
    RayCluster's spec."""
    from ray.serve.schema import ServeDeploySchema

    from ovs.serving import ServeConfig

    raw = _one("ray/serve_config.yaml")
    ServeDeploySchema.parse_obj(raw)  # raises on an unknown or mistyped field
    (app,) = raw["applications"]
    assert app["import_path"] == "tools.serve.app:app_builder"
    args = dict(app["args"])
    assert args.pop("checkpoint")
    ServeConfig(**args).validate()
    (svc,) = _load("k8s/rayservice.yaml")
    assert svc["kind"] == "RayService"
    assert yaml.safe_load(svc["spec"]["serveConfigV2"]) == {"applications": raw["applications"]}
    assert svc["spec"]["rayClusterConfig"] == _one("k8s/raycluster.yaml")["spec"]
