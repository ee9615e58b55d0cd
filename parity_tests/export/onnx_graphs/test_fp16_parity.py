"""FP16 graphs (export/onnx_graphs/fp16.py) against the FP32 graphs, in onnxruntime on the CPU,
on real inputs.

The FP32 chain segments a real photo (scikit-image's astronaut) into a real class list; every graph's
inputs and outputs on the way are recorded. Each FP16 graph then runs on exactly the inputs its FP32
twin saw, and its outputs are held to the FP32 ones with TOLERANCES["fp16_graph"] (cosine per item
of the first axis, max abs error of scale). Finally the whole FP16 chain segments the same photo and
its labels are held to the FP32 chain's with TOLERANCES["fp16_labels"].

What this measures: onnxruntime's CPU provider has FP16 kernels for only some ops; for the others it
inserts casts and computes in FP32 (its InsertCastTransformer). So these figures are the error of
FP16 weights and FP16 tensors between nodes, with FP32 arithmetic inside the ops ORT lacks FP16
kernels for (listed per graph in the JSON), not the error of TensorRT's FP16 kernels: that is
test_tensorrt_engines.py's, where TensorRT exists. A graph ORT cannot run at all is skipped with the
op named. Figures are printed and written to artifacts/parity/fp16.json.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from parity_support import medsam_checkpoint
from skimage import data

from escnet.config import MODEL_CONFIGS
from escnet_export.contract import graph_names, step_specs
from escnet_export.parity import TOLERANCES, Tolerance, compare_arrays, compare_labels
from escnet_export.runtime.chain import GraphChain
from escnet_export.runtime.runners import GraphRunner, OrtRunner

VARIANTS = ["escnet_vitb16_384", "catseg_vitb16_384"]
ONNX_DIR = Path("artifacts/onnx")
REPORT = Path("artifacts/parity/fp16.json")
CLASSES = ["person", "rocket, spaceship", "flag", "sky", "wall", "floor", "tree", "grass"]
IMAGE_NAME = "astronaut"


def tolerance(key: str) -> Tolerance:
    if key not in TOLERANCES:
        pytest.fail(f"export/parity.py's TOLERANCES has no {key!r}: the FP16 tests need it", pytrace=False)
    return TOLERANCES[key]


class Recorder:
    """A runner that keeps every call's inputs and outputs (each graph runs once per segment())."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner
        self.step = runner.step
        self.calls: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]] = []

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self.runner.infer(feeds)
        self.calls.append(({k: v.copy() for k, v in feeds.items()}, outputs, time.perf_counter() - start))
        return outputs


@dataclass
class Reference:
    """The FP32 chain's run on the photo: labels and each graph's recorded call."""

    variant: str
    fp32_dir: Path
    fp16: dict[str, Path]
    labels: np.ndarray
    scores: np.ndarray
    calls: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]] = field(default_factory=dict)


_REFERENCES: dict[str, Reference] = {}


def reference(variant: str) -> Reference:
    """Export (cached), convert to FP16 (cached), and run the FP32 chain once per session."""
    if variant not in _REFERENCES:
        from escnet_export.onnx_graphs.export import run_export
        from escnet_export.onnx_graphs.fp16 import export_fp16

        sam = medsam_checkpoint() if MODEL_CONFIGS[variant].use_sam_blocks else None
        result = run_export(variant, ONNX_DIR, sam_checkpoint=sam, progress=False)
        fp16 = export_fp16(variant, ONNX_DIR, progress=False)
        config = MODEL_CONFIGS[variant]
        chain = GraphChain.from_onnx(config, result.directory)
        recorders = {name: Recorder(runner) for name, runner in chain.runners.items()}
        chain.runners = recorders
        out = chain.segment(getattr(data, IMAGE_NAME)(), CLASSES)
        ref = Reference(variant, result.directory, fp16, out["LABELS"], out["SCORES"])
        for name, recorder in recorders.items():
            [ref.calls[name]] = recorder.calls
        _REFERENCES[variant] = ref
    return _REFERENCES[variant]


