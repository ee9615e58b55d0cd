"""The served Python steps (numpy, escnet_export.runtime.steps) against the PyTorch reference they stand in
for, in-process (no server).

    python scripts/benchmark_steps.py [--runs 3] [--protocol catseg_eval] [--torch-threads N]

Rows (printed, nothing asserted; medians of --runs calls after one untimed call):
- pseudo points: escnet.pseudo_prompts.generate_pseudo_prompts (torch) on SCORE [5, T, 24, 24]
  against the served numpy step (the same bits, checked), for T = 20 and 150;
- preprocess: the shortest-edge resize (PIL, shared) and the views, escnet.image_views.make_views
  (torch) against escnet_export.runtime.numpy_views.make_views, for a 480x640 and a 1280x1280 image;
- postprocess: merge_views and the labels (the running maximum over the class planes, as export/
  steps.py computed it in torch, against numpy_views.class_labels) for T = 20 and 150 classes, on
  a 480x640 and a 1024x768 (H x W) image.
Then the memory of one postprocess at T = 150 on 1024x768: numpy's peak traced by tracemalloc
(every numpy buffer is traced), and for both the rise of the peak resident set (VmHWM - VmRSS
before the call) in a fresh subprocess, next to the size of the result (SCORES + LABELS).
The inputs are random; the times depend on shapes, not values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import torch

from escnet import image_views
from escnet.config import PROTOCOLS
from escnet.pseudo_prompts import generate_pseudo_prompts
from escnet.registry import MODEL_CONFIGS
from escnet.view_plan import plan_views, resize_shortest_edge
from escnet_export.runtime import numpy_views, steps

MODEL = "catseg_vitb16_384"
PREPROCESS_SIZES = [(480, 640), (1280, 1280)]
POSTPROCESS_CASES = [(20, 480, 640), (150, 480, 640), (20, 1024, 768), (150, 1024, 768)]
MEMORY_CASE = (150, 1024, 768)

# Run in a fresh interpreter: peak RSS rise of one postprocess, torch or numpy.
MEMORY_PROBE = """
import sys
import numpy as np
from escnet.config import PROTOCOLS
from escnet.view_plan import plan_views

def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

engine, protocol, classes, height, width = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
plan = plan_views(height, width, PROTOCOLS[protocol])
logits = np.random.default_rng(0).standard_normal((plan.num_views, classes, 96, 96)).astype(np.float32)
if engine == 'torch':
    import torch
    from escnet.image_views import merge_views
    torch.set_num_threads(int(sys.argv[6]))
    def class_labels(probabilities):
        best = probabilities[0].clone()
        labels = torch.zeros(best.shape, dtype=torch.int32)
        for index in range(1, probabilities.shape[0]):
            labels.masked_fill_(probabilities[index] > best, index)
            torch.maximum(best, probabilities[index], out=best)
        return labels
    def run():
        probabilities = merge_views(torch.from_numpy(logits), plan)
        return class_labels(probabilities).numpy(), probabilities.numpy()
else:
    from escnet_export.runtime.numpy_views import class_labels, merge_views
    def run():
        probabilities = merge_views(logits, plan)
        return class_labels(probabilities), probabilities
