#!/usr/bin/env bash
# Stop a tritonserver started with `scripts/serve.sh --wait`: SIGTERM (Triton finishes in-flight
# requests and unloads its models), wait up to --timeout seconds (default 30), then SIGKILL.
#
# Usage: scripts/stop_server.sh [--pid-file F] [--timeout S]
# Environment: PID_FILE (default <project>/build/tritonserver.pid), STOP_TIMEOUT (30).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PID_FILE="${PID_FILE:-$ROOT/build/tritonserver.pid}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"

die() { echo "stop_server.sh: $*" >&2; exit 2; }

while (($#)); do
    case "$1" in
        --pid-file) (($# >= 2)) || die "--pid-file needs a value"; PID_FILE="$2"; shift ;;
        --pid-file=*) PID_FILE="${1#*=}" ;;
        --timeout) (($# >= 2)) || die "--timeout needs a value"; STOP_TIMEOUT="$2"; shift ;;
        --timeout=*) STOP_TIMEOUT="${1#*=}" ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done
[[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds"

if [[ ! -f "$PID_FILE" ]]; then
    echo "stop_server.sh: no PID file $PID_FILE; no server started with serve.sh --wait is running" >&2
    exit 0
fi
pid="$(cat "$PID_FILE")"
[[ "$pid" =~ ^[0-9]+$ ]] || die "$PID_FILE does not hold a PID: '$pid'"

alive() {  # exists and is not a zombie (a server whose parent is gone may wait to be reaped)
    local state
    [[ -r "/proc/$pid/stat" ]] || { kill -0 "$pid" 2>/dev/null; return; }
    state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

if ! alive; then
    echo "stop_server.sh: tritonserver (pid $pid) is not running; removing $PID_FILE" >&2
    rm -f "$PID_FILE"
    exit 0
fi
if [[ -r "/proc/$pid/comm" ]] && [[ "$(cat "/proc/$pid/comm")" != tritonserver ]]; then
    die "pid $pid from $PID_FILE is '$(cat "/proc/$pid/comm")', not tritonserver; not stopping it" \
        "(remove the stale $PID_FILE)"
fi

echo "stop_server.sh: stopping tritonserver (pid $pid)" >&2
kill -TERM "$pid" 2>/dev/null || true
deadline=$((SECONDS + STOP_TIMEOUT))
while alive && ((SECONDS < deadline)); do
    sleep 0.2
done
if alive; then
    echo "stop_server.sh: still running after ${STOP_TIMEOUT}s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        alive || break
        sleep 0.1
    done
fi
if alive; then
    die "pid $pid did not exit"
fi
rm -f "$PID_FILE"
echo "stop_server.sh: stopped" >&2
