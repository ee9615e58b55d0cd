#!/usr/bin/env bash
# Serve a Triton model repository with tritonserver (DESIGN.md section 4).
#
# Usage: scripts/serve.sh [--model-repository DIR] [--host ADDR] [--http-port N] [--grpc-port N]
#                         [--metrics-port N] [--wait|--background] [--pid-file F] [--log-file F]
#                         [--timeout S] [-- EXTRA TRITONSERVER ARGS...]
#
# Uses the tritonserver on PATH (NVIDIA's container) if there is one, else the one inside the
# nvidia-pytriton wheel of the active Python (the project's .venv is activated if present and no
# venv is active); the command line and environment come from export/triton_serving/server.py, which
# TritonServer (tests, benchmarks) uses too.
#
# Environment (flags win): MODEL_REPOSITORY (default <project>/model_repository), HOST (127.0.0.1),
# HTTP_PORT (8000), GRPC_PORT (8001), METRICS_PORT (8002); a port 0 means a free port.
# For --wait: PID_FILE (build/tritonserver.pid), LOG_FILE (build/tritonserver.log),
# WAIT_TIMEOUT (600 s).
#
# The step watchdog (export/triton_serving/step_watchdog.py) runs beside it and reloads a model whose step process
# died; STEP_WATCHDOG=0 leaves it out.
#
# Foreground (default): execs tritonserver. --wait / --background: starts it in the background,
# writes its PID file and log, waits until /v2/health/ready answers, exits 0 (stop it with
# scripts/stop_server.sh); exits non-zero with the log's last 40 lines if the server dies first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "serve.sh: $*" >&2; exit 2; }

MODEL_REPOSITORY="${MODEL_REPOSITORY:-$ROOT/model_repository}"
HOST="${HOST:-127.0.0.1}"
HTTP_PORT="${HTTP_PORT:-8000}"
GRPC_PORT="${GRPC_PORT:-8001}"
METRICS_PORT="${METRICS_PORT:-8002}"
PID_FILE="${PID_FILE:-$ROOT/build/tritonserver.pid}"
LOG_FILE="${LOG_FILE:-$ROOT/build/tritonserver.log}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-600}"
WAIT=0
EXTRA=()

while (($#)); do
    arg="$1"
    value=""
    case "$arg" in
        --*=*) value="${arg#*=}"; arg="${arg%%=*}" ;;
        --model-repository | --host | --http-port | --grpc-port | --metrics-port | --pid-file | --log-file | --timeout)
            (($# >= 2)) || die "$arg needs a value"
            value="$2"; shift ;;
    esac
    case "$arg" in
        --model-repository) MODEL_REPOSITORY="$value" ;;
        --host) HOST="$value" ;;
        --http-port) HTTP_PORT="$value" ;;
        --grpc-port) GRPC_PORT="$value" ;;
        --metrics-port) METRICS_PORT="$value" ;;
        --pid-file) PID_FILE="$value" ;;
        --log-file) LOG_FILE="$value" ;;
        --timeout) WAIT_TIMEOUT="$value" ;;
        --wait | --background) WAIT=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
