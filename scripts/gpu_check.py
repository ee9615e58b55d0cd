"""The GPU check: everything short of TensorRT, on any machine with PyTorch (and a CUDA GPU).

    python scripts/gpu_check.py [--classes 19 58 150] [--variants escnet_vitb16_384 catseg_vitb16_384]
                                [--runs 10] [--warmup 3] [--protocol catseg_eval] [--out PATH]

Writes one JSON (default artifacts/gpu_check.json) and prints its tables:

1. ``steps``: the Python steps that follow a graph, on torch tensors (escnet_export.runtime.torch_steps,
   the code a GPU repository's steps run after reading their inputs through DLPack), on the GPU
   when there is one and on CPU tensors otherwise; each against the numpy steps of the CPU
   repository on the same inputs (pseudo_points: equal masks and point labels, point error;
   postprocess: equal labels share, score error), and their time per call.
2. ``reference``: the PyTorch reference's throughput in images/s at each T, in FP32 and with FP16
   autocast, on the GPU: one photo (skimage's astronaut, 512 x 512) under the protocol's views,
   text embeddings computed once beforehand (a served cache hit). The paper's anchors, on a GPU it
   does not name: ESC-Net 15.0 / 9.9 / 5.1 and CAT-Seg 15.4 / 10.6 / 5.7 images/s at T = 19 / 58 /
   150. Needs CUDA: without it the section says so and nothing is timed.

The weights are the variants' seeded random init (no checkpoint is needed; throughput does not
depend on the weights' values).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from escnet.config import MODEL_CONFIGS, ModelConfig, resolve_protocol
from escnet.view_plan import plan_views
from escnet_client import read_classes_file
from escnet_export.artifacts import write_report
from escnet_export.contract import DEFAULT_VARIANTS
from escnet_export.runtime import steps, torch_steps

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "artifacts" / "gpu_check.json"
VOCABULARY = ROOT / "parity_tests" / "data" / "vocabulary.txt"
PAPER_IMAGES_PER_S = {  # the papers' throughput at T = 19 / 58 / 150, GPU unnamed
    "escnet": {19: 15.0, 58: 9.9, 150: 5.1},
    "catseg": {19: 15.4, 58: 10.6, 150: 5.7},
}
HALF = {"cuda": torch.float16, "cpu": torch.bfloat16}  # autocast's half type per device (CPU: smoke run)
STEP_IMAGE_SIZES = ((512, 512), (872, 1000))  # (H, W): the views the protocol gives for each


def machine() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpu": platform.processor() or platform.machine(),
    }


def timed(call: Callable[[], Any], device: torch.device, runs: int) -> tuple[Any, float]:
    """(the last result, median seconds per call) over ``runs`` calls after one warm-up call."""
    result = call()
    seconds = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return result, float(np.median(seconds))


def variant_config(variant: str, protocol: str | None) -> ModelConfig:
    """The variant's config, under ``protocol`` when one is named."""
    config = MODEL_CONFIGS[variant]
    return config if protocol is None else config.with_protocol(resolve_protocol(protocol))


def check_pseudo_points(
    config: ModelConfig, t: int, rng: np.random.Generator, device: torch.device, runs: int
) -> dict[str, Any]:
    """torch_steps.pseudo_points on ``device`` against the numpy step, on one random SCORE."""
    grid = config.clip.image_size // config.clip.patch_size
    score = rng.normal(scale=0.1, size=(1, t, grid, grid)).astype(np.float32)  # [B, T, G, G]
    expected, numpy_s = timed(lambda: steps.pseudo_points(score, config), torch.device("cpu"), runs)
    gpu_score = torch.from_numpy(score).to(device)
    got, torch_s = timed(lambda: torch_steps.pseudo_points(gpu_score, config), device, runs)
    got = {name: value.cpu().numpy() for name, value in got.items()}
    return {
        "step": "pseudo_points",
        "variant": config.name,
        "T": t,
        "shape": list(score.shape),
        "points_max_abs": float(np.abs(got["POINTS"] - expected["POINTS"]).max()),
        "point_labels_equal": bool(np.array_equal(got["POINT_LABELS"], expected["POINT_LABELS"])),
        "mask_equal": bool(np.array_equal(got["PSEUDO_MASK"], expected["PSEUDO_MASK"])),
        "numpy_cpu_ms": round(numpy_s * 1000, 2),
        "torch_ms": round(torch_s * 1000, 2),
    }