before = status('VmRSS')
labels, scores = run()
print(status('VmHWM') - before, labels.nbytes + scores.nbytes)
"""


def torch_class_labels(probabilities: torch.Tensor) -> torch.Tensor:
    """[T, H, W] -> [H, W] int32: the torch running maximum export/runtime/steps.py used before numpy."""
    best = probabilities[0].clone()
    labels = torch.zeros(best.shape, dtype=torch.int32)
    for index in range(1, probabilities.shape[0]):
        plane = probabilities[index]
        labels.masked_fill_(plane > best, index)
        torch.maximum(best, plane, out=best)
    return labels


def median_seconds(work: Callable[[], object], runs: int) -> float:
    work()  # untimed first call
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def preprocess_row(height: int, width: int, protocol: str, runs: int) -> str:
    config = MODEL_CONFIGS[MODEL].with_protocol(PROTOCOLS[protocol])
    pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)

    def with_torch() -> np.ndarray:
        plan = plan_views(height, width, config.protocol)
        resized = torch.from_numpy(resize_shortest_edge(pixels, config.protocol))
        return image_views.make_views(resized, plan, config).numpy()

    def with_numpy() -> np.ndarray:
        plan = plan_views(height, width, config.protocol)
        return numpy_views.make_views(resize_shortest_edge(pixels, config.protocol), plan, config)

    error = float(np.abs(with_torch() - with_numpy()).max())
    torch_s, numpy_s = median_seconds(with_torch, runs), median_seconds(with_numpy, runs)
    return row(f"preprocess {height}x{width}", torch_s, numpy_s, error)


def postprocess_row(classes: int, height: int, width: int, protocol: str, runs: int) -> str:
    plan = plan_views(height, width, PROTOCOLS[protocol])
    shape = (plan.num_views, classes, 96, 96)
    logits = np.random.default_rng(classes).standard_normal(shape).astype(np.float32)

    def with_torch() -> tuple[np.ndarray, np.ndarray]:
        probabilities = image_views.merge_views(torch.from_numpy(logits), plan)
        return torch_class_labels(probabilities).numpy(), probabilities.numpy()

    def with_numpy() -> tuple[np.ndarray, np.ndarray]:
        probabilities = numpy_views.merge_views(logits, plan)
        return numpy_views.class_labels(probabilities), probabilities

    error = float(np.abs(with_torch()[1] - with_numpy()[1]).max())
    torch_s, numpy_s = median_seconds(with_torch, runs), median_seconds(with_numpy, runs)
    return row(f"postprocess T={classes} {height}x{width}", torch_s, numpy_s, error)


def pseudo_points_row(classes: int, runs: int, views: int = 5) -> str:
    """SCORE [5, T, 24, 24]: the torch reference against the numpy step, which must match it bit for bit."""
    config = MODEL_CONFIGS["escnet_vitb16_384"]
    grid = config.clip.grid
    score = np.random.default_rng(classes).standard_normal((views, classes, grid, grid)).astype(np.float32)

    def with_torch() -> np.ndarray:
        maps = torch.from_numpy(score).reshape(views * classes, grid, grid)
        prompts = generate_pseudo_prompts(
            maps, image_size=config.clip.image_size, config=config.pseudo_prompts
        )
        return prompts.points.reshape(views, classes, -1, 2).float().numpy()

    def with_numpy() -> np.ndarray:
        return steps.pseudo_points(score, config)["POINTS"]

    error = float(np.abs(with_torch() - with_numpy()).max())
    torch_s, numpy_s = median_seconds(with_torch, runs), median_seconds(with_numpy, runs)
    return row(f"pseudo points B=5 T={classes}", torch_s, numpy_s, error)


def row(name: str, torch_s: float, numpy_s: float, error: float) -> str:
    ratio = numpy_s / torch_s
    return f"{name:32s} {torch_s * 1e3:9.1f} {numpy_s * 1e3:9.1f} {ratio:7.2f}x {error:10.3g}"


def traced_peak(classes: int, height: int, width: int, protocol: str) -> tuple[int, int]:
    """numpy postprocess: (tracemalloc peak, bytes of LABELS + SCORES)."""
    plan = plan_views(height, width, PROTOCOLS[protocol])
    shape = (plan.num_views, classes, 96, 96)
    logits = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    tracemalloc.start()
    probabilities = numpy_views.merge_views(logits, plan)
    labels = numpy_views.class_labels(probabilities)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, probabilities.nbytes + labels.nbytes


def rss_rise(
    engine: str, classes: int, height: int, width: int, protocol: str, threads: int
) -> tuple[int, int]:
    args = [engine, protocol, str(classes), str(height), str(width), str(threads)]
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {engine} memory probe failed:\n{done.stderr}")
    rise, result = (int(v) for v in done.stdout.split())
    return rise, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--protocol", default="catseg_eval", choices=sorted(PROTOCOLS))
    parser.add_argument("--torch-threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    print(f"protocol {args.protocol}, torch threads {torch.get_num_threads()}, numpy single-threaded")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{'step':32s} {'torch ms':>9s} {'numpy ms':>9s} {'ratio':>8s} {'max |diff|':>10s}")
    for classes in (20, 150):
        print(pseudo_points_row(classes, args.runs), flush=True)
    for height, width in PREPROCESS_SIZES:
        print(preprocess_row(height, width, args.protocol, args.runs), flush=True)
    for classes, height, width in POSTPROCESS_CASES:
        print(postprocess_row(classes, height, width, args.protocol, args.runs), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end of the timings")
    classes, height, width = MEMORY_CASE
    mib = 1 << 20
    peak, result = traced_peak(classes, height, width, args.protocol)
    print(
        f"\nmemory, postprocess T={classes} {height}x{width}: result (SCORES + LABELS) {result / mib:.0f} MiB"
        f"\n  numpy tracemalloc peak {peak / mib:.0f} MiB ({(peak - result) / mib:.0f} MiB beyond the result)"
    )
    for engine in ("numpy", "torch"):
        rise, _ = rss_rise(engine, classes, height, width, args.protocol, args.torch_threads)
        beyond = (rise - result) / mib
        print(f"  {engine} peak RSS rise {rise / mib:.0f} MiB ({beyond:.0f} MiB beyond the result)")


if __name__ == "__main__":
    main()
