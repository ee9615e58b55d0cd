"""CPU latency and peak memory per image: the PyTorch reference against the onnxruntime chain.

    python scripts/benchmark.py [--variants escnet_vitb16_384 catseg_vitb16_384] [--classes 20 150]
                                [--runs 2] [--warmup 1] [--threads 2] [--resume]

One image (skimage's astronaut, 512 x 512 -> one 384 view) and the first T class names of
parity_tests/data/vocabulary.txt. For each variant, T and backend a fresh subprocess loads the model
(PyTorch: ``build_model``; ORT: ``GraphChain.from_onnx`` on the graphs ``run_export`` writes to
artifacts/onnx), runs ``--warmup`` requests, then ``--runs`` timed ones, and reports the median
latency with the text embedding (class names -> embeddings) and without it (embeddings given), its
resident memory after loading and its peak (VmHWM). Weights are the variants' seeded random init
(no checkpoint is available here), identical in both backends, so the two produce the same labels;
the agreement is reported as a check that both ran the same model.

Writes artifacts/benchmarks/cpu_reference_vs_ort.json with the machine's description.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from escnet_export.triton_serving.install import with_malloc_hugepages

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = ROOT / "parity_tests" / "data" / "vocabulary.txt"
DEFAULT_ONNX = ROOT / "artifacts" / "onnx"
DEFAULT_OUT = ROOT / "artifacts" / "benchmarks" / "cpu_reference_vs_ort.json"
BACKENDS = ("torch", "ort")
RESULT_PREFIX = "RESULT "
CAP_EXIT_CODE = 75


# -- measurement, in a fresh process ---------------------------------------------------------------


def proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def class_names(count: int) -> list[str]:
    from escnet_client import read_classes_file

    names = read_classes_file(VOCABULARY)
    if count > len(names):
        raise SystemExit(f"{VOCABULARY} has {len(names)} class names, {count} asked for")
    return names[:count]


def watch_memory(path: Path, cap_mib: float, interval: float = 0.2) -> None:
    """Keep the peak resident memory seen so far in ``path`` (what a killed worker leaves behind) and
    end this process when its resident memory passes ``cap_mib``: on a shared machine the kernel's
    OOM killer might otherwise pick someone else's process."""

    def loop() -> None:
        while True:
            path.write_text(f"{proc_status_mib('VmHWM'):.1f}")
            if proc_status_mib("VmRSS") > cap_mib:
                print(f"resident memory passed the cap of {cap_mib:.0f} MiB", file=sys.stderr, flush=True)
                os._exit(CAP_EXIT_CODE)
            time.sleep(interval)

    threading.Thread(target=loop, daemon=True).start()


