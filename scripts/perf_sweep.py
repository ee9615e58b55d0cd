"""Concurrency sweep with perf_analyzer against a running server; run it through scripts/perf.sh.

    scripts/perf.sh [--url 127.0.0.1:8001] [--ensembles escnet catseg] [--classes 20]
                    [--concurrency 1 2 4] [--image astronaut] [--requests 3] [--out artifacts/perf]

For each ensemble and concurrency, perf_analyzer (gRPC, count windows of --requests requests,
real inputs from --input-data JSON: one skimage photo and the first T names of
parity_tests/data/vocabulary.txt) measures throughput and p50/p90/p99 latency. Triton's statistics
API, read before and after each run, gives each composing model's compute seconds per request
(text_embedder's includes its wait for the text encoder, which a warm-up request before each
ensemble's sweep fills the cache for: the sweep measures a vocabulary in use).

Writes, under --out: perf_input_<T>.json (the input data), perf.csv (one row per ensemble and
concurrency, composing models as columns), perf.png (throughput and p50 latency against
concurrency) and perf_machine.json (machine, versions, server metadata, runtime of each model).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from skimage import data

from escnet_client import read_classes_file
from escnet_export.triton_stats import composing_seconds, compute_snapshot, python_share

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = ROOT / "parity_tests" / "data" / "vocabulary.txt"
PERCENTILES = ("p50", "p90", "p99")


def write_input_data(path: Path, image: np.ndarray, names: list[str]) -> None:
    """perf_analyzer's --input-data JSON: one request of IMAGE [H, W, 3] uint8 and CLASS_NAMES [T]."""
    request = {
        "IMAGE": {"content": image.reshape(-1).tolist(), "shape": list(image.shape)},
        "CLASS_NAMES": {"content": names, "shape": [len(names)]},
    }
    path.write_text(json.dumps({"data": [request]}))


def run_perf_analyzer(
    binary: str,
    url: str,
    ensemble: str,
    concurrency: int,
    input_path: Path,
    image_shape: tuple,
    classes: int,
    requests: int,
    csv_path: Path,
) -> dict[str, float]:
    """One perf_analyzer run at one concurrency -> throughput (infer/s) and latencies (ms)."""
    command = [
        binary, "-m", ensemble, "-u", url, "-i", "grpc",
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--input-data", str(input_path),
        "--shape", f"IMAGE:{','.join(map(str, image_shape))}", "--shape", f"CLASS_NAMES:{classes}",
        "--measurement-mode", "count_windows", "--measurement-request-count", str(requests * concurrency),
        "--stability-percentage", "25", "--max-trials", "4",
        "--percentile", "50", "-f", str(csv_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"perf_analyzer failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    with csv_path.open() as handle:
        row = next(csv.DictReader(handle))
    return {
        "throughput_infer_per_s": float(row["Inferences/Second"]),
        **{f"{p}_latency_ms": float(row[f"{p} latency"]) / 1000 for p in PERCENTILES},
    }


def warm_up(client: Any, ensemble: str, image: np.ndarray, names: list[str]) -> None:
    """One request outside the measurement: the text embedder caches the vocabulary, as in use."""
    inputs = [
        grpcclient.InferInput("IMAGE", list(image.shape), "UINT8"),
        grpcclient.InferInput("CLASS_NAMES", [len(names)], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(np.array([n.encode() for n in names], dtype=np.object_))
    client.infer(ensemble, inputs, outputs=[grpcclient.InferRequestedOutput("LABELS")], client_timeout=1800)


def machine_record(client: grpcclient.InferenceServerClient, ensembles: list[str], binary: str) -> dict:
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
        "onnxruntime_threads": os.environ.get("ESCNET_ORT_THREADS", "(server default)"),
        "model_runtimes": runtimes,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({(r["ensemble"], r["classes"]) for r in rows}):
        mine = [r for r in rows if (r["ensemble"], r["classes"]) == key]
        x = [r["concurrency"] for r in mine]
        label = f"{key[0]} T={key[1]}"
        left.plot(x, [r["throughput_infer_per_s"] for r in mine], marker="o", label=label)
        right.plot(x, [r["p50_latency_ms"] / 1000 for r in mine], marker="o", label=f"{label} p50")
        right.plot(
            x, [r["p99_latency_ms"] / 1000 for r in mine], marker="x", linestyle="--", label=f"{label} p99"
        )
    left.set(xlabel="concurrency", ylabel="images / s", title="throughput")
    right.set(xlabel="concurrency", ylabel="latency (s)", title="latency")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address")
    parser.add_argument("--ensembles", nargs="+", default=["escnet", "catseg"])
    parser.add_argument("--classes", nargs="+", type=int, default=[20])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--image", default="astronaut", help="a skimage.data photo")
    parser.add_argument("--requests", type=int, default=3, help="requests per window and concurrent client")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "perf")
    args = parser.parse_args()

    binary = shutil.which("perf_analyzer")
    if binary is None:
        raise SystemExit("perf_analyzer is not on PATH: run this through scripts/perf.sh")
    args.out.mkdir(parents=True, exist_ok=True)
    image = getattr(data, args.image)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    vocabulary = read_classes_file(VOCABULARY)
    client = grpcclient.InferenceServerClient(args.url)
    if not client.is_server_ready():
        raise SystemExit(f"no ready server at {args.url}: start one with scripts/serve.sh --wait")

    rows = []
    for classes in args.classes:
        input_path = args.out / f"perf_input_{classes}.json"
        write_input_data(input_path, image, vocabulary[:classes])
        for ensemble in args.ensembles:
            warm_up(client, ensemble, image, vocabulary[:classes])
            for concurrency in args.concurrency:
                before = compute_snapshot(client)
                measured = run_perf_analyzer(
                    binary, args.url, ensemble, concurrency, input_path, image.shape, classes,
                    args.requests, args.out / "last_run.csv",
                )  # fmt: skip
                after = compute_snapshot(client)
                served = after[ensemble]["count"] - before.get(ensemble, {"count": 0})["count"]
                per_step = composing_seconds(before, after, ensemble, served)
                row = {
                    "ensemble": ensemble,
                    "classes": classes,
                    "image": f"{image.shape[1]}x{image.shape[0]}",
                    "concurrency": concurrency,
                    **measured,
                    "requests_served": served,
                    "python_steps_share": round(python_share(per_step), 4),
                    **{f"{step}_s": round(seconds, 4) for step, seconds in per_step.items()},
                }
                rows.append(row)
                print(
                    f"{ensemble:7s} T={classes:4d} c={concurrency:2d}: "
                    f"{row['throughput_infer_per_s']:.3f} img/s, "
                    f"p50 {row['p50_latency_ms'] / 1000:.2f} s, p90 {row['p90_latency_ms'] / 1000:.2f} s, "
                    f"p99 {row['p99_latency_ms'] / 1000:.2f} s, Python steps {row['python_steps_share']:.1%}",
                    flush=True,
                )
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (args.out / "perf.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "perf.png")
    (args.out / "perf_machine.json").write_text(
        json.dumps(machine_record(client, args.ensembles, binary), indent=2)
    )
    (args.out / "last_run.csv").unlink(missing_ok=True)
    client.close()
    print(f"wrote {args.out / 'perf.csv'}, {args.out / 'perf.png'}, {args.out / 'perf_machine.json'}")


if __name__ == "__main__":
    main()
