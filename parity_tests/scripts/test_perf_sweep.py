"""scripts/perf_sweep.py's reading and recording of perf_analyzer runs, without a server.

The fixtures are perf_analyzer 2.51's own output (the tritonclient[all]==2.51.0 wheel's binary,
``-v -f report.csv``), captured against a catseg server (T = 2, count windows of one request) and
against no server at all: a stable point (exit 0, the -f report), one that did not stabilise (exit 2,
no report, only the verbose ``Pass [n]`` lines), one whose requests the server refused (exit 99) and
one without a server (exit 99). A fake perf_analyzer stands in for the process-level checks (time
limit, incremental perf.csv).
"""

from __future__ import annotations

import argparse
import csv
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from parity_support import load_script

sweep = load_script("perf_sweep")
STABILITY = sweep.Stability(percentage=1, max_trials=3, requests=1)

HEADER = """\
 Successfully read data for 1 stream/streams with 1 step/steps.
*** Measurement Settings ***
  Batch size: 1
  Service Kind: TRITON
  Using "count_windows" mode for stabilization
  Stabilizing using p50latency and throughput
  Minimum number of samples in each window: 1
  Using synchronous calls for inference

Request concurrency: 1
"""
ONE_REQUEST_WARNING = (
    "WARNING: Pass contained only one request, so sample latency standard deviation will be infinity "
    "(UINT64_MAX).\n"
)


def passes(*windows: tuple[str, int]) -> str:
    """perf_analyzer's verbose ``Pass [n]`` lines, one per (throughput as printed, p50 usec) window."""
    return "".join(
        f"  Pass [{n}] throughput: {throughput} infer/sec. p50 latency: {usec} usec\n"
        for n, (throughput, usec) in enumerate(windows, start=1)
    )


def composing_model(name: str, count: int, latency: int, parts: tuple[int, int, int, int, int]) -> str:
    """perf_analyzer's verbose block of one composing model: its counts, then its average latency and
    that latency's parts (overhead, queue, compute input, compute infer, compute output), in usec."""
    overhead, queue, compute_input, compute_infer, compute_output = parts
    counts = "".join(
        f"      {what} count: {count}\n" for what in ("Inference", "Execution", "Successful request")
    )
    return (
        f"  {name}, version: 1\n{counts}      Avg request latency: {latency} usec (overhead {overhead} usec"
        f" + queue {queue} usec + compute input {compute_input} usec + compute infer {compute_infer} usec"
        f" + compute output {compute_output} usec)\n"
    )