[[ "$WAIT_TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds, got '$WAIT_TIMEOUT'"

alive() {  # a process that exists and is not a zombie
    local state
    [[ -r "/proc/$1/stat" ]] || { kill -0 "$1" 2>/dev/null; return; }
    state="$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

if ((WAIT)) && [[ -f "$PID_FILE" ]]; then
    old_pid="$(cat "$PID_FILE")"
    if [[ "$old_pid" =~ ^[0-9]+$ ]] && alive "$old_pid"; then
        die "a server is already running (pid $old_pid from $PID_FILE); stop it with scripts/stop_server.sh"
    fi
    rm -f "$PID_FILE"
fi

# The project's venv, unless one is active already (a server started from it runs its Python
# models inside it).
if [[ -z "${VIRTUAL_ENV:-}" && -f "$ROOT/.venv/bin/activate" ]]; then
    set +u
    # shellcheck disable=SC1091
    . "$ROOT/.venv/bin/activate"
    set -u
fi
PYTHON="$(command -v python || command -v python3 || true)"
[[ -n "$PYTHON" ]] || die "no python on PATH"

# Exports (LD_LIBRARY_PATH, PATH), TRITON_COMMAND=(...), TRITON_CONNECT_HOST, TRITON_*_PORT.
# Fails with its own message (e.g. repository not built) before anything starts.
SHELL_SETUP="$("$PYTHON" "$ROOT/export/triton_serving/server.py" --shell --model-repository "$MODEL_REPOSITORY" \
    --host "$HOST" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" \
    -- ${EXTRA[@]+"${EXTRA[@]}"})" || exit $?
eval "$SHELL_SETUP"
echo "serve.sh: ${TRITON_COMMAND[*]}" >&2

# The step watchdog runs beside the server and reloads a model whose step process died
# (export/triton_serving/step_watchdog.py); it exits with the server. STEP_WATCHDOG=0 leaves it out.
watch() {  # $1: the server's pid
    if [[ "${STEP_WATCHDOG:-1}" != 0 ]]; then
        nohup "$PYTHON" "$ROOT/export/triton_serving/step_watchdog.py" --server-pid "$1" \
            --http-url "$TRITON_CONNECT_HOST:$TRITON_HTTP_PORT" >>"${WATCHDOG_LOG:-/dev/stderr}" 2>&1 </dev/null &
    fi
}

if ((WAIT == 0)); then
    watch $$  # exec keeps this shell's pid for tritonserver
    exec "${TRITON_COMMAND[@]}"
fi

mkdir -p "$(dirname "$PID_FILE")" "$(dirname "$LOG_FILE")"

nohup "${TRITON_COMMAND[@]}" >"$LOG_FILE" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$PID_FILE"
WATCHDOG_LOG="$LOG_FILE" watch "$pid"
url="http://$TRITON_CONNECT_HOST:$TRITON_HTTP_PORT/v2/health/ready"
echo "serve.sh: tritonserver pid $pid (pid file $PID_FILE, log $LOG_FILE); waiting up to ${WAIT_TIMEOUT}s for $url" >&2

ready() {
    if command -v curl >/dev/null; then
        curl -sf -o /dev/null --max-time 2 "$url"
    else
        "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url" \
            >/dev/null 2>&1
    fi
}

show_log() {  # the error lines (a model's load failure is not in the last lines), then the last 40
    if grep -qE '^E[0-9]{4} |UNAVAILABLE|^error:' "$LOG_FILE"; then
        echo "serve.sh: error lines of $LOG_FILE:" >&2
        grep -E '^E[0-9]{4} |UNAVAILABLE|^error:' "$LOG_FILE" | tail -n 20 | cut -c1-2000 >&2
    fi
    echo "serve.sh: last 40 lines of $LOG_FILE:" >&2
    tail -n 40 "$LOG_FILE" >&2
}

start=$SECONDS
next_report=$((start + 10))
while true; do
    if ! alive "$pid"; then
        code=0
        wait "$pid" || code=$?
        rm -f "$PID_FILE"
        echo "serve.sh: tritonserver exited (code $code) before it was ready." >&2
        show_log
        exit 1
    fi
    if ready; then
        echo "serve.sh: ready after $((SECONDS - start))s: HTTP $TRITON_CONNECT_HOST:$TRITON_HTTP_PORT," \
            "gRPC $TRITON_CONNECT_HOST:$TRITON_GRPC_PORT, metrics $TRITON_CONNECT_HOST:$TRITON_METRICS_PORT" >&2
        exit 0
    fi
    if ((SECONDS - start >= WAIT_TIMEOUT)); then
        echo "serve.sh: not ready after ${WAIT_TIMEOUT}s; stopping it." >&2
        show_log
        "$ROOT/scripts/stop_server.sh" --pid-file "$PID_FILE" >&2 || true
        exit 1
    fi
    if ((SECONDS >= next_report)); then
        echo "serve.sh: waiting ($((SECONDS - start))s): $(tail -n 1 "$LOG_FILE" | cut -c1-160)" >&2
        next_report=$((SECONDS + 10))
    fi
    sleep 0.5
done
