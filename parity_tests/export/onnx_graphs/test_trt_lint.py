"""TensorRT readiness of every exported graph, FP32 and FP16, of both variants
(export/onnx_graphs/trt_lint.py).

Each graph is simplified (constant folding with shape folding, cleanup, toposort; cached on disk by
the source's sha256) and linted against the TensorRT ONNX parser's support list and our rules: no
3-input Einsum, no data-dependent shape tensors, dynamic dims only on the contract's axes, INT64 only
where the parser takes it. A finding fails its graph's test with the node named. The rules are first
shown to fire on small synthetic graphs, so a clean lint means something.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from parity_support import medsam_checkpoint

from escnet.config import MODEL_CONFIGS
from escnet_export.contract import StepSpec, TensorSpec, graph_names, step_specs
from escnet_export.onnx_graphs.trt_lint import Finding, lint_file, lint_model, simplify_model

VARIANTS = ["escnet_vitb16_384", "catseg_vitb16_384"]
PRECISIONS = ["fp32", "fp16"]
ONNX_DIR = Path("artifacts/onnx")
TIMES: dict[str, float] = {}


_EXPORTED: dict[tuple[str, str], dict[str, Path]] = {}


def exported(variant: str, precision: str) -> dict[str, Path]:
    """The variant's graphs (run_export's cache; FP16 made from them by fp16.py), once per session."""
    key = (variant, precision)
    if key not in _EXPORTED:
        from escnet_export.onnx_graphs.export import run_export
        from escnet_export.onnx_graphs.fp16 import export_fp16

        sam = medsam_checkpoint() if MODEL_CONFIGS[variant].use_sam_blocks else None
        fp32 = run_export(variant, ONNX_DIR, sam_checkpoint=sam, progress=False).graphs
        _EXPORTED[(variant, "fp32")] = fp32
        _EXPORTED[(variant, "fp16")] = export_fp16(variant, ONNX_DIR, progress=False)
    return _EXPORTED[key]


# --- the rules fire: small synthetic graphs -------------------------------------------------------


def _model(nodes: list[onnx.NodeProto], inputs: list, outputs: list, inits: list | None = None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _rules(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings}


def _vi(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def test_clean_graph_passes() -> None:
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [_vi("x", TensorProto.FLOAT, ["B", 4])],
        [_vi("y", TensorProto.FLOAT, ["B", 4])],
    )
    step = StepSpec("g", "graph", (TensorSpec("x", "FP32", ("B", 4)),), (TensorSpec("y", "FP32", ("B", 4)),))
    assert lint_model(model, "g", step) == []


def test_three_input_einsum_is_refused() -> None:
    nodes = [helper.make_node("Einsum", ["a", "b", "c"], ["y"], name="lin_attn", equation="ij,jk,kl->il")]
    model = _model(
        nodes,
        [_vi(n, TensorProto.FLOAT, [2, 2]) for n in "abc"],
        [_vi("y", TensorProto.FLOAT, [2, 2])],
    )
    [finding] = [f for f in lint_model(model, "g") if f.rule == "restriction"]
    assert finding.node == "lin_attn" and "3 inputs" in finding.message


def test_data_dependent_reshape_and_nonzero_are_refused() -> None:
    nodes = [
        helper.make_node("Cast", ["x"], ["xi"], name="to_int", to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "xi"], ["y"], name="reshape_by_values"),
        helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
    ]
    model = _model(
        nodes, [_vi("x", TensorProto.FLOAT, [2])], [_vi("y", TensorProto.FLOAT, None), _vi("nz", 7, None)]
    )
    findings = lint_model(model, "g")
    assert any(f.rule == "data-dependent-shape" and f.node == "reshape_by_values" for f in findings)
    assert any(f.rule == "policy" and f.node == "nonzero" for f in findings)


def test_shape_derived_reshape_is_fine() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape_by_shape"),
    ]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, ["B", 3])], [_vi("y", TensorProto.FLOAT, ["B", 3])])
    assert not [f for f in lint_model(model, "g") if f.rule == "data-dependent-shape"]


def test_cubic_resize_topk_and_unsupported_ops_are_refused() -> None:
    k = numpy_helper.from_array(np.array([4], dtype=np.int64), "k")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="cubic", mode="cubic"),
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "k0", "k1"], ["kk"], name="k_from_shape"),
        helper.make_node("TopK", ["f", "kk"], ["v", "i"], name="topk_dynamic_k"),
        helper.make_node("BitShift", ["u", "u"], ["w"], name="shift", direction="LEFT"),
    ]
    inits = [
        k,
        scales,
        numpy_helper.from_array(np.array([0], dtype=np.int64), "k0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "k1"),
    ]
    model = _model(
        nodes,
        [
            _vi("x", TensorProto.FLOAT, [1, 1, 4, 4]),
            _vi("f", TensorProto.FLOAT, [8]),
            _vi("u", TensorProto.UINT32, [2]),
        ],
        [
            _vi("r", TensorProto.FLOAT, None),
            _vi("v", TensorProto.FLOAT, None),
            _vi("w", TensorProto.UINT32, None),
        ],
        inits,
    )
    by_node = {(f.node, f.rule) for f in lint_model(model, "g")}
    assert ("cubic", "restriction") in by_node
    assert ("topk_dynamic_k", "constant-input") in by_node
    assert ("shift", "operator") in by_node


def test_int64_matmul_is_refused() -> None:
    model = _model(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="int_matmul")],
        [_vi("a", TensorProto.INT64, [2, 2]), _vi("b", TensorProto.INT64, [2, 2])],
        [_vi("y", TensorProto.INT64, [2, 2])],
    )
    assert ("int_matmul", "int64") in {(f.node, f.rule) for f in lint_model(model, "g")}


def test_undeclared_dynamic_dim_is_refused() -> None:
    """An output dim that shape inference cannot name (here: a flatten of two dynamic axes) is not
    the contract's axis."""
    shape = numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "shape")
    model = _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="merge_axes")],
        [_vi("x", TensorProto.FLOAT, ["B", "T", 4])],
        [_vi("y", TensorProto.FLOAT, ["B", 4])],
        [shape],
    )
    step = StepSpec(
        "g", "graph", (TensorSpec("x", "FP32", ("B", "T", 4)),), (TensorSpec("y", "FP32", ("B", 4)),)
    )
    [finding] = lint_model(simplify_model(model), "g", step)
    assert (
        finding.rule == "dynamic-axes"
        and finding.node == "y"
        and "'B' disappears at Reshape" in finding.message
    )