STABLE_STDOUT = (
    HEADER
    + passes(("0.0905361", 10803280), ("0.090565", 10447498), ("0.110865", 8943840))
    + """\
  Client:
    Request count: 3
    Throughput: 0.0964409 infer/sec
    Avg client overhead: 0.08%
    p50 latency: 10447498 usec
    p90 latency: 10803280 usec
    p95 latency: 10803280 usec
    p99 latency: 10803280 usec
    Avg gRPC time: 10060894 usec (marshal 233 usec + response wait 10060654 usec + unmarshal 7 usec)
  Server:
    Inference count: 3
    Execution count: 3
    Successful request count: 3
    Avg request latency: 10056754 usec (overhead 0 usec + queue 11105 usec + compute 10049316 usec)

  Composing models:
"""
    + composing_model("catseg_aggregator_1", 3, 3293742, (6, 990, 176, 3288891, 3678))
    + "\n"
    + composing_model("catseg_text_embedder", 4, 4401, (6, 1992, 49, 2292, 61))
    + """
Inferences/Second vs. Client p50 Batch Latency
Concurrency: 1, throughput: 0.0964409 infer/sec, latency 10447498 usec
"""
).replace(":\n", ": \n")  # perf_analyzer ends "Client:", "Server:", "Composing models:" with a blank
STABLE_STDERR = ONE_REQUEST_WARNING * 3
STABLE_REPORT = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
1,0.0964409,233,584,3,2685,10037798,23560,7,10447498,10803280,10803280,10803280
"""

UNSTABLE_STDOUT = HEADER + passes(("0.199573", 4472536), ("0.0903834", 10750945), ("0.0996796", 10446427))
UNSTABLE_STDERR = (
    ONE_REQUEST_WARNING
    * 3
    + "Failed to obtain stable measurement within 3 measurement windows for concurrency 1. Please try to "
    "increase the --measurement-request-count.\nFailed to obtain stable measurement.\n\n"
)

REFUSED_STDOUT = (
    HEADER + "  Pass [1] cb::Error: Failed to maintain requested inference load. Worker thread(s) failed to "
    "generate concurrent requests.\n"
)
REFUSED_STDERR = (
    "Failed to maintain requested inference load. Worker thread(s) failed to generate concurrent requests.\n"
    "Thread [0] had error: in ensemble 'catseg', catseg_preprocess: bad request: image of 4x4 pixels is "
    "too small: each side must be at least 8\n\n\n"
)
NO_SERVER_STDERR = (
    "error: failed to get model metadata: failed to connect to all addresses; last error: UNKNOWN: "
    "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused\n\n"
)


def finished(returncode: int, stdout: str = "", stderr: str = "", timed_out: bool = False) -> Any:
    return sweep.Finished(returncode, stdout, stderr, timed_out)


# --- reading perf_analyzer's output ------------------------------------------------------------


def test_windows_are_read_from_the_verbose_pass_lines() -> None:
    windows = sweep.parse_windows(UNSTABLE_STDOUT)
    assert [w.index for w in windows] == [1, 2, 3]
    assert windows[0].throughput == pytest.approx(0.199573)
    assert windows[0].latency_ms == pytest.approx(4472.536)
    assert not any(w.error for w in windows)


def test_windows_read_average_latency_and_window_errors() -> None:
    text = (
        "  Pass [1] throughput: 2.5 infer/sec. Avg latency: 400000 usec (std 1234 usec). \n"
        "  Pass [2] cb::Error: Failed to maintain requested inference load.\n"
        "  Pass [3] throughput: 8.33333e-05 infer/sec. p50 latency: 12000000000 usec\n"
    )
    windows = sweep.parse_windows(text)
    assert windows[0].latency_ms == pytest.approx(400.0)
    assert windows[1].error == "Failed to maintain requested inference load."
    assert windows[2].throughput == pytest.approx(8.33333e-05)
    assert "error" in windows[1].describe() and "p50 400 ms" in windows[0].describe()


def test_report_csv_gives_throughput_and_latencies_in_ms() -> None:
    figures = sweep.parse_report_csv(STABLE_REPORT, concurrency=1)
    assert figures == pytest.approx(
        {
            "throughput_infer_per_s": 0.0964409,
            "p50_latency_ms": 10447.498,
            "p90_latency_ms": 10803.28,
            "p99_latency_ms": 10803.28,
        }
    )
    assert sweep.parse_report_csv(STABLE_REPORT, concurrency=2) is None
    assert sweep.parse_report_csv(STABLE_REPORT.splitlines()[0], concurrency=1) is None


def test_printed_summary_matches_the_report() -> None:
    assert sweep.parse_client_summary(STABLE_STDOUT) == pytest.approx(
        sweep.parse_report_csv(STABLE_REPORT, concurrency=1)
    )
    assert sweep.parse_client_summary(UNSTABLE_STDOUT) is None


# --- marking a point stable, unstable or failed ------------------------------------------------


def test_stable_point_is_read_from_the_report() -> None:
    result = sweep.classify(finished(0, STABLE_STDOUT, STABLE_STDERR), STABLE_REPORT, 1, STABILITY)
    assert result.stable and not result.failed and result.note == ""
    assert result.figures["p99_latency_ms"] == pytest.approx(10803.28)
    assert len(result.windows) == 3


def test_stable_point_without_report_falls_back_to_the_summary() -> None:
    result = sweep.classify(finished(0, STABLE_STDOUT, STABLE_STDERR), None, 1, STABILITY)
    assert result.stable and result.figures["throughput_infer_per_s"] == pytest.approx(0.0964409)


def test_unstable_point_is_kept_from_its_windows() -> None:
    result = sweep.classify(finished(2, UNSTABLE_STDOUT, UNSTABLE_STDERR), None, 1, STABILITY)
    assert not result.stable and not result.failed
    assert result.figures["throughput_infer_per_s"] == pytest.approx((0.199573 + 0.0903834 + 0.0996796) / 3)
    assert result.figures["p50_latency_ms"] == pytest.approx((4472.536 + 10750.945 + 10446.427) / 3)
    assert result.figures["p90_latency_ms"] is None and result.figures["p99_latency_ms"] is None
    assert result.note.startswith("unstable (not within 1% in 3 windows)")
    assert "Failed to obtain stable measurement within 3 measurement windows for concurrency 1" in result.note
    assert "throughput spread 121%" in result.note  # 0.199573 / 0.0903834 - 1
    assert "WARNING" not in result.note and "Please try" not in result.note


def test_unstable_point_uses_the_last_three_windows_as_perf_analyzer_does() -> None:
    stdout = UNSTABLE_STDOUT + "  Pass [4] throughput: 0.1 infer/sec. p50 latency: 10000000 usec\n"
    result = sweep.classify(finished(2, stdout, UNSTABLE_STDERR), None, 1, STABILITY)
    assert result.figures["throughput_infer_per_s"] == pytest.approx((0.0903834 + 0.0996796 + 0.1) / 3)
    assert "windows #2, #3, #4" in result.note


def test_refused_requests_fail_the_point_with_the_server_error() -> None:
    result = sweep.classify(finished(99, REFUSED_STDOUT, REFUSED_STDERR), None, 1, STABILITY)
    assert result.failed and not result.stable
    assert all(value is None for value in result.figures.values())
    assert result.note.startswith("failed (perf_analyzer exit 99)")
    assert "image of 4x4 pixels is too small" in result.note


def test_no_server_fails_the_point_with_perf_analyzers_message() -> None:
    result = sweep.classify(finished(99, "", NO_SERVER_STDERR), None, 1, STABILITY)
    assert result.failed and result.windows == []
    assert "failed to get model metadata" in result.note and "Connection refused" in result.note


def test_timed_out_point_keeps_the_windows_it_completed() -> None:
    stdout = HEADER + "  Pass [1] throughput: 0.0583816 infer/sec. p50 latency: 16653214 usec\n"
    stopped = finished(0, stdout + "Received exit signal.\n", "", timed_out=True)
    result = sweep.classify(stopped, None, 1, sweep.Stability(timeout_s=15))
    assert result.failed and not result.stable
    assert result.figures["p50_latency_ms"] == pytest.approx(16653.214)
    assert "timed out after 15 s" in result.note and "window #1 alone" in result.note


# --- recording ---------------------------------------------------------------------------------


def row_of(result: Any, concurrency: int, per_step: dict[str, float] | None = None) -> dict[str, Any]:
    return sweep.point_row("catseg", 2, (512, 512, 3), concurrency, result, 3, per_step or {})


def test_rows_mark_stability_and_keep_every_point(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    results = [
        sweep.classify(finished(0, STABLE_STDOUT, STABLE_STDERR), STABLE_REPORT, 1, STABILITY),
        sweep.classify(finished(2, UNSTABLE_STDOUT, UNSTABLE_STDERR), None, 2, STABILITY),
        sweep.classify(finished(99, REFUSED_STDOUT, REFUSED_STDERR), None, 4, STABILITY),
    ]
    rows: list[dict[str, Any]] = []
    for concurrency, result in zip((1, 2, 4), results, strict=True):
        per_step = {"prep": 0.1, "preprocess": 0.05} if concurrency == 1 else None
        rows.append(row_of(result, concurrency, per_step))
        sweep.write_rows(rows, path)  # after every point
        with path.open(newline="") as handle:
            assert len(list(csv.DictReader(handle))) == len(rows)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        written = list(reader)
        columns = reader.fieldnames
    assert columns is not None and columns[:5] == ["ensemble", "classes", "image", "concurrency", "stable"]
    assert columns[-2:] == ["windows", "note"] and "prep_s" in columns
    assert [r["stable"] for r in written] == ["true", "false", "false"]
    assert written[0]["p99_latency_ms"] == "10803.28" and written[0]["note"] == ""
    assert written[1]["p50_latency_ms"] != "" and written[1]["p99_latency_ms"] == ""
    assert written[1]["note"].startswith("unstable")
    assert written[2]["throughput_infer_per_s"] == "" and written[2]["note"].startswith("failed")
    assert written[1]["prep_s"] == "" and written[0]["python_steps_share"] == "0.3333"
    assert "#3 0.09968/s p50 10446 ms" in written[1]["windows"]
    assert not path.with_name("perf.csv.partial").exists()


def test_plot_draws_unstable_and_skips_failed_points(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [
        row_of(sweep.classify(finished(0, STABLE_STDOUT, ""), STABLE_REPORT, 1, STABILITY), 1),
        row_of(sweep.classify(finished(2, UNSTABLE_STDOUT, UNSTABLE_STDERR), None, 2, STABILITY), 2),
        row_of(sweep.classify(finished(99, "", NO_SERVER_STDERR), None, 4, STABILITY), 4),
    ]
    sweep.plot(rows, tmp_path / "perf.png")
    assert (tmp_path / "perf.png").stat().st_size > 0


def test_stability_flags_and_their_perf_analyzer_options() -> None:
    args = sweep.parse_args([])
    assert (args.measurement_mode, args.requests, args.stability_percentage) == ("count_windows", 3, 40.0)
    assert (args.max_trials, args.point_timeout) == (4, 1800.0)
    options = sweep.Stability().arguments(concurrency=2)
    assert options[options.index("--measurement-request-count") + 1] == "6"
    assert options[options.index("--stability-percentage") + 1] == "40"
    timed = sweep.Stability(mode="time_windows", interval_ms=90_000).arguments(concurrency=2)
    assert "--measurement-request-count" not in timed and "90000" in timed
    with pytest.raises(SystemExit):
        sweep.parse_args(["--max-trials", "2"])  # perf_analyzer needs 3 windows to judge


# --- the process: time limit, long lines, a whole point --------------------------------------


FAKE_PERF_ANALYZER = """\
#!{python}
# Stand-in for perf_analyzer: FAKE_CASE=stable writes the -f report and exits 0, unstable exits 2
# after its Pass lines, hang prints one window (and a response dump) and then never finishes.
import os, sys, time
case = os.environ["FAKE_CASE"]
sys.stdout.write({header!r})
if case == "hang":
    print("  Pass [1] throughput: 0.05 infer/sec. p50 latency: 20000000 usec", flush=True)
    print("raw_output_contents: " + "\\\\000" * 100000, flush=True)
    time.sleep(60)
