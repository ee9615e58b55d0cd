"""Before/after figures for the Python steps' optimisations, in-process (no server).

    python scripts/benchmark_steps.py [--classes 20 150] [--runs 5]

Each row times the straightforward way ("before") and the way the steps do it ("after") on the
same inputs, checks that both give the same answer, and prints the medians:
- pseudo points: one call per class map [1, 1, 24, 24] (a loop over T), against one call over all
  T maps at once (escnet.pseudo_prompts is vectorised over maps; steps.pseudo_points feeds it all);
- labels: torch's ``argmax(dim=0)`` over the [T, 512, 512] probabilities, against the running
  maximum of ``steps.class_labels``;
- pseudo points, numpy: the torch step ``steps.pseudo_points`` on SCORE [5, T, 24, 24], against
  the torch-free port ``numpy_pseudo_points.pseudo_points`` (same bits).
The inputs are random (score maps from a normal distribution, probabilities from the sigmoid of
random logits merged as postprocess does); the time of both steps depends on shapes, not values.

Writes artifacts/benchmarks/steps.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from escnet.config import MODEL_CONFIGS
from escnet.image_views import merge_views, plan_views
from escnet_export import numpy_pseudo_points, steps

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "artifacts" / "benchmarks" / "steps.json"
CONFIG = MODEL_CONFIGS["escnet_vitb16_384"]


def median_seconds(work: Callable[[], object], runs: int) -> tuple[float, object]:
    result = work()  # untimed first call
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def pseudo_points_row(classes: int, runs: int) -> dict:
    """SCORE [1, T, G, G] (G = 24): per-class calls against one call."""
    grid = CONFIG.clip.grid
    score = np.random.default_rng(classes).standard_normal((1, classes, grid, grid)).astype(np.float32)

    def per_class() -> dict[str, np.ndarray]:
        parts = [steps.pseudo_points(score[:, t : t + 1], CONFIG) for t in range(classes)]
        return {name: np.concatenate([p[name] for p in parts], axis=1) for name in parts[0]}

    before, looped = median_seconds(per_class, runs)
    after, vectorised = median_seconds(lambda: steps.pseudo_points(score, CONFIG), runs)
    same = all(np.array_equal(looped[n], vectorised[n]) for n in vectorised)  # type: ignore[index]
    return {"step": "pseudo points", "classes": classes, "before_s": before, "after_s": after, "same": same}


def labels_row(classes: int, runs: int) -> dict:
    """PROBABILITIES [T, 512, 512] (one 384 view merged as postprocess does): argmax vs running max."""
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(1, classes, 4 * CONFIG.clip.grid, 4 * CONFIG.clip.grid, generator=generator)
    plan = plan_views(512, 512, CONFIG)
    probabilities = merge_views(logits, plan)
    before, argmax = median_seconds(lambda: probabilities.argmax(dim=0).to(torch.int32), runs)
    after, running = median_seconds(lambda: steps.class_labels(probabilities), runs)
    same = torch.equal(argmax, running)  # type: ignore[arg-type]
    return {"step": "labels", "classes": classes, "before_s": before, "after_s": after, "same": same}


def numpy_pseudo_points_row(classes: int, runs: int, batch: int = 5) -> dict:
    """SCORE [5, T, G, G] (G = 24): the torch step against the numpy port."""
    grid = CONFIG.clip.grid
    score = np.random.default_rng(classes).standard_normal((batch, classes, grid, grid)).astype(np.float32)
    before, torch_out = median_seconds(lambda: steps.pseudo_points(score, CONFIG), runs)
    after, numpy_out = median_seconds(
        lambda: numpy_pseudo_points.pseudo_points(score, CONFIG.clip.image_size, CONFIG.pseudo_prompts), runs
    )
    same = all(np.array_equal(torch_out[n], numpy_out[n]) for n in torch_out)  # type: ignore[index]
    return {
        "step": "points numpy",
        "classes": classes,
        "batch": batch,
        "before_s": before,
        "after_s": after,
        "same": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", type=int, default=[20, 150])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'step':14s} {'T':>4s} {'before':>9s} {'after':>9s} {'speed-up':>9s}  same answer")
    for classes in args.classes:
        rows_of_t = (
            pseudo_points_row(classes, args.runs),
            labels_row(classes, args.runs),
            numpy_pseudo_points_row(classes, args.runs),
        )
        for row in rows_of_t:
            rows.append(row)
            before_ms, after_ms = row["before_s"] * 1000, row["after_s"] * 1000
            print(
                f"{row['step']:14s} {classes:4d} {before_ms:7.1f}ms {after_ms:7.1f}ms"
                f" {before_ms / after_ms:8.1f}x  {row['same']}",
                flush=True,
            )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    record = {"threads": args.threads, "runs": args.runs, "load_average": os.getloadavg(), "rows": rows}
    OUT.write_text(json.dumps(record, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
