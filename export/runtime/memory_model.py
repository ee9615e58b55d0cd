"""How much memory one request needs, from its class count T, its view count V and its image size,
and the budget a request must fit in. The preprocess step refuses a request over budget before any
work (escnet_export.runtime.request_checks.check_memory_budget).

Where a request's memory goes (measured with scripts/benchmark_memory.py; README, Memory):

1. **The steps' tensors, in shared memory.** Every Python-backend step exchanges its inputs and
   outputs through a shared-memory region of its own, which the backend grows to fit them and
   does not shrink (tritonserver 2.51). So a request needs, at its end, the sum over its steps of
   their inputs' and outputs' bytes (``io``): computed here exactly from the contract's shapes,
   and confirmed by measurement (README, Memory: server growth against tensors between steps).
   The step watchdog
   gives it back once the server is idle (escnet_export.triton_serving.step_watchdog).
2. **The largest step's working memory** beyond its tensors (``work``): the peak RSS rise of the
   step's process minus its io, measured at T = 20, 150 and 300 on 480x640 photos (2-core CI
   machine, default RunChunks), interpolated piecewise linearly in the step's driver and extended
   beyond the last point along the last (steepest) segment. The steps run one after another.
3. **tritonserver's own** (not shared) memory: 0.3 GiB + 15 % of the io (the margin measured when
   the kernel's OOM killer stopped a large request: README, Memory).

    peak = 1.15 * io + 0.3 GiB + max over steps s of work_s(x_s)

Drivers x: aggregators v * (T + 256) (one view's class attention over T classes plus the 256
padding tokens, v = views per run); prep, SAM blocks, decoder, pseudo points v * T (the last
three slice classes, but write every class's output); postprocess T * H * W; the rest constant.
Pure Python (the contract's shapes only).
"""

from __future__ import annotations

from dataclasses import dataclass

from escnet_export.contract import StepSpec, TensorSpec
from escnet_export.triton_serving.server_processes import machine_memory_bytes

GIB = 2**30
PAD_CLASSES = 256  # class attention always sees at least this many classes (CAT-Seg's pad_len)
DTYPE_BYTES = {"FP32": 4, "FP16": 2, "INT32": 4, "UINT8": 1, "BYTES": 64}  # BYTES: a class name, roughly
SERVER_FIXED_GIB = 0.3
SERVER_SHARE_OF_IO = 0.15


@dataclass(frozen=True)
class StepCost:
    """A step's measured working memory (GiB) at some values of its driver, piecewise linear."""

    driver: str  # "view_classes_padded", "view_classes", "class_pixels" or "none"
    points: tuple[tuple[float, float], ...]  # (x, GiB), x increasing

    def bytes_at(self, x: float) -> float:
        pts = self.points
        if len(pts) == 1 or x <= pts[0][0]:
            return pts[0][1] * GIB
        segment = next((i for i in range(1, len(pts)) if x <= pts[i][0]), len(pts) - 1)
        (x0, y0), (x1, y1) = pts[segment - 1], pts[segment]
        return (y0 + (y1 - y0) * (x - x0) / (x1 - x0)) * GIB


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

    @property
    def axes(self) -> dict[str, int]:
        """The contract's named axes for this request (N: texts, one per class under "first")."""
        return {"B": self.views, "T": self.classes, "N": self.classes, "P": 1, "K": 5}

    def driver(self, name: str) -> float:
        v = min(self.views, self.views_per_run)
        return {
            "view_classes_padded": v * (self.classes + PAD_CLASSES),
            "view_classes": v * self.classes,
            "class_pixels": self.classes * self.height * self.width,
            "none": 0.0,
        }[name]


def tensor_bytes(spec: TensorSpec, axes: dict[str, int], height: int, width: int) -> int:
    size = DTYPE_BYTES[spec.dtype]
    for dim in spec.shape:
        size *= dim if isinstance(dim, int) else {"H": height, "W": width}.get(dim, axes.get(dim, 1))
    return size


def io_bytes(step: StepSpec, shape: RequestShape) -> int:
    """The bytes of a step's inputs and outputs for the request: what its shared region must hold.
    The text encoder is called by the text embedder in slices of texts_per_run."""
    axes = dict(shape.axes)
    if step.name == "clip_text_encoder":
        axes["N"] = min(shape.classes, shape.texts_per_run)
    tensors = (*step.inputs, *step.outputs)
    return sum(tensor_bytes(t, axes, shape.height, shape.width) for t in tensors)


