"""Concurrency sweep with perf_analyzer against a running server; run it through scripts/perf.sh.

    scripts/perf.sh [--url 127.0.0.1:8001] [--ensembles escnet catseg] [--classes 20]
                    [--concurrency 1 2 4] [--image astronaut] [--out artifacts/perf]
                    [--measurement-mode count_windows] [--requests 3] [--measurement-interval 120000]
                    [--stability-percentage 40] [--max-trials 4] [--point-timeout 1800]

For each ensemble and concurrency, perf_analyzer (gRPC, real inputs from --input-data JSON: one
skimage photo and the first T names of parity_tests/data/vocabulary.txt) measures throughput and
p50/p90/p99 latency. Triton's statistics API, read before and after each run, gives each composing
model's compute seconds per request (text_embedder's includes its wait for the text encoder, which a
warm-up request before each ensemble's sweep fills the cache for: the sweep measures a vocabulary in
use).

Every point is kept. perf_analyzer exits non-zero, and writes no report, for a point it could not
stabilise within --max-trials windows; its verbose output still has each window's throughput and p50
latency, so such a point is recorded from its last windows with ``stable=false`` and the reason in
``note``. A point that failed outright (server error, --point-timeout) is recorded with its reason
(and the figures of the windows it completed, if any). The sweep always goes on to the next point,
and perf.csv is rewritten after each one, so an interrupted sweep keeps what it measured.

Writes, under --out: perf_input_<T>.json (the input data), perf.csv (one row per ensemble, classes
and concurrency: the figures, ``stable``, composing models as columns, the windows, ``note``),
perf_analyzer.log (perf_analyzer's output, without its dumps of whole responses), perf.png (throughput
and latency against concurrency; hollow markers: unstable points) and perf_machine.json (machine,
versions, stability settings, server metadata, runtime of each model). Exits 0 when no point failed
outright, 1 otherwise (unstable points are kept and do not count as failures), 130 when interrupted
(Ctrl-C or SIGTERM: the running perf_analyzer is stopped, the points so far are kept).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import tritonclient.grpc as grpcclient

from escnet_client import read_classes_file
from escnet_export.triton_serving.stats import composing_seconds, compute_snapshot, python_share

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = ROOT / "parity_tests" / "data" / "vocabulary.txt"
PERCENTILES = ("p50", "p90", "p99")
FIGURES = ("throughput_infer_per_s", *(f"{p}_latency_ms" for p in PERCENTILES))

# perf_analyzer (2.51) calls a point stable when, over its last STABILITY_WINDOW measurement windows,
# max / min of both throughput and the stabilising latency is within 1 + --stability-percentage / 100.
# The window count is fixed in perf_analyzer; fewer trials than this can never be stable.
STABILITY_WINDOW = 3
# The latency perf_analyzer stabilises on (--percentile), and the one its per-window lines print.
STABILISING_PERCENTILE = 50
# perf_analyzer's exit status when its only concurrency did not stabilise (pa::STABILITY_ERROR).
STABILITY_ERROR = 2
UNSTABLE_MESSAGE = "Failed to obtain stable measurement"
# One -v prints the windows and keeps the gRPC client quiet (it gets -v -v, extra_verbose, which would
# print each whole response: LABELS as escaped bytes, megabytes a line). Should such lines come, the
# ones longer than this are dropped as they are read (not kept, not logged).
MAX_LINE = 2000
# After --point-timeout: perf_analyzer's SIGINT handler stops sending and waits for the requests in
# flight (so the next point does not start on a busy server); a second signal is not needed, after
# this long it is killed.
INTERRUPT_GRACE_S = 120.0

LEADING_COLUMNS = ("ensemble", "classes", "image", "concurrency", "stable", *FIGURES, "requests_served")
TRAILING_COLUMNS = ("windows", "note")


@dataclass(frozen=True)
class Stability:
    """How perf_analyzer measures one point and decides that it is stable (the sweep's flags)."""

    mode: str = "count_windows"
    requests: int = 3
    interval_ms: int = 120_000
    percentage: float = 40.0
    max_trials: int = 4
    timeout_s: float = 1800.0

    def arguments(self, concurrency: int) -> list[str]:
        """perf_analyzer's measurement options for one concurrency."""
        if self.mode == "count_windows":
            window = ["--measurement-request-count", str(self.requests * concurrency)]
        else:
            window = ["--measurement-interval", str(self.interval_ms)]
        return [
            "--measurement-mode", self.mode, *window,
            "--stability-percentage", f"{self.percentage:g}", "--max-trials", str(self.max_trials),
            "--percentile", str(STABILISING_PERCENTILE),
        ]  # fmt: skip


@dataclass(frozen=True)
class Window:
    """One measurement window, from a ``Pass [n]`` line of perf_analyzer's verbose output."""

    index: int
    throughput: float = 0.0
    latency_ms: float | None = None
    error: str = ""

    def describe(self) -> str:
        if self.error:
            return f"#{self.index} error: {self.error}"
        latency = "?" if self.latency_ms is None else f"{self.latency_ms:.0f} ms"
        return f"#{self.index} {self.throughput:.4g}/s p{STABILISING_PERCENTILE} {latency}"


@dataclass
class PointResult:
    """What one perf_analyzer run measured, and whether it can be read as a stable measurement."""

    figures: dict[str, float | None]
    stable: bool
    failed: bool
    note: str = ""
    windows: list[Window] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    """A finished perf_analyzer process: exit status, its (filtered) output, whether it timed out."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


def write_input_data(path: Path, image: np.ndarray, names: list[str]) -> None:
    """perf_analyzer's --input-data JSON: one request of IMAGE [H, W, 3] uint8 and CLASS_NAMES [T]."""
    request = {
        "IMAGE": {"content": image.reshape(-1).tolist(), "shape": list(image.shape)},
        "CLASS_NAMES": {"content": names, "shape": [len(names)]},
    }
    path.write_text(json.dumps({"data": [request]}))


def perf_analyzer_command(
    binary: str,
    url: str,
    ensemble: str,
    concurrency: int,
    input_path: Path,
    image_shape: Sequence[int],
    classes: int,
    stability: Stability,
    report_path: Path,
) -> list[str]:
    """The perf_analyzer command line of one point; -v for the per-window lines of unstable points."""
    return [
        binary, "-m", ensemble, "-u", url, "-i", "grpc",
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--input-data", str(input_path),
        "--shape", f"IMAGE:{','.join(map(str, image_shape))}", "--shape", f"CLASS_NAMES:{classes}",
        *stability.arguments(concurrency),
        "-f", str(report_path), "-v",
    ]  # fmt: skip


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


PASS_LINE = re.compile(r"^\s*Pass \[(\d+)\]\s*(.*)$")
NUMBER = r"([-+0-9.eE]+|inf|nan)"
PASS_FIGURES = re.compile(rf"throughput: {NUMBER} infer/sec\.?(?:.*?latency: {NUMBER} usec)?")


def parse_windows(stdout: str) -> list[Window]:
    """The ``Pass [n]`` lines of perf_analyzer -v, in order:

    ``  Pass [1] throughput: 0.374532 infer/sec. p50 latency: 2561234 usec``
    ``  Pass [2] throughput: 0.3 infer/sec. Avg latency: 2561234 usec (std 1234 usec).``
    ``  Pass [3] cb::Error: <message>``
    """
    windows = []
    for line in stdout.splitlines():
        match = PASS_LINE.match(line)
        if match is None:
            continue
        index, rest = int(match.group(1)), match.group(2).strip()
        if rest.startswith("cb::Error:"):
            windows.append(Window(index, error=rest.removeprefix("cb::Error:").strip()))
        elif figures := PASS_FIGURES.search(rest):
            throughput = _number(figures.group(1))
            latency_us = _number(figures.group(2) or "")
            latency_ms = None if latency_us is None else latency_us / 1000
            windows.append(Window(index, throughput or 0.0, latency_ms))
    return windows


def _figures_from_row(row: dict[str, str]) -> dict[str, float | None]:
    figures: dict[str, float | None] = {"throughput_infer_per_s": _number(row.get("Inferences/Second", ""))}
    for p in PERCENTILES:
        value = _number(row.get(f"{p} latency", ""))
        figures[f"{p}_latency_ms"] = None if value is None else value / 1000
    return figures


def parse_report_csv(text: str, concurrency: int) -> dict[str, float | None] | None:
    """The figures of ``concurrency`` in perf_analyzer's -f report (latencies there in usec), or None
    when the report has no such row (perf_analyzer writes none for a point that did not stabilise)."""
    rows = list(csv.DictReader(text.splitlines()))
    for row in rows:
        if _number(row.get("Concurrency", "")) == concurrency:
            figures = _figures_from_row(row)
            return figures if figures["throughput_infer_per_s"] is not None else None
    return None


def parse_client_summary(stdout: str) -> dict[str, float | None] | None:
    """The figures of the last ``Client:`` block perf_analyzer printed for a stable point
    (``    Throughput: 0.37 infer/sec``, ``    p50 latency: 2561234 usec``); None without one."""
    block = stdout.rpartition("Client:")[2] if "Client:" in stdout else ""
    row: dict[str, str] = {}
    for line in block.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "Throughput:" and "Inferences/Second" not in row:
            row["Inferences/Second"] = words[1]
        elif len(words) >= 3 and words[1] == "latency:" and words[0].startswith("p"):
            row.setdefault(f"{words[0]} latency", words[2])
        elif words[:1] == ["Server:"]:
            break
    figures = _figures_from_row(row)
    return figures if figures["throughput_infer_per_s"] is not None else None


def failure_reason(stderr: str, limit: int = 400) -> str:
    """perf_analyzer's error lines (stderr) on one line, without repeats, its warnings left out
    (``WARNING: Pass contained only one request, ...``) unless there is nothing else."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("WARNING")] or lines
    reason = " | ".join(dict.fromkeys(errors))
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def spread_percent(values: Iterable[float]) -> float:
    """max / min - 1, in percent: perf_analyzer's measure of (in)stability."""
    values = list(values)
    low, high = min(values), max(values)
    return float("inf") if low <= 0 else (high / low - 1) * 100


def figures_from_windows(windows: Sequence[Window]) -> tuple[dict[str, float | None], str]:
    """Figures of an unstable point from its last (at most STABILITY_WINDOW) good windows, the ones
    perf_analyzer judged: mean throughput and mean window p50 (p90 / p99 are not printed per window),
    and a note on how far apart they were."""
    good = [w for w in windows if not w.error][-STABILITY_WINDOW:]
    figures: dict[str, float | None] = dict.fromkeys(FIGURES)
    if not good:
        return figures, "no window completed"
    figures["throughput_infer_per_s"] = sum(w.throughput for w in good) / len(good)
    latencies = [w.latency_ms for w in good if w.latency_ms is not None]
    if latencies:
        figures[f"p{STABILISING_PERCENTILE}_latency_ms"] = sum(latencies) / len(latencies)
    if len(good) == 1:
        return figures, f"figures: window #{good[0].index} alone; p90/p99 not reported"
    spreads = f"throughput spread {spread_percent(w.throughput for w in good):.0f}%"
    if len(latencies) > 1:
        spreads += f", p{STABILISING_PERCENTILE} spread {spread_percent(latencies):.0f}%"
    numbers = ", ".join(f"#{w.index}" for w in good)
    return figures, f"figures: mean of windows {numbers} ({spreads}); p90/p99 not reported"


def classify(
    finished: Finished,
    report_text: str | None,
    concurrency: int,
    stability: Stability,
) -> PointResult:
    """One point's result from perf_analyzer's exit status, output and -f report.

    stable: exit 0 and a report row (or, without one, the printed summary). Unstable: perf_analyzer's
    stability error; kept from its windows. Failed: anything else (server error, bad option, timeout):
    the reason, and the windows' figures where some windows completed before it.
    """
    windows = parse_windows(finished.stdout)
    if finished.returncode == 0 and not finished.timed_out:
        figures = (report_text and parse_report_csv(report_text, concurrency)) or parse_client_summary(
            finished.stdout
        )
        if figures is not None:
            return PointResult(figures, stable=True, failed=False, windows=windows)
        return PointResult(
            dict.fromkeys(FIGURES), stable=False, failed=True, windows=windows,
            note="failed: perf_analyzer exited 0 but reported no figures",
        )  # fmt: skip
    window_figures, window_note = figures_from_windows(windows)
    if finished.timed_out:
        reason = f"failed: timed out after {stability.timeout_s:g} s (--point-timeout)"
        note = f"{reason}; {window_note}" if any(not w.error for w in windows) else reason
        return PointResult(window_figures, stable=False, failed=True, note=note, windows=windows)
    message = failure_reason(finished.stderr)
    unstable = finished.returncode == STABILITY_ERROR or UNSTABLE_MESSAGE in finished.stderr
    if unstable and any(not w.error for w in windows):
        limit = f"not within {stability.percentage:g}% in {stability.max_trials} windows"
        said = next((line for line in message.split(" | ") if UNSTABLE_MESSAGE in line), message)
        note = f"unstable ({limit}): {window_note}; perf_analyzer: {said.partition('. Please')[0]}"
        return PointResult(window_figures, stable=False, failed=False, note=note, windows=windows)
    note = f"failed (perf_analyzer exit {finished.returncode}): {message or 'no message'}"
    errors = [w.error for w in windows if w.error]
    if errors and errors[-1] not in note:
        note += f"; last window: {errors[-1]}"
    return PointResult(window_figures, stable=False, failed=True, note=note, windows=windows)


def _pump(stream: IO[str], keep: list[str], echo: bool) -> None:
    for line in stream:
        if len(line) > MAX_LINE:
            continue
        keep.append(line)
        if echo and line.lstrip().startswith("Pass ["):
            print(f"    perf_analyzer {line.strip()}", flush=True)


def run_perf_analyzer(command: Sequence[str], timeout_s: float, echo: bool = True) -> Finished:
    """Runs perf_analyzer with a time limit; its output is read as it comes (long lines dropped).

    On the limit it gets SIGINT (it stops sending and waits for requests in flight), then SIGKILL after
    INTERRUPT_GRACE_S; what it printed until then is kept either way.
    """
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
    )
    assert process.stdout is not None and process.stderr is not None
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=_pump, args=(process.stdout, out, echo), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, err, False), daemon=True),
    ]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    finally:
        if process.poll() is None:  # interrupted from outside (Ctrl-C): do not leave it running
            process.kill()
            process.wait()
        for reader in readers:
            reader.join(timeout=10)
    return Finished(process.returncode, "".join(out), "".join(err), timed_out)