def ort_fp32_fallbacks(path: Path, workdir: Path) -> dict[str, int]:
    """Op types onnxruntime's CPU provider runs in FP32 (it inserts casts: no FP16 kernel), counted."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(workdir / f"{path.stem}.ort.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    original = {n.name for n in onnx.load(str(path), load_external_data=False).graph.node}
    optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    inserted = {o for n in optimized.graph.node if n.name not in original for o in n.output}
    fed = collections.Counter(
        n.op_type
        for n in optimized.graph.node
        if n.name in original and n.op_type != "Cast" and any(i in inserted for i in n.input)
    )
    Path(options.optimized_model_filepath).unlink(missing_ok=True)
    return dict(sorted(fed.items()))


def _update_report(variant: str, update: Callable[[dict], None]) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    entry = report.setdefault(
        variant,
        {
            "reference": "the FP32 graphs in onnxruntime (CPU), same inputs",
            "image": f"skimage.data.{IMAGE_NAME}()",
            "classes": CLASSES,
            "runtime": "onnxruntime CPU: ops without an FP16 kernel computed in FP32 between FP16 tensors",
            "graphs": {},
        },
    )
    update(entry)
    REPORT.write_text(json.dumps(report, indent=2, sort_keys=True))


def _input_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {i.name: i.data_type for i in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    return types


def test_precision_policy_on_a_small_graph() -> None:
    """LayerNorm, softmax, a decomposed LayerNorm and an L2 normalise stay FP32 between explicit
    casts; the matmul and its weight go FP16; inputs and outputs stay FP32."""
    from onnx import TensorProto, helper, numpy_helper

    from escnet_export.onnx_graphs.fp16 import FLOAT16, convert_model

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.ones(8, np.float32), "g")
    bias = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    eps = numpy_helper.from_array(np.array(1e-6, np.float32), "eps")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("LayerNormalization", ["h", "g", "b"], ["ln"], name="layernorm", axis=-1),
        helper.make_node("Softmax", ["ln"], ["p"], name="softmax", axis=-1),
        helper.make_node("ReduceMean", ["h"], ["mean"], name="mean", axes=[-1]),
        helper.make_node("Sub", ["h", "mean"], ["centred"], name="centre"),
        helper.make_node("Pow", ["centred", "two"], ["square"], name="square"),
        helper.make_node("ReduceMean", ["square"], ["var"], name="variance", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="std"),
        helper.make_node("Div", ["centred", "std"], ["normed"], name="normalise"),
        helper.make_node("ReduceL2", ["p"], ["norm"], name="l2", axes=[-1]),
        helper.make_node("Div", ["p", "norm"], ["unit"], name="l2_divide"),
        helper.make_node("Add", ["unit", "normed"], ["y"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "policy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])],
        initializer=[weight, scale, bias, eps, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted, report = convert_model(model, "policy")
    onnx.checker.check_model(converted, full_check=True)
    types = _input_types(converted)
    by_name = {n.name: n for n in converted.graph.node}
    fp32 = ["layernorm", "softmax", "mean", "centre", "square", "variance", "add_eps", "std", "normalise"]
    for name in [*fp32, "l2", "l2_divide"]:
        assert all(types[i] == TensorProto.FLOAT for i in by_name[name].input if i), name
    assert all(types[i] == FLOAT16 for i in by_name["matmul"].input), "matmul and its weight in FP16"
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert report.casts >= 2 and report.kept["LayerNormalization"] == 1
    import onnxruntime as ort

    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 8)).astype(np.float32)
    result = compare_arrays(
        "y", session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0], tolerance("fp16_graph")
    )
    print(f"\n{result}")
    assert result, str(result)


@pytest.mark.parametrize("variant", VARIANTS)
def test_kept_ops_compute_in_fp32(variant: str) -> None:
    """In every exported FP16 graph: each kept op (LayerNorm, softmax, reductions, ...) reads FP32,
    the I/O types equal the FP32 graph's, and matmuls/convs read FP16."""
    from escnet_export.onnx_graphs.fp16 import FLOAT16, KEEP_FP32, phase_chain

    ref = reference(variant)
    for graph, path in ref.fp16.items():
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        types = _input_types(model)
        kept = [n for n in model.graph.node if n.op_type in KEEP_FP32]
        bad = [f"{n.op_type} {n.name!r}" for n in kept if any(types.get(i) == FLOAT16 for i in n.input if i)]
        assert not bad, f"{graph}: kept ops reading FP16: {bad}"
        phases = phase_chain(model.graph)  # Sin/Cos arguments: kept FP32 by design
        heavy = [
            n
            for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose") and n.name not in phases
        ]
        in_fp16 = sum(types.get(n.input[0]) == FLOAT16 for n in heavy)
        fp32_model = onnx.load(str(ref.fp32_dir / f"{graph}.onnx"), load_external_data=False)
        io = [
            (v.name, v.type.tensor_type.elem_type)
            for v in (*fp32_model.graph.input, *fp32_model.graph.output)
        ]
        assert io == [
            (v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)
        ]
        print(
            f"\n{variant} {graph}: {len(kept)} kept ops in FP32, {in_fp16}/{len(heavy)} matmuls/convs in FP16"
        )
        assert in_fp16 == len(heavy), f"{graph}: {len(heavy) - in_fp16} matmuls/convs not in FP16"


def _cases() -> list[tuple[str, str]]:
    return [(v, g) for v in VARIANTS for g in graph_names(MODEL_CONFIGS[v])]