def check_steps(
    config: ModelConfig, classes: list[int], device: torch.device, runs: int
) -> list[dict[str, Any]]:
    """The torch steps on ``device`` against the numpy steps, on the same random inputs."""
    variant = config.name
    grid = config.clip.image_size // config.clip.patch_size
    rng = np.random.default_rng(0)
    rows = []
    for t in classes:
        if config.use_sam_blocks:  # only ESC-Net has the pseudo-points step
            rows.append(check_pseudo_points(config, t, rng, device, runs))
        for height, width in STEP_IMAGE_SIZES:
            plan = plan_views(height, width, config.protocol)
            logits = rng.normal(size=(plan.num_views, t, 4 * grid, 4 * grid)).astype(np.float32)
            view_plan = plan.encode()
            expected, numpy_s = timed(
                lambda x=logits, p=view_plan: steps.postprocess(x, p), torch.device("cpu"), runs
            )
            gpu_logits, gpu_plan = torch.from_numpy(logits).to(device), torch.from_numpy(view_plan)
            got, torch_s = timed(lambda x=gpu_logits, p=gpu_plan: torch_steps.postprocess(x, p), device, runs)
            got = {name: value.cpu().numpy() for name, value in got.items()}
            rows.append(
                {
                    "step": "postprocess",
                    "variant": variant,
                    "T": t,
                    "image": f"{height}x{width}",
                    "views": plan.num_views,
                    "labels_equal_share": float(np.mean(got["LABELS"] == expected["LABELS"])),
                    "scores_max_abs": float(np.abs(got["SCORES"] - expected["SCORES"]).max()),
                    "numpy_cpu_ms": round(numpy_s * 1000, 2),
                    "torch_ms": round(torch_s * 1000, 2),
                }
            )
    return rows


def reference_throughput(
    variants: list[str],
    protocol: str | None,
    classes: list[int],
    runs: int,
    warmup: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Images/s of the PyTorch reference on ``device``, FP32 and FP16 autocast, per variant and T."""
    from skimage import data

    from escnet.image_views import segment_probabilities
    from escnet.registry import build_model
    from escnet.segmenter import validate_image

    names = read_classes_file(VOCABULARY)
    image = validate_image(data.astronaut())
    rows = []
    for variant in variants:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the random-weights warning: known, said in the docstring
            model = build_model(variant).to(device)
        model.config = variant_config(variant, protocol)  # segment_probabilities follows its protocol
        network = {v: k for k, v in DEFAULT_VARIANTS.items()}.get(variant, variant)
        for t in classes:
            with torch.no_grad():
                text = model.embed_class_names(names[:t])
            for precision in ("fp32", f"{HALF[device.type]}_autocast".replace("torch.", "")):
                autocast = torch.autocast(device.type, dtype=HALF[device.type], enabled=precision != "fp32")

                def infer(
                    text: torch.Tensor = text, autocast: Any = autocast, model: Any = model
                ) -> torch.Tensor:
                    with torch.no_grad(), autocast:
                        return segment_probabilities(model, image, text)

                for _ in range(warmup):
                    infer()
                _, seconds = timed(infer, device, runs)
                rows.append(
                    {
                        "variant": variant,
                        "T": t,
                        "precision": precision,
                        "views": plan_views(*image.shape[:2], model.config.protocol).num_views,
                        "images_per_s": round(1 / seconds, 2),
                        "paper_images_per_s": PAPER_IMAGES_PER_S.get(network, {}).get(t),
                        "peak_gpu_memory_gib": gpu_memory_peak_gib(device),
                    }
                )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def gpu_memory_peak_gib(device: torch.device) -> float | None:
    """The peak of allocated GPU memory since the last call (None on the CPU)."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 2)


def print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n## {title}\n")
    if not rows:
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k)) for k in keys) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS.values()))
    parser.add_argument("--classes", nargs="+", type=int, default=[19, 58, 150])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--protocol", default=None, help="inference protocol (default: the variant's)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    info = machine()
    device = torch.device("cuda" if info["cuda_available"] else "cpu")
    report: dict[str, Any] = {"machine": info, "steps_device": device.type}
    report["steps"] = [
        row
        for variant in args.variants
        for row in check_steps(variant_config(variant, args.protocol), args.classes, device, args.runs)
    ]
    for step in ("pseudo_points", "postprocess"):
        rows = [row for row in report["steps"] if row["step"] == step]
        print_rows(f"{step} on {device.type} tensors against the numpy step", rows)
    if info["cuda_available"]:
        report["reference"] = reference_throughput(
            args.variants, args.protocol, args.classes, args.runs, args.warmup, device
        )
        print_rows("PyTorch reference on the GPU (images/s)", report["reference"])
    else:
        report["reference"] = "not run: no CUDA device here (torch.cuda.is_available() is False)"
        report["steps_note"] = "the torch steps ran on CPU tensors: the code path, not GPU figures"
        print("\nno CUDA device here: the steps ran on CPU tensors; the reference throughput needs CUDA")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