def warm_up(client: Any, ensemble: str, image: np.ndarray, names: list[str]) -> None:
    """One request outside the measurement: the text embedder caches the vocabulary, as in use."""
    inputs = [
        grpcclient.InferInput("IMAGE", list(image.shape), "UINT8"),
        grpcclient.InferInput("CLASS_NAMES", [len(names)], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(np.array([n.encode() for n in names], dtype=np.object_))
    client.infer(ensemble, inputs, outputs=[grpcclient.InferRequestedOutput("LABELS")], client_timeout=1800)


def point_row(
    ensemble: str,
    classes: int,
    image_shape: Sequence[int],
    concurrency: int,
    result: PointResult,
    served: int | None,
    per_step: dict[str, float],
) -> dict[str, Any]:
    """One perf.csv row: the figures (ms and infer/s, rounded; empty where not measured), stable as
    true/false, the composing models' seconds per request, the windows and the note."""
    row: dict[str, Any] = {
        "ensemble": ensemble,
        "classes": classes,
        "image": f"{image_shape[1]}x{image_shape[0]}",
        "concurrency": concurrency,
        "stable": "true" if result.stable else "false",
        **{k: ("" if v is None else round(v, 4)) for k, v in result.figures.items()},
        "requests_served": "" if served is None else served,
    }
    if per_step:
        row["python_steps_share"] = round(python_share(per_step), 4)
        row.update({f"{step}_s": round(seconds, 4) for step, seconds in per_step.items()})
    row["windows"] = "; ".join(w.describe() for w in result.windows)
    row["note"] = result.note
    return row


def csv_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """perf.csv's columns: the fixed ones first, composing models as they appear, windows and note last."""
    seen = list(dict.fromkeys(key for row in rows for key in row))
    middle = [c for c in seen if c not in LEADING_COLUMNS and c not in TRAILING_COLUMNS]
    return [*LEADING_COLUMNS, *middle, *TRAILING_COLUMNS]


def write_rows(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The whole of perf.csv, replaced at once (a sweep interrupted mid-write keeps the last one)."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=csv_columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def machine_record(
    client: grpcclient.InferenceServerClient, ensembles: list[str], binary: str, stability: Stability
) -> dict:
    metadata = client.get_server_metadata(as_json=True)
    runtimes = {}
    for model in client.get_model_repository_index(as_json=True).get("models", []):
        if any(model["name"].startswith(f"{e}_") for e in ensembles):
            config = client.get_model_config(model["name"], as_json=True)["config"]
            runtimes[model["name"]] = config.get("backend") or config.get("platform")
    done = subprocess.run([binary, "--version"], capture_output=True, text=True)
    version = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["unknown"]
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": sys.version.split()[0],
        "tritonserver": metadata.get("version"),
        "perf_analyzer": version[0],
        "stability": asdict(stability),
        "onnxruntime_threads": os.environ.get("ESCNET_ORT_THREADS", "(server default)"),
        "model_runtimes": runtimes,
    }


def _value(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key, "")
    return None if value in ("", None) else float(value)


def plot(rows: list[dict], path: Path) -> None:
    """Throughput and p50 / p99 latency against concurrency; unstable points hollow, failed ones left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    series = [
        (left, "throughput_infer_per_s", 1.0, "o", "-", ""),
        (right, "p50_latency_ms", 1000.0, "o", "-", " p50"),
        (right, "p99_latency_ms", 1000.0, "x", "--", " p99"),
    ]
    for key in sorted({(r["ensemble"], r["classes"]) for r in rows}):
        mine = [r for r in rows if (r["ensemble"], r["classes"]) == key]
        label = f"{key[0]} T={key[1]}"
        for axis, column, scale, marker, style, suffix in series:
            points = [(r["concurrency"], _value(r, column), r["stable"] == "true") for r in mine]
            points = [(x, y / scale, stable) for x, y, stable in points if y is not None]
            if not points:
                continue
            (line,) = axis.plot(
                [p[0] for p in points], [p[1] for p in points], marker=marker, linestyle=style,
                label=label + suffix,
            )  # fmt: skip
            unstable = [p for p in points if not p[2]]
            if unstable:
                axis.plot(
                    [p[0] for p in unstable], [p[1] for p in unstable], linestyle="none", marker="o",
                    markersize=11, markerfacecolor="none", markeredgecolor=line.get_color(),
                )  # fmt: skip
    left.set(xlabel="concurrency", ylabel="images / s", title="throughput")
    right.set(xlabel="concurrency", ylabel="latency (s)", title="latency (hollow ring: unstable point)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _at_least(minimum: float, kind: type = int) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address")
    parser.add_argument("--ensembles", nargs="+", default=["escnet", "catseg"])
    parser.add_argument("--classes", nargs="+", type=int, default=[20])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--image", default="astronaut", help="a skimage.data photo")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "perf")
    defaults = Stability()
    stability = parser.add_argument_group(
        "stability", "how perf_analyzer measures a point (defaults for 2-core machines, seconds a request)"
    )
    # count_windows: a window closes when N requests have completed, however long they take. In
    # perf_analyzer's default time windows (5 s) a request of seconds to minutes completes in few or no
    # windows; a window without one has throughput 0 and can never be stable.
    stability.add_argument(
        "--measurement-mode", choices=("count_windows", "time_windows"), default=defaults.mode,
        help="count_windows: --requests requests per client a window; time_windows: --measurement-interval",
    )  # fmt: skip
    # 3 per client and window: the p50 of a window is then a median, not one request's time, and a
    # point (STABILITY_WINDOW to --max-trials windows) costs 9-12 requests per client.
    stability.add_argument(
        "--requests", type=_at_least(1), default=defaults.requests,
        help="count_windows: requests per window and concurrent client",
    )  # fmt: skip
    # Only for time_windows: 120 s holds several requests even at 20+ s a request (a loaded machine).
    stability.add_argument(
        "--measurement-interval", type=_at_least(1000), default=defaults.interval_ms, metavar="MS",
        help="time_windows: window length in ms (make it hold several requests)",
    )  # fmt: skip
    # perf_analyzer's 10% is for GPU models at milliseconds a request. On a shared 2-core VM the same
    # request moves 10-20% from run to run, and a window of 3 requests does not average that out:
    # max/min over 3 windows within 1.40 separates a settled server from one still warming up.
    stability.add_argument(
        "--stability-percentage", type=_at_least(1, float), default=defaults.percentage, metavar="PCT",
        help="allowed max/min - 1 of throughput and p50 over the last 3 windows, in percent",
    )  # fmt: skip
    # 3 windows are the least perf_analyzer can judge; one more gives a point one retry. Each window
    # costs minutes here, and an unstable point is kept anyway (stable=false), so more trials mostly
    # cost time.
    stability.add_argument(
        "--max-trials", type=_at_least(STABILITY_WINDOW), default=defaults.max_trials,
        help=f"most windows per point (at least {STABILITY_WINDOW}: perf_analyzer compares the last 3)",
    )  # fmt: skip
    # The worst point of the default sweep (escnet, T=20, c=4 on a loaded 2-core VM: 4 windows of 12
    # requests at 5-20 s) takes 5-15 minutes; 30 minutes is well above that, but a hung point (a step
    # process stuck, the server gone) still ends and the sweep goes on.
    stability.add_argument(
        "--point-timeout", type=_at_least(1, float), default=defaults.timeout_s, metavar="S",
        help="seconds one point (one perf_analyzer run) may take; then it is stopped and recorded as failed",
    )  # fmt: skip
    return parser.parse_args(argv)


def measure_point(
    binary: str,
    client: Any,
    args: argparse.Namespace,
    stability: Stability,
    ensemble: str,
    classes: int,
    concurrency: int,
    input_path: Path,
    image_shape: Sequence[int],
    log: IO[str],
) -> tuple[PointResult, int | None, dict[str, float]]:
    """One perf_analyzer run and the server statistics around it; never raises for a server error."""
    report_path = args.out / "last_run.csv"
    report_path.unlink(missing_ok=True)
    command = perf_analyzer_command(
        binary, args.url, ensemble, concurrency, input_path, image_shape, classes, stability, report_path
    )
    try:
        before: dict[str, dict[str, int]] | None = compute_snapshot(client)
    except Exception:  # the server is gone: perf_analyzer will say so
        before = None
    finished = run_perf_analyzer(command, stability.timeout_s)
    report_text = report_path.read_text() if report_path.exists() else None
    result = classify(finished, report_text, concurrency, stability)
    stopped = f" (stopped after --point-timeout {stability.timeout_s:g} s)" if finished.timed_out else ""
    log.write(f"==== {ensemble} T={classes} c={concurrency}: exit {finished.returncode}{stopped}\n$ ")
    log.write(" ".join(command) + "\n" + finished.stdout + finished.stderr + "\n")
    log.flush()
    served: int | None = None
    per_step: dict[str, float] = {}
    if before is not None:
        try:
            after = compute_snapshot(client)
            served = after.get(ensemble, {"count": 0})["count"] - before.get(ensemble, {"count": 0})["count"]
            per_step = composing_seconds(before, after, ensemble, served) if served else {}
        except Exception as error:  # recorded, the sweep goes on
            result.note += f"{'; ' if result.note else ''}server statistics unavailable: {error}"
    return result, served, per_step


def describe(row: dict[str, Any]) -> str:
    """One line of progress for a point."""
    head = f"{row['ensemble']:7s} T={row['classes']:4d} c={row['concurrency']:2d}"
    throughput = _value(row, "throughput_infer_per_s")
    if throughput is None:
        return f"{head}: FAILED: {row['note']}"
    latencies = ", ".join(
        f"{p} {value / 1000:.2f} s"
        for p in PERCENTILES
        if (value := _value(row, f"{p}_latency_ms")) is not None
    )
    share = _value(row, "python_steps_share")
    text = f"{head}: {throughput:.3f} img/s, {latencies}"
    text += "" if share is None else f", Python steps {share:.1%}"
    return text if row["stable"] == "true" else f"{text} [stable=false: {row['note']}]"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stability = Stability(
        mode=args.measurement_mode, requests=args.requests, interval_ms=args.measurement_interval,
        percentage=args.stability_percentage, max_trials=args.max_trials, timeout_s=args.point_timeout,
    )  # fmt: skip
    binary = shutil.which("perf_analyzer")
    if binary is None:
        raise SystemExit("perf_analyzer is not on PATH: run this through scripts/perf.sh")
    from skimage import data

    args.out.mkdir(parents=True, exist_ok=True)
    image = getattr(data, args.image)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    vocabulary = read_classes_file(VOCABULARY)
    client = grpcclient.InferenceServerClient(args.url)
    if not client.is_server_ready():
        raise SystemExit(f"no ready server at {args.url}: start one with scripts/serve.sh --wait")

    csv_path = args.out / "perf.csv"
    rows: list[dict[str, Any]] = []
    failed = 0
    interrupted = False
    # SIGTERM as Ctrl-C: the running perf_analyzer is stopped (not left loading the server) and the
    # plot and machine record are written for the points so far (perf.csv already holds them).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with (args.out / "perf_analyzer.log").open("w") as log:
            for classes in args.classes:
                input_path = args.out / f"perf_input_{classes}.json"
                write_input_data(input_path, image, vocabulary[:classes])
                for ensemble in args.ensembles:
                    warm_note = ""
                    try:
                        warm_up(client, ensemble, image, vocabulary[:classes])
                    except Exception as error:  # each point then says what it met
                        warm_note = f"warm-up request failed: {str(error)[:200]}"
                        print(f"{ensemble:7s} T={classes:4d}: {warm_note}", flush=True)
                    for concurrency in args.concurrency:
                        result, served, per_step = measure_point(
                            binary, client, args, stability, ensemble, classes, concurrency, input_path,
                            image.shape, log,
                        )  # fmt: skip
                        if warm_note:
                            result.note = f"{result.note}; {warm_note}" if result.note else warm_note
                        failed += result.failed
                        row = point_row(ensemble, classes, image.shape, concurrency, result, served, per_step)
                        rows.append(row)
                        write_rows(rows, csv_path)
                        print(describe(row), flush=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if rows:
            try:
                plot(rows, args.out / "perf.png")
            except Exception as error:  # the CSV is what matters
                print(f"perf.png not written: {error}", file=sys.stderr)
        try:
            record = machine_record(client, args.ensembles, binary, stability)
            (args.out / "perf_machine.json").write_text(json.dumps(record, indent=2))
        except Exception as error:
            print(f"perf_machine.json not written: {error}", file=sys.stderr)
        (args.out / "last_run.csv").unlink(missing_ok=True)
        client.close()
    unstable = sum(row["stable"] == "false" for row in rows) - failed
    head = f"interrupted after {len(rows)} points" if interrupted else f"{len(rows)} points"
    print(
        f"{head}: {len(rows) - unstable - failed} stable, {unstable} unstable (kept, stable=false), "
        f"{failed} failed; wrote {csv_path}, {args.out / 'perf.png'}, {args.out / 'perf_machine.json'}"
    )
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
