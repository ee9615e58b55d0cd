"""Expected GPU memory of one request on a GPU runtime, **computed** from the contract's tensor
shapes (not measured: no GPU with TensorRT was at hand): ``python -m escnet_export.engines.gpu_memory``.

For a request of T classes and V views (1 under single_view, 5 under catseg_eval) on an image of
H x W pixels:

- ``live``: the peak of the tensors the ensemble holds at once. Triton keeps a step's outputs until
  the last step that reads them has run; on a GPU runtime the graphs' tensors live on the GPU. The
  peak over the chain's entries of (every tensor produced before or by the entry and read by it or
  later) counts them all as GPU tensors, the upper bound (preprocess's and the text embedder's
  outputs are host tensors that Triton copies in).
- ``largest_call``: the inputs and outputs of the largest single step call (already inside
  ``live``; it is what one graph's bindings need).
- ``weights``: the variant's parameters at FP16 (the engines' precision; FP32 twice that), counted
  on the PyTorch model; each graph model holds its own share once per instance.

Not included, because only a built engine reports it: TensorRT's context (activation) memory of
the profile a request selects (``ICudaEngine.get_device_memory_size_for_profile``; allocated per
profile, configs.py) and its workspace, and each process's CUDA context (~0.3-0.5 GiB).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from escnet.config import MODEL_CONFIGS, ModelConfig
from escnet_export.contract import (
    DEFAULT_VARIANTS,
    REQUEST_INPUTS,
    chain_steps,
    request_output_sources,
    step_specs,
)
from escnet_export.runtime.memory_model import GIB, tensor_bytes

TABLE_CLASSES = (19, 58, 150, 300, 1024)
TABLE_VIEWS = (1, 5)
TABLE_IMAGE = (480, 640)  # H, W: the memory model's photos (README, Memory)


@dataclass(frozen=True)
class GpuMemory:
    """Computed bytes of one request: peak live tensors, largest call, FP16 weights (or None)."""

    classes: int
    views: int
    live: int
    largest_call: int
    largest_step: str
    weights: int | None

    @property
    def total(self) -> int | None:
        return None if self.weights is None else self.live + self.weights


def _axes(classes: int, views: int) -> dict[str, int]:
    return {"B": views, "T": classes, "N": classes, "P": 1, "K": 5}


def request_tensors(
    config: ModelConfig, classes: int, views: int, image: tuple[int, int]
) -> tuple[int, int, str]:
    """(peak live bytes, largest call's bytes, its step) of one request along the chain."""
    specs = step_specs(config)
    axes = _axes(classes, views)
    height, width = image
    chain = chain_steps(config)
    sizes: dict[str, int] = {t.name: tensor_bytes(t, axes, height, width) for t in REQUEST_INPUTS}
    last_read: dict[str, int] = {}
    for index, entry in enumerate(chain):
        spec = specs[entry.step]
        for output in spec.outputs:
            sizes[entry.output(output.name)] = tensor_bytes(output, axes, height, width)
        for source in entry.sources.values():
            last_read[source] = index
    answers = set(request_output_sources(config).values())
    for source in answers:  # the request's outputs live until the response leaves
        last_read[source] = len(chain)
    produced_at = {t.name: -1 for t in REQUEST_INPUTS}
    for index, entry in enumerate(chain):
        for name in entry.outputs:
            produced_at[entry.output(name)] = index
    peak = 0
    largest, largest_step = 0, ""
    for index, entry in enumerate(chain):
        alive = [
            name for name, born in produced_at.items() if born <= index and last_read.get(name, born) >= index
        ]
        peak = max(peak, sum(sizes[name] for name in alive))
        call = sum(sizes[s] for s in entry.sources.values()) + sum(
            sizes[entry.output(n)] for n in entry.outputs
        )
        if call > largest:
            largest, largest_step = call, entry.label
    return peak, largest, largest_step


def weight_bytes(variant: str) -> int:
    """FP16 bytes of the variant's parameters (the graphs hold these, once each)."""
    import contextlib
    import io
    import warnings

    from escnet.registry import build_model

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # random init: only the parameter count matters here
        model = build_model(variant)
    return 2 * sum(p.numel() for p in model.parameters())


def memory_table(
    variant: str,
    classes: Sequence[int] = TABLE_CLASSES,
    views: Sequence[int] = TABLE_VIEWS,
    image: tuple[int, int] = TABLE_IMAGE,
    with_weights: bool = True,
) -> list[GpuMemory]:
    config = MODEL_CONFIGS[variant]
    weights = weight_bytes(variant) if with_weights else None
    rows = []
    for v in views:
        for t in classes:
            live, largest, step = request_tensors(config, t, v, image)
            rows.append(GpuMemory(t, v, live, largest, step, weights))
    return rows


def format_table(variant: str, rows: list[GpuMemory], image: tuple[int, int]) -> str:
    lines = [
        f"{variant}, image {image[0]}x{image[1]} (computed from tensor shapes, not measured; "
        "TensorRT context memory not included)",
        "",
        "| views | T | live tensors GiB | largest call GiB (step) | FP16 weights GiB | live + weights GiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        weights = "n/a" if row.weights is None else f"{row.weights / GIB:.2f}"
        total = "n/a" if row.total is None else f"{row.total / GIB:.2f}"
        lines.append(
            f"| {row.views} | {row.classes} | {row.live / GIB:.2f} | {row.largest_call / GIB:.2f} "
            f"({row.largest_step}) | {weights} | {total} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS.values()))
    parser.add_argument("--classes", nargs="+", type=int, default=list(TABLE_CLASSES))
    parser.add_argument("--views", nargs="+", type=int, default=list(TABLE_VIEWS))
    parser.add_argument("--image", nargs=2, type=int, default=list(TABLE_IMAGE), metavar=("H", "W"))
    parser.add_argument("--no-weights", action="store_true", help="skip building the model to count weights")
    args = parser.parse_args(argv)
    image = (args.image[0], args.image[1])
    for variant in args.variants:
        rows = memory_table(variant, args.classes, args.views, image, not args.no_weights)
        print(format_table(variant, rows, image) + "\n")


if __name__ == "__main__":
    main()