@pytest.mark.parametrize(("variant", "graph"), _cases(), ids=lambda x: str(x))
def test_fp16_graph_matches_fp32(variant: str, graph: str, tmp_path: Path) -> None:
    ref = reference(variant)
    step = step_specs(MODEL_CONFIGS[variant])[graph]
    feeds, expected, seconds_fp32 = ref.calls[graph]
    path = ref.fp16[graph]
    try:
        runner = OrtRunner(step, path)
        start = time.perf_counter()
        actual = runner.infer(feeds)
        seconds_fp16 = time.perf_counter() - start
        fallbacks = ort_fp32_fallbacks(path, tmp_path)
    except Exception as error:  # noqa: BLE001 - ORT's message names the op it has no kernel for
        reason = f"onnxruntime (CPU) cannot run the FP16 {graph}: {error}"
        _update_report(variant, lambda e: e["graphs"].__setitem__(graph, {"skipped": reason}))
        pytest.skip(reason)
    limit = tolerance("fp16_graph")
    results = [compare_arrays(name, actual[name], expected[name], limit) for name in step.output_names]
    shapes = {name: list(array.shape) for name, array in feeds.items()}
    print(
        f"\n{variant} {graph} inputs {shapes}; FP32 {seconds_fp32:.2f} s, FP16 {seconds_fp16:.2f} s (ORT CPU)"
    )
    for result in results:
        print(f"  {result}")
    print(f"  ORT CPU computes in FP32 (no FP16 kernel): {fallbacks}")
    figures = {
        r.name: {
            "min_cosine": r.cosine,
            "max_abs": r.max_abs,
            "max_abs_of_scale": r.max_of_scale,
            "mean_abs": r.mean_abs,
            "p99_abs": r.p99_abs,
            "passed": r.passed,
        }
        for r in results
    }
    _update_report(
        variant,
        lambda e: e["graphs"].__setitem__(
            graph,
            {
                "inputs": shapes,
                "outputs": figures,
                "tolerance": {"min_cosine": limit.min_cosine, "max_abs_of_scale": limit.max_abs_of_scale},
                "ort_cpu_fp32_fallback_ops": fallbacks,
                "seconds": {"fp32": round(seconds_fp32, 3), "fp16": round(seconds_fp16, 3)},
            },
        ),
    )
    failed = [str(r) for r in results if not r]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fp16_chain_labels_match_fp32(variant: str) -> None:
    """The whole FP16 chain's labels against the FP32 chain's, with the near-tie diagnosis: a pixel
    whose two best FP32 scores are closer than twice the largest FP16 score error may flip, one
    whose margin is wider cannot."""
    ref = reference(variant)
    config = MODEL_CONFIGS[variant]
    specs = step_specs(config)
    runners = {name: OrtRunner(specs[name], path) for name, path in ref.fp16.items()}
    start = time.perf_counter()
    out = GraphChain(config=config, runners=runners).segment(getattr(data, IMAGE_NAME)(), CLASSES)
    seconds = time.perf_counter() - start
    result = compare_labels(out["LABELS"], ref.labels, tolerance("fp16_labels"), expected_scores=ref.scores)
    score_error = float(np.abs(out["SCORES"] - ref.scores).max())
    top2 = np.sort(ref.scores, axis=0)[-2:]
    near_tie = (top2[1] - top2[0]) <= 2 * score_error
    decided = ~near_tie
    agreement_decided = (
        float(np.mean(out["LABELS"][decided] == ref.labels[decided])) if decided.any() else 1.0
    )
    counts = {CLASSES[k]: int(v) for k, v in zip(*np.unique(ref.labels, return_counts=True), strict=True)}
    print(f"\n{variant} FP16 chain vs FP32 chain on {IMAGE_NAME} ({seconds:.1f} s): {result}")
    print(
        f"  max |SCORES fp16 - fp32| {score_error:.3e}; {near_tie.mean():.1%} of pixels have FP32 top-2 "
        f"scores within 2x that (near ties); agreement on the others {agreement_decided:.6f}"
    )
    print(f"  FP32 label histogram: {counts}")
    _update_report(
        variant,
        lambda e: e.__setitem__(
            "labels",
            {
                "agreement": result.agreement,
                "pixels": int(ref.labels.size),
                "passed": result.passed,
                "min_agreement": TOLERANCES["fp16_labels"].min_label_agreement,
                "max_abs_scores": score_error,
                "near_tie_share": float(near_tie.mean()),
                "agreement_outside_near_ties": agreement_decided,
                "fp32_label_histogram": counts,
                "fp16_chain_seconds": round(seconds, 2),
            },
        ),
    )
    assert result, f"{result}; near ties: {near_tie.mean():.1%} of pixels (see artifacts/parity/fp16.json)"
