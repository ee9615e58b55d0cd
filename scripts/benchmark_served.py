"""Per-image latency through the served ensembles, and the share of it spent in the Python steps.

    python scripts/benchmark_served.py [--ensembles escnet catseg] [--classes 20 150] [--runs 3]

Starts one real tritonserver on the checked-in model_repository/ (build it first:
``python -m escnet_export.triton_serving.repository``), sends skimage's astronaut (512 x 512, one 384 view)
with the first T names of parity_tests/data/vocabulary.txt, and reports the median client latency.
The text-embedding cache is warmed by the untimed first request, as a fixed vocabulary is in use;
one more request with T names not sent before shows a cache miss (the text encoder runs T times).
The server's start-to-ready time and each first request (cold cache; for the first T of an
ensemble, graphs never run before) say what a new replica costs (README, Running on Kubernetes).
Per composing model, Triton's statistics API gives the compute time of the timed requests; the
Python steps' share is the time of preprocess, text_embedder, pseudo_points and postprocess over the
sum of all composing models. The direct ORT chain and the PyTorch reference are
scripts/benchmark.py's (same image, same classes); their figures are read from its JSON when present,
so the ratios are printed side by side. With --direct, this command runs scripts/benchmark.py first
(same variants, classes and runs), so the three are measured in one run on the same machine.

Writes artifacts/benchmarks/served.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.http as http
from skimage import data

from escnet_client import read_classes_file
from escnet_export.triton_serving.install import with_malloc_hugepages
from escnet_export.triton_serving.server import TritonServer
from escnet_export.triton_serving.stats import composing_seconds, compute_snapshot, python_share

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = ROOT / "parity_tests" / "data" / "vocabulary.txt"
DIRECT = ROOT / "artifacts" / "benchmarks" / "cpu_reference_vs_ort.json"
OUT = ROOT / "artifacts" / "benchmarks" / "served.json"
VARIANTS = {"escnet": "escnet_vitb16_384", "catseg": "catseg_vitb16_384"}


def request(client: http.InferenceServerClient, ensemble: str, image: np.ndarray, names: list[str]) -> float:
    inputs = [
        http.InferInput("IMAGE", list(image.shape), "UINT8"),
        http.InferInput("CLASS_NAMES", [len(names)], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(np.array([n.encode() for n in names], dtype=object))
    start = time.perf_counter()
    client.infer(ensemble, inputs, outputs=[http.InferRequestedOutput("LABELS")])
    return time.perf_counter() - start


def print_targets(rows: list[dict]) -> None:
    """The deployment's targets against what was measured (printed, never asserted)."""
    print("targets (concurrency 1):")
    for row in rows:
        ort, torch_ = row.get("ort_median_without_text_s"), row.get("torch_median_without_text_s")
        label = f"  {row['ensemble']:7s} T={row['classes']:4d}"
        checks = []
        if ort:
            ratio = row["served_median_s"] / ort
            checks.append(
                f"served within 5% of the ORT chain: {ratio:.2f} {'met' if ratio <= 1.05 else 'MISSED'}"
            )
        if ort and torch_:
            speed = torch_ / ort
            checks.append(f"ORT >= 1.3x PyTorch: {speed:.2f}x {'met' if speed >= 1.3 else 'MISSED'}")
        if row["classes"] >= 150:
            share = row["python_steps_share"]
            checks.append(f"Python steps < 5%: {share:.1%} {'met' if share < 0.05 else 'MISSED'}")
        runs = row["text_encoder_runs_repeated_vocabulary"]
        checks.append(
            f"text encoder runs on a repeated vocabulary: {runs} {'met' if runs == 0 else 'MISSED'}"
        )
        print(label + " | " + " | ".join(checks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensembles", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--classes", nargs="+", type=int, default=[20, 150])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--direct", action="store_true", help="run scripts/benchmark.py first")
    args = parser.parse_args()
    if args.direct:
        variants = [VARIANTS[e] for e in args.ensembles]
        command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--variants", *variants]
        command += ["--classes", *map(str, args.classes), "--runs", str(args.runs), "--out", str(DIRECT)]
        subprocess.run(command, check=True)
    os.environ.setdefault("ESCNET_ORT_THREADS", "2")
    names_all = read_classes_file(VOCABULARY)
    image = data.astronaut()
    direct = json.loads(DIRECT.read_text())["results"] if DIRECT.is_file() else []
    rows = []
    with TritonServer(model_repository=args.repository) as server:
        startup_s = server.startup_s or float("nan")  # start to ready: every model loaded
        print(f"tritonserver ready in {startup_s:.1f} s", flush=True)
        client = http.InferenceServerClient(server.http_url, connection_timeout=1800, network_timeout=1800)
        for ensemble in args.ensembles:
            for classes in args.classes:
                names = names_all[:classes]
                # The first request: a cold text cache and, for the first T of an ensemble, graphs
                # that have never run (what a new replica's first client pays).
                first = request(client, ensemble, image, names)
                before = compute_snapshot(client)
                latencies = [request(client, ensemble, image, names) for _ in range(args.runs)]
                after = compute_snapshot(client)
                per_step = composing_seconds(before, after, ensemble, args.runs)
                encoder = f"{ensemble}_clip_text_encoder"
                text_runs = after[encoder]["count"] - before.get(encoder, {"count": 0})["count"]
                # The text cache's worth: the same request with T names it has not seen yet.
                unseen = names_all[classes : 2 * classes]
                uncached = request(client, ensemble, image, unseen) if len(unseen) == classes else None
                row = {
                    "ensemble": ensemble,
                    "classes": classes,
                    "first_request_s": round(first, 3),
                    "first_request_graphs_cold": classes == args.classes[0],
                    "served_median_s": round(statistics.median(latencies), 3),
                    "served_runs_s": [round(x, 3) for x in latencies],
                    "python_steps_share": round(python_share(per_step), 4),
                    "text_encoder_runs_repeated_vocabulary": text_runs,
                    "served_unseen_vocabulary_s": round(uncached, 3) if uncached else None,
                    "per_model_s": {step: round(seconds, 3) for step, seconds in per_step.items()},
                }
                for d in direct:
                    if d["variant"] == VARIANTS[ensemble] and d["classes"] == classes:
                        # warm served requests hit the text cache: compare with text embeddings given
                        row[f"{d['backend']}_median_without_text_s"] = d["median_without_text_s"]
                rows.append(row)
                ort, torch_ = row.get("ort_median_without_text_s"), row.get("torch_median_without_text_s")
                print(
                    f"{ensemble:7s} T={classes:4d} served {row['served_median_s']:7.2f} s"
                    f" | ORT chain {ort or float('nan'):7.2f} s | PyTorch {torch_ or float('nan'):7.2f} s"
                    f" | served/ORT {row['served_median_s'] / ort if ort else float('nan'):.2f}"
                    f" | Python steps {row['python_steps_share']:.1%} of model time"
                    f" | unseen vocabulary (text cache miss) {uncached or float('nan'):.2f} s"
                    f" | first request {first:.2f} s",
                    flush=True,
                )
        client.close()
    print_targets(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "server_start_to_ready_s": round(startup_s, 1),
        "load_average": os.getloadavg(),
        "runs": args.runs,
        "server_glibc_tunables": with_malloc_hugepages(os.environ).get("GLIBC_TUNABLES", ""),
        "rows": rows,
    }
    OUT.write_text(json.dumps(record, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