# --- every exported graph ----------------------------------------------------------------------


def _cases() -> list[tuple[str, str, str]]:
    return [(v, p, g) for v in VARIANTS for p in PRECISIONS for g in graph_names(MODEL_CONFIGS[v])]


@pytest.mark.parametrize(("variant", "precision", "graph"), _cases(), ids=lambda x: str(x))
def test_graph_is_tensorrt_ready(variant: str, precision: str, graph: str) -> None:
    path = exported(variant, precision)[graph]
    step: StepSpec = step_specs(MODEL_CONFIGS[variant])[graph]
    start = time.perf_counter()
    report = lint_file(path, step)
    TIMES[f"{variant}/{precision}/{graph}"] = time.perf_counter() - start
    ops = ", ".join(f"{op} {n}" for op, n in report.ops.items())
    print(
        f"\n{variant} {precision} {graph}: {report.nodes} nodes after folding ({report.seconds:.1f} s): {ops}"
    )
    for finding in report.findings:
        print(f"  FINDING {finding}")
    if report.findings:
        listed = "\n".join(f"  {f}" for f in report.findings)
        pytest.fail(
            f"{len(report.findings)} TensorRT-readiness finding(s) in {path}:\n{listed}", pytrace=False
        )


def test_lint_time_report() -> None:
    """What the lint cost (simplification cached on disk after the first run): one finite, positive
    time per graph linted in this session, each one of the parametrized cases; printed, slowest first."""
    if not TIMES:
        pytest.skip("no graph was linted in this session: nothing to report")
    cases = {f"{v}/{p}/{g}" for v, p, g in _cases()}
    assert set(TIMES) <= cases, f"timed graphs that are not lint cases: {sorted(set(TIMES) - cases)}"
    assert all(math.isfinite(s) and s > 0 for s in TIMES.values()), TIMES
    print(f"\nlint: {len(TIMES)} graphs in {sum(TIMES.values()):.1f} s; slowest:")
    for name, seconds in sorted(TIMES.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {name}: {seconds:.1f} s")
