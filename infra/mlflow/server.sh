#!/usr/bin/env bash
# Start the MLflow tracking server the ovs pipeline logs to: a sqlite backend and a proxied
# artifact store, both in one data directory (back it up, and the whole tracking history is
# backed up).
#
#   infra/mlflow/server.sh                                   # laptop: serves ./mlflow.db on 127.0.0.1:5000
#   infra/mlflow/server.sh --data-dir /shared/mlflow --host 0.0.0.0 \
#       --allowed-hosts 'ray-head.internal:5000,10.0.*'      # cluster head, reachable by workers
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000         # then, for the pipeline
#
# Options (each also read from the environment variable in brackets; flags win):
#   --host ADDR            interface to bind [OVS_MLFLOW_HOST], default 127.0.0.1 (this machine
#                          only). 0.0.0.0 exposes the server, which has no authentication, to
#                          every network the machine is on: use it only inside a private cluster
#                          network, together with --allowed-hosts.
#   --port N               TCP port [OVS_MLFLOW_PORT], default 5000
#   --data-dir DIR         holds mlflow.db and mlartifacts/ [OVS_MLFLOW_DATA_DIR], default the
#                          repository root, i.e. the ./mlflow.db the pipeline writes without a server
#   --allowed-hosts LIST   comma-separated Host headers clients may use [OVS_MLFLOW_ALLOWED_HOSTS],
#                          e.g. the head node's address as workers dial it ('10.0.3.7:5000'), a
#                          Kubernetes service name ('ovs-mlflow:5000'); fnmatch wildcards allowed.
#                          MLflow's own default (no flag) accepts loopback and private IPs; a list
#                          replaces that default, so loopback names are appended to it here.
#   --workers N            uvicorn worker processes [OVS_MLFLOW_WORKERS], default 2 (sqlite
#                          serialises writes anyway)
#   -- ARGS...             passed to `mlflow server` unchanged
# The mlflow executable: $OVS_MLFLOW_BIN, else <repo>/.venv/bin/mlflow, else mlflow on PATH.
#
# The server replaces this shell (exec), so it gets signals directly; Ctrl-C stops it.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
host="${OVS_MLFLOW_HOST:-127.0.0.1}"
port="${OVS_MLFLOW_PORT:-5000}"
data_dir="${OVS_MLFLOW_DATA_DIR:-$repo_root}"
allowed_hosts="${OVS_MLFLOW_ALLOWED_HOSTS:-}"
workers="${OVS_MLFLOW_WORKERS:-2}"
mlflow_bin="${OVS_MLFLOW_BIN:-}"
extra=()

die() {
  echo "server.sh: error: $*" >&2
  exit 2
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

need_value() { # need_value FLAG [VALUE ...]: a clear error when FLAG has no value
  [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) need_value "$@"; host="$2"; shift 2 ;;
    --port) need_value "$@"; port="$2"; shift 2 ;;
    --data-dir) need_value "$@"; data_dir="$2"; shift 2 ;;
    --allowed-hosts) need_value "$@"; allowed_hosts="$2"; shift 2 ;;
    --workers) need_value "$@"; workers="$2"; shift 2 ;;
    --host=*) host="${1#*=}"; shift ;;
    --port=*) port="${1#*=}"; shift ;;
    --data-dir=*) data_dir="${1#*=}"; shift ;;
    --allowed-hosts=*) allowed_hosts="${1#*=}"; shift ;;
    --workers=*) workers="${1#*=}"; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ -n "$host" ]] || die "--host is empty"
if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  die "--port must be 1-65535, got '$port'"
fi
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, got '$workers'"

if [[ -z "$mlflow_bin" ]]; then
  if [[ -x "$repo_root/.venv/bin/mlflow" ]]; then
    mlflow_bin="$repo_root/.venv/bin/mlflow"
  elif command -v mlflow >/dev/null 2>&1; then
    mlflow_bin="$(command -v mlflow)"
  else
    die "mlflow not found: run 'make install', or set OVS_MLFLOW_BIN"
  fi
fi
[[ -x "$mlflow_bin" ]] || die "$mlflow_bin is not executable"

mkdir -p "$data_dir/mlartifacts" 2>/dev/null || die "cannot create $data_dir/mlartifacts"
data_dir="$(cd "$data_dir" && pwd -P)"
[[ -w "$data_dir" && -w "$data_dir/mlartifacts" ]] || die "$data_dir is not writable"

# MLflow's server-side job runner (GenAI judges, trace roll-ups) is unused by ovs and starts
# seven extra processes; keep it off unless the caller asked for it.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

args=(
  server
  --backend-store-uri "sqlite:///$data_dir/mlflow.db"
  --serve-artifacts
  --artifacts-destination "$data_dir/mlartifacts"
  --host "$host"
  --port "$port"
  --workers "$workers"
)
if [[ -n "$allowed_hosts" ]]; then
  # The '[[]' form escapes the bracket for fnmatch, as MLflow's own default list does.
  args+=(--allowed-hosts "$allowed_hosts,localhost,localhost:*,127.0.0.1,127.0.0.1:*,[::1],[[]::1]:*")
fi

echo "server.sh: backend sqlite:///$data_dir/mlflow.db, artifacts $data_dir/mlartifacts" >&2
echo "server.sh: listening on http://$host:$port (clients: MLFLOW_TRACKING_URI=http://<address>:$port)" >&2
if [[ "$host" != "127.0.0.1" && "$host" != "localhost" && "$host" != "::1" ]]; then
  echo "server.sh: warning: bound to $host: anyone who can reach it can read and write runs" >&2
fi
exec "$mlflow_bin" "${args[@]}" ${extra[@]+"${extra[@]}"}