def worker(args: argparse.Namespace) -> None:
    """Load one backend, time it, print one RESULT line of JSON."""
    import numpy as np
    import torch
    from skimage import data

    from escnet.image_views import segment_probabilities
    from escnet.registry import MODEL_CONFIGS, build_model
    from escnet.segmenter import validate_image
    from escnet_export.runtime import steps
    from escnet_export.runtime.chain import GraphChain

    watch_memory(Path(args.labels_out + ".peak"), args.max_rss_gib * 1024)
    with contextlib.suppress(OSError):  # on a shared machine, be the OOM killer's first choice
        Path("/proc/self/oom_score_adj").write_text("1000")
    torch.set_num_threads(args.threads)
    names = class_names(args.worker_classes)
    image = data.astronaut()
    config = MODEL_CONFIGS[args.worker_variant]

    start = time.perf_counter()
    if args.worker_backend == "torch":
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the random-weights warning: known, and printed below
            model = build_model(args.worker_variant)

        def embed() -> object:
            with torch.no_grad():
                return model.embed_class_names(names)

        def infer(text: object) -> np.ndarray:
            with torch.no_grad():
                probabilities = segment_probabilities(model, validate_image(image), text)  # type: ignore[arg-type]
            return probabilities.argmax(dim=0).to(torch.int32).numpy()

    else:
        chain = GraphChain.from_onnx(config, Path(args.onnx_dir) / args.worker_variant, threads=args.threads)

        def embed() -> object:
            return chain.embed_class_names(names)

        def infer(text: object) -> np.ndarray:
            views = steps.preprocess(image, config)
            logits = chain.logits(views["IMAGES"], text)  # type: ignore[arg-type]
            return steps.postprocess(logits, views["VIEW_PLAN"])["LABELS"]

    load_seconds = time.perf_counter() - start
    rss_loaded = proc_status_mib("VmRSS")

    with_text, without_text, text_only = [], [], []
    labels = None
    for index in range(args.warmup + args.runs):
        t0 = time.perf_counter()
        text = embed()
        t1 = time.perf_counter()
        labels = infer(text)
        t2 = time.perf_counter()
        if index >= args.warmup:
            with_text.append(t2 - t0)
            without_text.append(t2 - t1)
            text_only.append(t1 - t0)
    assert labels is not None
    np.save(args.labels_out, labels)
    result = {
        "load_s": round(load_seconds, 2),
        "median_with_text_s": round(statistics.median(with_text), 3),
        "median_without_text_s": round(statistics.median(without_text), 3),
        "median_text_only_s": round(statistics.median(text_only), 3),
        "runs_with_text_s": [round(x, 3) for x in with_text],
        "runs_without_text_s": [round(x, 3) for x in without_text],
        "rss_after_load_mib": round(rss_loaded, 1),
        "peak_rss_mib": round(proc_status_mib("VmHWM"), 1),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# -- orchestration ----------------------------------------------------------------------------------


def machine_info(threads: int) -> dict[str, object]:
    import onnxruntime
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split(":", 1)[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_total": memory,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": threads,
        "load_average_at_start": os.getloadavg(),
    }


def export_graphs(variant: str, onnx_dir: Path) -> None:
    """run_export in its own process (it caches by hash: nothing is redone when up to date)."""
    code = (
        "import sys, json; from pathlib import Path; "
        "from escnet_export.onnx_graphs.export import run_export; "
        "r = run_export(sys.argv[1], Path(sys.argv[2]), progress=False); "
        "print(json.dumps({'reused': r.reused, 'seconds': r.seconds}))"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, variant, str(onnx_dir)], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        raise SystemExit(f"export of {variant} failed:\n{done.stderr[-3000:]}")
    state = json.loads(done.stdout.strip().splitlines()[-1])
    what = "up to date" if state["reused"] else f"exported in {time.perf_counter() - start:.0f} s"
    print(f"  graphs of {variant}: {what}", flush=True)


def measure(args: argparse.Namespace, backend: str, variant: str, classes: int, labels: Path) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker-backend",
        backend,
        "--worker-variant",
        variant,
        "--worker-classes",
        str(classes),
        "--labels-out",
        str(labels),
        "--runs",
        str(args.runs),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--onnx-dir",
        str(args.onnx_dir),
        "--max-rss-gib",
        str(args.max_rss_gib),
    ]
    # The same allocator setting as the server's steps, so the side-by-side compares like with like.
    env = with_malloc_hugepages({**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1][len(RESULT_PREFIX) :])
    peak_file = Path(str(labels) + ".peak")
    peak = float(peak_file.read_text()) if peak_file.is_file() else None
    if done.returncode < 0:
        reason = f"killed by signal {-done.returncode}" + (
            " (SIGKILL: likely the OOM killer)" if done.returncode == -9 else ""
        )
    else:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        reason = f"exit {done.returncode}: {tail[0][:300]}"
    print(f"    FAILED: {reason}; peak RSS seen {peak} MiB", flush=True)
    return {"failed": reason, "peak_rss_mib_before_failure": peak}


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'variant':19s} {'T':>4s} {'backend':7s} {'with text':>10s} {'no text':>9s} {'text':>7s} "
        f"{'load':>6s} {'RSS loaded':>11s} {'peak RSS':>9s} {'labels=':>8s}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if "failed" in row:
            peak = row["peak_rss_mib_before_failure"]
            print(
                f"{row['variant']:19s} {row['classes']:4d} {row['backend']:7s} FAILED: {row['failed']}; "
                f"peak RSS seen {peak} MiB"
            )
            continue
        agreement = row.get("label_agreement_with_torch")
        print(
            f"{row['variant']:19s} {row['classes']:4d} {row['backend']:7s} "
            f"{row['median_with_text_s']:9.2f}s {row['median_without_text_s']:8.2f}s "
            f"{row['median_text_only_s']:6.2f}s {row['load_s']:5.1f}s "
            f"{row['rss_after_load_mib']:7.0f} MiB {row['peak_rss_mib']:5.0f} MiB "
            f"{'' if agreement is None else f'{100 * agreement:7.2f}%':>8s}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["escnet_vitb16_384", "catseg_vitb16_384"])
    parser.add_argument("--classes", nargs="+", type=int, default=[20, 150])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--runs", type=int, default=2, help="timed requests per measurement (median); 2 keeps a run ~15 min"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests first")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (torch and onnxruntime)")
    parser.add_argument("--onnx-dir", type=Path, default=DEFAULT_ONNX)
    parser.add_argument(
        "--max-rss-gib", type=float, default=9.0, help="end a measurement whose resident memory passes this"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--resume", action="store_true", help="keep the successful rows of --out, measure the rest"
    )
    # Internal: one measurement in this (fresh) process.
    parser.add_argument("--worker-backend", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-variant", help=argparse.SUPPRESS)
    parser.add_argument("--worker-classes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--labels-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_backend:
        worker(args)
        return

    from escnet.registry import MODEL_CONFIGS

    unknown = [v for v in args.variants if v not in MODEL_CONFIGS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(MODEL_CONFIGS)}")
    info = machine_info(args.threads)
    print(json.dumps(info, indent=2), flush=True)
    started = time.perf_counter()
    if "ort" in args.backends:
        for variant in args.variants:
            export_graphs(variant, args.onnx_dir)
    previous = previous_rows(args) if args.resume else {}
    labels_dir = args.out.parent / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for variant in args.variants:
        for classes in args.classes:
            labels: dict[str, Path] = {}
            for backend in args.backends:
                labels[backend] = labels_dir / f"{variant}_{classes}_{backend}.npy"
                key = (variant, classes, backend)
                if key in previous:
                    print(f"  kept from {args.out.name}: {backend} {variant} T={classes}", flush=True)
                    rows.append(previous[key])
                    continue
                labels[backend].unlink(missing_ok=True)
                print(f"  measuring {backend} {variant} T={classes} ...", flush=True)
                load_before = os.getloadavg()[0]
                result = measure(args, backend, variant, classes, labels[backend])
                load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                row = {"variant": variant, "classes": classes, "backend": backend, **result}
                rows.append({**row, "load_average_1min_before_after": load})
                write_report(args, info, rows, started)  # kept up to date, in case of an abort
            if len(labels) == 2 and all(label.is_file() for label in labels.values()):
                import numpy as np

                same = float((np.load(labels["torch"]) == np.load(labels["ort"])).mean())
                rows[-1]["label_agreement_with_torch"] = round(same, 5)
    info["load_average_at_end"] = os.getloadavg()
    write_report(args, info, rows, started)
    print()
    print_table(rows)
    print(f"\nwritten {args.out} ({info['total_seconds']} s in all)")


def previous_rows(args: argparse.Namespace) -> dict[tuple[str, int, str], dict]:
    """Successful rows of an earlier report with the same settings (for --resume)."""
    if not args.out.is_file():
        return {}
    report = json.loads(args.out.read_text())
    if (report.get("runs"), report.get("warmup"), report["machine"].get("threads")) != (
        args.runs,
        args.warmup,
        args.threads,
    ):
        return {}
    return {
        (row["variant"], row["classes"], row["backend"]): row
        for row in report["results"]
        if "failed" not in row
    }


def write_report(args: argparse.Namespace, info: dict, rows: list[dict], started: float) -> None:
    info["total_seconds"] = round(time.perf_counter() - started, 1)
    report = {
        "machine": info,
        "image": "skimage.data.astronaut() 512x512 -> one 384x384 view",
        "class_names": f"first T lines of {VOCABULARY.relative_to(ROOT)}",
        "weights": "seeded random init (build_model seed 0), the same in both backends",
        "runs": args.runs,
        "warmup": args.warmup,
        "latency": "median seconds per image; 'with text' includes class names -> text embeddings",
        "memory": "MiB: VmRSS after loading, VmHWM (peak) at the end, of a fresh process per row",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
