"""Requests at the edges of the published limits, against a real server: each answered or refused.

    python scripts/stress_limits.py                      # both ensembles, their own server
    python scripts/stress_limits.py --ensembles catseg --url 127.0.0.1:8000   # a running server

For each ensemble, with both ensembles loaded (the default repository, the default protocol):

- the most classes the memory budget admits on a small image (found from the same memory model
  the preprocess step applies), sent: it must be answered;
- one class more: it must be refused with INVALID_ARGUMENT / 400 before any work;
- the request of issue 14 (1000 classes, 1280 x 1280), and 1024 classes on 8 x 8: refused;
- the largest image (4096 x 4096) with as many classes as ``max_score_elements`` allows, SCORES
  asked for: answered or refused, never a crash;
- after each, a small request that must give the labels it gave before any of them.

A request refused UNAVAILABLE (the memory is within the budget but held now, by another request or
by the regions a large one left behind) is sent again every 3 s, as a client would, up to 20 times.

Prints one row per request (outcome, seconds, the machine's peak used memory during it, the
server's PSS after) and writes artifacts/memory/limits.json. A benchmark, not a test: a CPU run
takes tens of minutes (the admitted requests run hundreds of classes through five views).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image
from skimage import data as skimage_data
from tritonclient.utils import InferenceServerException

from escnet.registry import MODEL_CONFIGS
from escnet_client.wire import Request, build_tensors
from escnet_export.artifacts import DEFAULT_ONNX_DIR
from escnet_export.contract import DEFAULT_VARIANTS, MAX_CLASSES, REQUEST_LIMITS, step_specs
from escnet_export.runtime.memory_model import GIB, RequestShape, estimate_request_memory, resolve_budget
from escnet_export.runtime.steps import view_count
from escnet_export.triton_serving.configs import GraphServing
from escnet_export.triton_serving.repository import build_repository
from escnet_export.triton_serving.server import TritonServer
from escnet_export.triton_serving.server_processes import pss_bytes, server_processes

ROOT = Path(__file__).resolve().parents[1]
SMALL_NAMES = ["cat", "wall", "floor"]
RETRIES, RETRY_WAIT_S = 20, 3.0  # a request refused UNAVAILABLE (memory held elsewhere) is sent again


def photo(height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(skimage_data.chelsea()).resize((width, height)))


def class_names(count: int) -> list[str]:
    return [f"object number {i}" for i in range(count)]


def largest_admitted_classes(ensemble: str, height: int, width: int, budget: float) -> int:
    """The most classes whose estimate (preprocess's own model) stays within ``budget``."""
    config = MODEL_CONFIGS[DEFAULT_VARIANTS[ensemble]]
    chain = list(step_specs(config).values())
    views = view_count(config)

    def fits(classes: int) -> bool:
        shape = RequestShape(classes=classes, views=views, height=height, width=width)
        return estimate_request_memory(chain, shape).peak <= budget

    low, high = 0, MAX_CLASSES
    while low < high:  # the estimate grows with the classes
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


class MemoryPeak:
    """The machine's peak used memory (MemTotal - MemAvailable) while a request runs."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()

    @staticmethod
    def used() -> int:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kib = lambda key: int(fields[key].split()[0]) * 1024  # noqa: E731
        return kib("MemTotal") - kib("MemAvailable")

    def __enter__(self) -> MemoryPeak:
        self.peak = self.used()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.used())

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())


@dataclass
class Outcome:
    answered: bool
    status: str
    message: str
    seconds: float
    labels: np.ndarray | None


def send(
    client: httpclient.InferenceServerClient,
    ensemble: str,
    image: np.ndarray,
    names: list[str],
    scores: bool = False,
) -> Outcome:
    request = Request(image=image, class_names=names, scores=scores, model=ensemble)
    inputs, outputs = build_tensors(httpclient, request, None)  # the SDK's tensors, unchecked
    start = time.perf_counter()
    try:
        result = client.infer(ensemble, inputs, outputs=outputs)
    except InferenceServerException as error:
        return Outcome(False, str(error.status()), error.message() or "", time.perf_counter() - start, None)
    return Outcome(True, "200", "", time.perf_counter() - start, result.as_numpy("LABELS"))


def server_pss_gib(server_pid: int | None) -> float | None:
    if server_pid is None:
        return None
    return round(sum(pss_bytes(p.pid) for p in server_processes(server_pid)) / GIB, 2)


def cases(ensemble: str, budget: float) -> list[tuple[str, tuple[int, int], int, bool, str]]:
    """(what, (H, W), classes, SCORES asked, the outcome it must have: answered / refused / either)."""
    small = (64, 64)
    admitted = largest_admitted_classes(ensemble, *small, budget)
    largest_side = int(REQUEST_LIMITS.max_pixels**0.5)
    score_classes = max(1, REQUEST_LIMITS.max_score_elements // (largest_side * largest_side))
    rows = [
        (f"largest admitted T={admitted}", small, admitted, False, "answered"),
        (f"one class more, T={admitted + 1}", small, admitted + 1, False, "refused"),
        ("issue 14's request, T=1000 on 1280x1280", (1280, 1280), 1000, False, "refused"),
        (f"T={MAX_CLASSES} on 8x8", (8, 8), MAX_CLASSES, False, "refused"),
        (
            f"largest image, T={score_classes}, SCORES",
            (largest_side, largest_side),
            score_classes,
            True,
            "either",
        ),
    ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensembles", nargs="*", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--url", help="host:port of a running server (default: start one)")
    parser.add_argument("--onnx-dir", type=Path, default=ROOT / DEFAULT_ONNX_DIR)
    parser.add_argument("--budget", default="auto", help="the servers' memory_budget_gib (auto: half of RAM)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "memory" / "limits.json")
    args = parser.parse_args()
    budget = resolve_budget(args.budget)

    server = None
    with tempfile.TemporaryDirectory() as scratch:
        if args.url is None:
            repository = Path(scratch) / "model_repository"
            serving = GraphServing(memory_budget_gib=args.budget)
            build_repository(repository, onnx_dir=args.onnx_dir, runtime="onnxruntime", serving=serving)
            server = TritonServer(model_repository=repository, log_path=Path(scratch) / "tritonserver.log")
            server.start(timeout_s=600)
        url = args.url or server.http_url
        client = httpclient.InferenceServerClient(url=url, network_timeout=7200, connection_timeout=60)
        pid = server.pid if server is not None else None
        rows: list[dict] = []
        failures = 0
        try:
            baseline = {e: send(client, e, photo(300, 451), SMALL_NAMES) for e in args.ensembles}
            print(f"budget {budget / GIB:.1f} GiB per request; idle server PSS {server_pss_gib(pid)} GiB")
            for ensemble in args.ensembles:
                assert baseline[ensemble].answered, baseline[ensemble].message
                for what, (height, width), classes, scores, expected in cases(ensemble, budget):
                    retries = 0
                    with MemoryPeak() as peak:
                        while True:  # as a client would: retry while the server says unavailable
                            outcome = send(
                                client, ensemble, photo(height, width), class_names(classes), scores
                            )
                            if outcome.status != "503" or retries == RETRIES:
                                break
                            retries += 1
                            time.sleep(RETRY_WAIT_S)
                    after = send(client, ensemble, photo(300, 451), SMALL_NAMES)
                    healthy = after.answered and np.array_equal(after.labels, baseline[ensemble].labels)
                    ok = healthy and (
                        expected == "either"
                        or (expected == "answered" and outcome.answered)
                        or (expected == "refused" and outcome.status == "400")
                    )
                    failures += not ok
                    row = {
                        "ensemble": ensemble,
                        "request": what,
                        "expected": expected,
                        "outcome": "answered" if outcome.answered else f"refused {outcome.status}",
                        "message": outcome.message[:300],
                        "seconds": round(outcome.seconds, 1),
                        "retries_after_unavailable": retries,
                        "machine_peak_used_gib": round(peak.peak / GIB, 2),
                        "server_pss_after_gib": server_pss_gib(pid),
                        "next_request_right": healthy,
                        "ok": ok,
                    }
                    rows.append(row)
                    print(
                        f"{'ok ' if ok else 'BAD'} {ensemble:7s} {what:42s} {row['outcome']:13s} "
                        f"{row['seconds']:7.1f} s  machine peak {row['machine_peak_used_gib']:5.2f} GiB  "
                        f"server PSS after {row['server_pss_after_gib']} GiB  next right: {healthy}  "
                        f"retries: {retries}"
                        + (f"\n      {outcome.message[:200]}" if outcome.message else ""),
                        flush=True,
                    )
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(
                        json.dumps({"budget_gib": round(budget / GIB, 2), "rows": rows}, indent=2)
                    )
        finally:
            client.close()
            if server is not None:
                server.stop()
    print(f"{len(rows) - failures} of {len(rows)} as they must be -> {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