def step_kind(step: str) -> str:
    """aggregator_2 -> aggregator; sam_prompt_decoder_1 -> sam_prompt_decoder; prep -> prep."""
    head, _, tail = step.rpartition("_")
    return head if tail.isdigit() else step


_CONSTANT = {
    "clip_image_encoder": StepCost("none", ((0, 0.07),)),
    "clip_text_encoder": StepCost("none", ((0, 0.12),)),
    "text_embedder": StepCost("none", ((0, 0.01),)),
    "preprocess": StepCost("none", ((0, 0.05),)),
}
_SHARED = {
    "prep": StepCost("view_classes", ((20, 0.06), (150, 0.21), (300, 0.41))),
    "decoder": StepCost("view_classes", ((20, 0.27), (150, 0.94), (300, 1.08))),
    "postprocess": StepCost("class_pixels", ((6.1e6, 0.04), (4.6e7, 0.17), (9.2e7, 0.37))),
}
# Working memory (GiB) per step kind and ensemble kind, measured (scripts/benchmark_memory.py,
# artifacts/memory/memory.json: peak RSS rise of each step's process minus its io).
COSTS: dict[str, dict[str, StepCost]] = {
    "catseg": {
        **_CONSTANT,
        **_SHARED,
        "aggregator": StepCost("view_classes_padded", ((276, 1.10), (406, 1.66), (556, 2.71))),
    },
    "escnet": {
        **_CONSTANT,
        **_SHARED,
        # Measured at T = 20 and 150; the T = 300 run was stopped by the OOM killer (the machine was
        # shared then), so beyond 150 the aggregator follows catseg's steeper measured slope.
        "aggregator": StepCost("view_classes_padded", ((276, 1.28), (406, 1.99), (556, 3.04))),
        "sam_prompt_decoder": StepCost("view_classes", ((20, 0.21), (150, 0.50))),
        "pseudo_points": StepCost("view_classes", ((100, 0.01), (750, 0.05))),
    },
}


@dataclass(frozen=True)
class MemoryEstimate:
    """A request's estimated peak (bytes): its steps' shared tensors, tritonserver's own memory,
    and the largest step's working memory."""

    peak: float
    io: float
    largest_step: str
    work: float

    def describe(self) -> str:
        return (
            f"{self.peak / GIB:.1f} GiB ({self.io / GIB:.1f} GiB of tensors between steps, "
            f"{self.work / GIB:.1f} GiB in its largest step, {self.largest_step})"
        )


def estimate_request_memory(
    steps: list[StepSpec], shape: RequestShape, costs: dict[str, StepCost] | None = None
) -> MemoryEstimate:
    """The request's peak under the module's model; ``costs`` default to the ensemble's kind."""
    if costs is None:
        costs = COSTS["escnet" if any(s.name == "pseudo_points" for s in steps) else "catseg"]
    io = float(sum(io_bytes(step, shape) for step in steps))
    work = {
        s.name: costs[step_kind(s.name)].bytes_at(shape.driver(costs[step_kind(s.name)].driver))
        for s in steps
    }
    largest = max(work, key=work.get)
    server = SERVER_FIXED_GIB * GIB + SERVER_SHARE_OF_IO * io
    return MemoryEstimate(peak=io + server + work[largest], io=io, largest_step=largest, work=work[largest])


# -- the budget -----------------------------------------------------------------------------------

AUTO_BUDGET_FRACTION = 0.5  # of the machine's (or container's) memory, for one request


def resolve_budget(value: str | None) -> float:
    """A budget parameter -> bytes: "auto" (or unset) is AUTO_BUDGET_FRACTION of the machine's
    memory, read when the step loads; otherwise a number of GiB."""
    if value is None or value.strip().lower() in ("", "auto"):
        return AUTO_BUDGET_FRACTION * machine_memory_bytes()
    gib = float(value)
    if gib <= 0:
        raise ValueError(f"memory budget must be a positive number of GiB or 'auto', got {value!r}")
    return gib * GIB
