"""Served latency against the number of classes and against the image size, as a table and a plot.

    python scripts/benchmark_scaling.py [--ensembles escnet catseg] [--classes 1 20 150 300 847]
                                        [--sizes 384 640 1024 1920] [--size-classes 20]

Starts one tritonserver on model_repository/ (as scripts/benchmark_served.py does) and times one
request per point, after filling the text cache for that vocabulary through the ensemble's
text_embedder model alone (so the text encoder is outside every figure, as with a vocabulary in
use). Classes: skimage's astronaut (512 x 512, one 384 view) with the first T names of
parity_tests/data/vocabulary.txt; past its 300 names, distinct made-up names ("class 301", ...),
which cost the same to segment. Sizes: the astronaut resized to S x S with T = --size-classes;
from 640 up the image goes through the sliding window (4 crops + 1 global view), and the
postprocess writes S x S labels.

Writes artifacts/benchmarks/scaling.json and scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import tritonclient.http as http
from benchmark_served import request as segment_seconds  # this folder: scripts/
from PIL import Image
from skimage import data

from escnet_client import read_classes_file
from escnet_export.triton_serving.server import TritonServer

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = ROOT / "parity_tests" / "data" / "vocabulary.txt"
OUT = ROOT / "artifacts" / "benchmarks" / "scaling.json"


def class_names(count: int) -> list[str]:
    names = read_classes_file(VOCABULARY)[:count]
    return names + [f"class {k}" for k in range(len(names) + 1, count + 1)]


def names_input(names: list[str]) -> http.InferInput:
    tensor = http.InferInput("CLASS_NAMES", [len(names)], "BYTES")
    tensor.set_data_from_numpy(np.array([n.encode() for n in names], dtype=np.object_))
    return tensor


def fill_text_cache(client: http.InferenceServerClient, ensemble: str, names: list[str]) -> None:
    client.infer(f"{ensemble}_text_embedder", [names_input(names)])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for ensemble in sorted({r["ensemble"] for r in rows}):
        by_classes = [r for r in rows if r["ensemble"] == ensemble and r["sweep"] == "classes"]
        by_size = [r for r in rows if r["ensemble"] == ensemble and r["sweep"] == "size"]
        left.plot(
            [r["classes"] for r in by_classes], [r["seconds"] for r in by_classes], marker="o", label=ensemble
        )
        right.plot([r["side"] for r in by_size], [r["seconds"] for r in by_size], marker="o", label=ensemble)
    left.set(xlabel="classes T (image 512 x 512)", ylabel="latency (s)", title="latency against classes")
    right.set(xlabel="image side S (S x S)", ylabel="latency (s)", title="latency against image size")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensembles", nargs="+", default=["escnet", "catseg"])
    parser.add_argument("--classes", nargs="+", type=int, default=[1, 20, 150, 300, 847])
    parser.add_argument("--sizes", nargs="+", type=int, default=[384, 640, 1024, 1920])
    parser.add_argument("--size-classes", type=int, default=20)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args()
    os.environ.setdefault("ESCNET_ORT_THREADS", "2")
    photo = data.astronaut()
    rows = []
    with TritonServer(model_repository=args.repository) as server:
        client = http.InferenceServerClient(server.http_url, connection_timeout=3600, network_timeout=3600)
        for ensemble in args.ensembles:
            points = [("classes", t, photo) for t in args.classes]
            for side in args.sizes:
                resized = np.asarray(Image.fromarray(photo).resize((side, side), Image.Resampling.BILINEAR))
                points.append(("size", args.size_classes, resized))
            for sweep, classes, image in points:
                names = class_names(classes)
                fill_text_cache(client, ensemble, names)
                seconds = segment_seconds(client, ensemble, image, names)
                row = {"ensemble": ensemble, "sweep": sweep, "classes": classes, "side": image.shape[0]}
                rows.append({**row, "seconds": round(seconds, 3)})
                print(
                    f"{ensemble:7s} {sweep:7s} T={classes:4d} "
                    f"{image.shape[1]}x{image.shape[0]}: {seconds:7.2f} s"
                )
        client.close()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=2))
    plot(rows, OUT.with_suffix(".png"))
    print(f"wrote {OUT} and {OUT.with_suffix('.png')}")


if __name__ == "__main__":
    main()