elif case == "stable":
    sys.stdout.write({stable!r})
    open(sys.argv[sys.argv.index("-f") + 1], "w").write({report!r})
else:
    sys.stdout.write({unstable!r})
    sys.stderr.write({unstable_err!r})
    sys.exit(2)
"""


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    path = tmp_path / "perf_analyzer"
    stable_tail = STABLE_STDOUT.removeprefix(HEADER)
    unstable_tail = UNSTABLE_STDOUT.removeprefix(HEADER)
    path.write_text(
        FAKE_PERF_ANALYZER.format(
            python=sys.executable,
            header=HEADER,
            stable=stable_tail,
            report=STABLE_REPORT,
            unstable=unstable_tail,
            unstable_err=UNSTABLE_STDERR,
        )  # fmt: skip
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_time_limit_stops_the_run_and_keeps_its_windows(
    fake_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CASE", "hang")
    monkeypatch.setattr(sweep, "INTERRUPT_GRACE_S", 5.0)
    done = sweep.run_perf_analyzer([str(fake_binary)], timeout_s=3, echo=False)
    assert done.timed_out
    assert "Pass [1] throughput: 0.05" in done.stdout
    assert "raw_output_contents" not in done.stdout  # the long dump was dropped
    result = sweep.classify(done, None, 1, sweep.Stability(timeout_s=3))
    assert result.failed and result.figures["throughput_infer_per_s"] == pytest.approx(0.05)


class FakeClient:
    """Triton's statistics API: one more catseg request and some compute every time it is asked."""

    def __init__(self) -> None:
        self.calls = 0

    def get_inference_statistics(self) -> dict[str, Any]:
        self.calls += 1
        count = 3 * self.calls

        def model(name: str, seconds: float) -> dict[str, Any]:
            ns = str(int(seconds * 1e9 * count))
            return {
                "name": name,
                "inference_stats": {"success": {"count": count}, "compute_infer": {"ns": ns}},
            }

        return {
            "model_stats": [model("catseg", 0.0), model("catseg_prep", 0.1), model("catseg_decoder", 1.0)]
        }


@pytest.mark.parametrize(("case", "stable"), [("stable", True), ("unstable", False)])
def test_measure_point_records_the_run_and_the_server_statistics(
    case: str, stable: bool, fake_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CASE", case)
    args = argparse.Namespace(out=tmp_path, url="127.0.0.1:1")
    input_path = tmp_path / "perf_input_2.json"
    with (tmp_path / "perf_analyzer.log").open("w") as log:
        result, served, per_step = sweep.measure_point(
            str(fake_binary), FakeClient(), args, STABILITY, "catseg", 2, 1, input_path, (512, 512, 3), log
        )
    assert result.stable is stable and not result.failed
    assert served == 3 and per_step == pytest.approx({"decoder": 1.0, "prep": 0.1})
    log_text = (tmp_path / "perf_analyzer.log").read_text()
    assert log_text.startswith(f"==== catseg T=2 c=1: exit {0 if stable else 2}")
    assert "--measurement-request-count 1" in log_text and "Pass [3]" in log_text
    row = sweep.point_row("catseg", 2, (512, 512, 3), 1, result, served, per_step)
    assert row["stable"] == ("true" if stable else "false") and row["decoder_s"] == 1.0
