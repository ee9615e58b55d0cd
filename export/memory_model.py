"""How much memory one request needs, from its class count T, its view count V and its image size,
and the budget a request must fit in. The preprocess step refuses a request over budget before any
work (escnet_export.request_checks.check_memory_budget).

The steps of one request run one after another, so the request's peak is its largest step plus
what tritonserver itself holds meanwhile (the ensemble's tensors between steps):

    peak = max over steps s of (a_s + b_s * x_s)  +  (a_server + b_server * V * T)

with each step's driver x_s:

- aggregators: one view's class attention over T + 256 classes (the padding): v * (T + 256),
  v = views per run (RunChunks.views);
- SAM blocks, decoder: v * min(T, classes per run);
- prep (its top-256 choice needs all classes): v * T;
- the text encoder: min(N, texts per run), constant for a request;
- postprocess: T * H * W (the per-class probabilities at full size) plus V * T (the logits);
- preprocess: H * W.

The coefficients (bytes) are fitted to peak-RSS measurements of each step's process
(scripts/benchmark_memory.py: VmHWM reset before the request) at T = 20, 150 and 300, 480x640,
on the 2-core CI machine with the default RunChunks; README, Memory, gives the table. Pure Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
PAD_CLASSES = 256  # class attention always sees at least this many classes (CAT-Seg's pad_len)


@dataclass(frozen=True)
class StepCost:
    """a + b * x bytes, x the step's driver (see the module docstring)."""

    fixed: float
    slope: float
    driver: str  # "view_classes_padded", "view_classes_chunked", "view_classes", "texts", ...


@dataclass(frozen=True)
class RequestShape:
    """What a request's memory depends on."""

    classes: int  # T
    views: int  # V (1 or 5, by the protocol)
    height: int
    width: int
    views_per_run: int = 1
    classes_per_run: int = 128
    texts_per_run: int = 16


def driver_value(driver: str, shape: RequestShape) -> float:
    v = min(shape.views, shape.views_per_run)
    t = shape.classes
    pixels = shape.height * shape.width
    values = {
        "view_classes_padded": v * (t + PAD_CLASSES),
        "view_classes_chunked": v * min(t, shape.classes_per_run),
        "view_classes": v * t,
        "texts": min(t, shape.texts_per_run),
        "request_classes": shape.views * t,
        "class_pixels": t * pixels,
        "pixels": pixels,
        "none": 0,
    }
    return values[driver]


# Step kind -> its driver. Graph steps are named by kind (aggregator_1 -> aggregator).
STEP_DRIVERS = {
    "aggregator": "view_classes_padded",
    "sam_prompt_decoder": "view_classes_chunked",
    "decoder": "view_classes_chunked",
    "prep": "view_classes",
    "clip_text_encoder": "texts",
    "clip_image_encoder": "none",
    "postprocess": "class_pixels",
    "preprocess": "pixels",
    "pseudo_points": "view_classes",
    "text_embedder": "none",
    "tritonserver": "request_classes",
}


def step_kind(step: str) -> str:
    """aggregator_2 -> aggregator; sam_prompt_decoder_1 -> sam_prompt_decoder; prep -> prep."""
    head, _, tail = step.rpartition("_")
    return head if tail.isdigit() else step


# Fitted coefficients per step kind (bytes): the same code runs both variants' steps, whose widths
# are equal (ViT-B/16); ESC-Net's SAM blocks and pseudo points only exist in escnet.
COSTS: dict[str, StepCost] = {}


@dataclass(frozen=True)
class MemoryEstimate:
    """A request's estimated peak (bytes), and each step's share of it."""

    peak: float
    largest_step: str
    steps: dict[str, float]

    def describe(self) -> str:
        step = self.steps.get(self.largest_step, 0.0)
        return f"{self.peak / GIB:.1f} GiB (largest step: {self.largest_step}, {step / GIB:.1f} GiB)"


def estimate_request_memory(
    steps: list[str], shape: RequestShape, costs: dict[str, StepCost] | None = None
) -> MemoryEstimate:
    """The request's peak: its largest step plus what tritonserver holds (``steps``: step names)."""
    table = COSTS if costs is None else costs
    per_step = {}
    for step in steps:
        cost = table.get(step_kind(step))
        if cost is not None:
            per_step[step] = cost.fixed + cost.slope * driver_value(cost.driver, shape)
    server = table.get("tritonserver")
    held = 0.0 if server is None else server.fixed + server.slope * driver_value(server.driver, shape)
    largest = max(per_step, key=per_step.get) if per_step else "none"
    return MemoryEstimate(peak=held + per_step.get(largest, 0.0), largest_step=largest, steps=per_step)


# -- the budget -----------------------------------------------------------------------------------

AUTO_BUDGET_FRACTION = 0.6  # of the machine's (or container's) memory, for one request


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup's limit when the process runs under a smaller one."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def resolve_budget(value: str | None) -> float:
    """A budget parameter -> bytes: "auto" (or unset) is AUTO_BUDGET_FRACTION of the machine's
    memory, read when the step loads; otherwise a number of GiB."""
    if value is None or value.strip().lower() in ("", "auto"):
        return AUTO_BUDGET_FRACTION * machine_memory_bytes()
    gib = float(value)
    if gib <= 0:
        raise ValueError(f"memory budget must be a positive number of GiB or 'auto', got {value!r}")
    return gib * GIB
