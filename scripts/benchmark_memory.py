"""Memory of the served ensembles: the idle server, each step's peak per request, and what stays.

    python scripts/benchmark_memory.py                       # default grid, both ensembles
    python scripts/benchmark_memory.py --classes 20 150 300 --sizes 480x640 --ensembles catseg
    python scripts/benchmark_memory.py --env MALLOC_ARENA_MAX=2   # a setting of the server's allocator

Starts a tritonserver on a repository built into a temporary folder from the exported graphs
(artifacts/onnx, or --onnx-dir), with the default protocol. Figures, all read from /proc:

- idle: PSS of all the server's processes (tritonserver + one process per Python step) after one
  small request to each ensemble; PSS splits shared pages among the processes that map them, so
  the sum is what the server holds;
- per request: every process's peak RSS (VmHWM, reset before the request) minus its RSS before it,
  i.e. the memory each step needed for that request; the largest is the request's peak step;
- after: total PSS once the request is answered (and again after --settle seconds).

Writes artifacts/memory/memory.json and prints a table. These are the measurements the request
memory model (escnet_export.runtime.memory_model) is calibrated from.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image
from skimage import data as skimage_data

from escnet_client.wire import Request, build_tensors
from escnet_export.artifacts import DEFAULT_ONNX_DIR
from escnet_export.triton_serving.repository import build_repository
from escnet_export.triton_serving.server import TritonServer
from escnet_export.triton_serving.server_processes import (
    peak_rss_bytes,
    pss_bytes,
    reset_peak_rss,
    rss_bytes,
    server_processes,
)

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = [
    line.strip()
    for line in (ROOT / "parity_tests" / "data" / "vocabulary.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
GIB = 2**30


def class_names(count: int) -> list[str]:
    """``count`` distinct names: the real vocabulary first, then numbered ones."""
    names = list(dict.fromkeys(VOCABULARY))[:count]
    return names + [f"object number {i}" for i in range(count - len(names))]


def photo(height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(skimage_data.astronaut()).resize((width, height)))


def infer(
    client: httpclient.InferenceServerClient, ensemble: str, image: np.ndarray, names: list[str]
) -> float:
    request = Request(image=image, class_names=names, scores=False, model=ensemble)
    inputs, outputs = build_tensors(httpclient, request, None)  # the SDK's tensors, unchecked
    start = time.perf_counter()
    client.infer(ensemble, inputs, outputs=outputs)
    return time.perf_counter() - start


def total_pss(server: TritonServer) -> tuple[int, dict[str, int]]:
    per = {p.label: pss_bytes(p.pid) for p in server_processes(server.pid)}
    return sum(per.values()), per


def measure_request(server: TritonServer, client, ensemble: str, classes: int, size: tuple[int, int]) -> dict:
    processes = server_processes(server.pid)
    before = {p.label: rss_bytes(p.pid) for p in processes}
    for p in processes:
        reset_peak_rss(p.pid)
    seconds = infer(client, ensemble, photo(*size), class_names(classes))
    steps = {p.label: max(0, peak_rss_bytes(p.pid) - before[p.label]) for p in processes if p.label in before}
    mine = {k: v for k, v in steps.items() if k == "tritonserver" or k.startswith(f"{ensemble}_")}
    peak_step = max(mine, key=mine.get)
    return {
        "ensemble": ensemble,
        "classes": classes,
        "image": f"{size[0]}x{size[1]}",
        "seconds": round(seconds, 2),
        "peak_step": peak_step,
        "peak_step_gib": round(mine[peak_step] / GIB, 3),
        "steps_gib": {k: round(v / GIB, 3) for k, v in sorted(mine.items())},
        "pss_after_gib": round(total_pss(server)[0] / GIB, 3),
    }


def write_report(
    out: Path, env: dict, views_per_run: int, idle: int, idle_per: dict, rows: list, settled: int | None
) -> None:
    """artifacts/memory/memory.json, rewritten after every request (a long run keeps what it measured)."""
    report = {
        "environment": env,
        "views_per_run": views_per_run,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "idle_pss_gib": round(idle / GIB, 3),
        "idle_per_process_gib": {k: round(v / GIB, 3) for k, v in sorted(idle_per.items())},
        "requests": rows,
        "settled_pss_gib": None if settled is None else round(settled / GIB, 3),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensembles", nargs="*", default=["escnet", "catseg"])
    parser.add_argument("--classes", nargs="*", type=int, default=[20, 150, 300])
    parser.add_argument("--sizes", nargs="*", default=["480x640"], help="HxW of the request images")
    parser.add_argument("--onnx-dir", type=Path, default=ROOT / DEFAULT_ONNX_DIR)
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the server's environment")
    parser.add_argument("--views-per-run", type=int, default=1, help="views per graph run (GraphServing)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the last PSS reading")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "memory" / "memory.json")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    variants = {"escnet": "escnet_vitb16_384", "catseg": "catseg_vitb16_384"}
    with tempfile.TemporaryDirectory(prefix="memory-repo-") as folder:
        repository = Path(folder)
        build_repository(
            repository,
            onnx_dir=args.onnx_dir,
            runtime="onnxruntime",
            variants={e: variants[e] for e in args.ensembles},
        )
        with TritonServer(repository, env=env, exit_timeout_s=5) as server:
            client = httpclient.InferenceServerClient(server.http_url, network_timeout=3600)
            for ensemble in args.ensembles:
                infer(client, ensemble, photo(480, 640), class_names(2))
            idle, idle_per = total_pss(server)
            print(
                f"idle (after one small request each): {idle / GIB:.2f} GiB PSS in {len(idle_per)} processes"
            )
            for label, value in sorted(idle_per.items(), key=lambda kv: -kv[1]):
                print(f"  {label:34s} {value / GIB:6.3f} GiB")
            rows = []
            for ensemble in args.ensembles:
                for size in sizes:
                    for classes in args.classes:
                        row = measure_request(server, client, ensemble, classes, size)
                        rows.append(row)
                        write_report(args.out, env, args.views_per_run, idle, idle_per, rows, None)
                        print(
                            f"{ensemble} T={classes} {row['image']}: {row['seconds']} s, peak step "
                            f"{row['peak_step']} +{row['peak_step_gib']} GiB, "
                            f"PSS after {row['pss_after_gib']} GiB"
                        )
            time.sleep(args.settle)
            settled, settled_per = total_pss(server)
            grown = sorted(((settled_per.get(k, 0) - v, k) for k, v in idle_per.items()), reverse=True)
            print("grown since idle: " + ", ".join(f"{k} +{d / GIB:.2f}" for d, k in grown[:6]))
            print(
                f"after {args.settle:.0f} s: {settled / GIB:.2f} GiB PSS "
                f"({100 * (settled / idle - 1):+.1f}% of idle)"
            )
            client.close()
    write_report(args.out, env, args.views_per_run, idle, idle_per, rows, settled)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
