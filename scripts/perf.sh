#!/usr/bin/env bash
# Throughput and latency of the served ensembles with perf_analyzer (a concurrency sweep).
#
# Usage: scripts/perf.sh [scripts/perf_sweep.py options, see --help]
#   e.g. scripts/perf.sh --ensembles escnet catseg --classes 20 --concurrency 1 2 4
#
# Against a server that is already running (bash scripts/serve.sh --wait; gRPC on 127.0.0.1:8001
# by default, --url to change it). Installs what perf_analyzer needs where it is missing:
# - perf_analyzer itself: the tritonclient[all]==2.51.0 wheel carries it (bin/perf_analyzer);
# - Debian's libb64-0d (apt-get, when run as root; otherwise it says what to install);
# - libcudart.so.12, which the binary links even on a CPU: PyPI's nvidia-cuda-runtime-cu12,
#   installed into build/perf_libs (not the venv, where torch has its own CUDA runtime).
# Writes artifacts/perf/perf.csv, perf.png and perf_machine.json (see scripts/perf_sweep.py).
#
# Every point is kept: one perf_analyzer could not stabilise (it exits 2 for it and writes no report)
# is recorded from the windows it printed, with stable=false and the reason in perf.csv's note column;
# one that failed (server error, --point-timeout) is recorded with its reason. perf.csv is rewritten
# after each point. Stability defaults for a 2-core machine at seconds to minutes a request, each
# explained in perf_sweep.py: --measurement-mode count_windows --requests 3 (per client and window)
# --stability-percentage 40 --max-trials 4 --point-timeout 1800; e.g. a quick look at one point:
#   scripts/perf.sh --ensembles catseg --classes 2 --concurrency 1 --requests 1 --out /tmp/perf
# Exit status: perf_sweep.py's, 0 unless a point failed outright (unstable points do not count).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi

if ! command -v perf_analyzer > /dev/null; then
    echo "perf.sh: installing perf_analyzer (tritonclient[all]==2.51.0)"
    python -m pip install --quiet "tritonclient[all]==2.51.0"
fi

if ! ldconfig -p | grep -q "libb64.so.0d"; then
    if [[ "$(id -u)" == 0 ]]; then
        echo "perf.sh: installing Debian's libb64-0d"
        apt-get install -y -qq libb64-0d > /dev/null || { apt-get update -qq && apt-get install -y -qq libb64-0d > /dev/null; }
    else
        echo "perf.sh: perf_analyzer needs libb64.so.0d: sudo apt-get install libb64-0d" >&2
        exit 2
    fi
fi

PERF_LIBS="$ROOT/build/perf_libs"
CUDART_DIR="$PERF_LIBS/nvidia/cuda_runtime/lib"
if ! ldconfig -p | grep -q "libcudart.so.12" && [[ ! -f "$CUDART_DIR/libcudart.so.12" ]]; then
    echo "perf.sh: installing libcudart.so.12 (nvidia-cuda-runtime-cu12) into $PERF_LIBS"
    python -m pip install --quiet --target "$PERF_LIBS" "nvidia-cuda-runtime-cu12==12.*"
fi
export LD_LIBRARY_PATH="$CUDART_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

perf_analyzer --version > /dev/null 2>&1 || {
    echo "perf.sh: perf_analyzer does not start:" >&2
    perf_analyzer --version >&2 || true
    exit 2
}
exec python scripts/perf_sweep.py "$@"
