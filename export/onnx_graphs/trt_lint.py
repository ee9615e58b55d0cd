"""TensorRT readiness of the exported graphs, checked without TensorRT:
``python -m escnet_export.onnx_graphs.trt_lint --variant escnet_vitb16_384 --precision fp32 fp16``.

Each graph is first simplified as the engine builder sees it (onnx-graphsurgeon constant folding with
shape folding, cleanup, toposort, strict shape inference; cached on disk beside the graph by the
sha256 of the source), then every node is held to:

- the TensorRT ONNX parser's support list (operator, data types, the per-op restrictions that can
  bite here), kept below as data: ``TRT_SUPPORT``;
- no Einsum with more than two inputs, no control flow (If/Loop/Scan: the graphs are branch-free by
  design), no NonZero/Unique (data-dependent output shapes);
- no data-dependent shape tensors: every shape input (Reshape's shape, Slice's starts/ends, Range,
  TopK's K, Expand, Tile, ConstantOfShape, Resize's sizes/scales, ...) must derive from constants
  and input *shapes* only, never from input values (provenance traced back to the graph inputs);
- dynamic dimensions only on the contract's axes: after shape inference every input and output dim
  is the contract's fixed size or its named axis, never an unknown or an exporter-invented name;
- graph input and output dtypes as the contract says (FP32 I/O for FP16 graphs too), and INT64 only
  into operators whose type list has it.

Source of the support list: onnx/onnx-tensorrt, docs/operators.md, "TensorRT 10.15 supports operators
in the inclusive range of opset 9 to opset 24" (the newest list published; TensorRT 11's parser is
the same onnx-tensorrt code base and its release notes remove only weak-typing APIs, none of the ops
below). Where an older 10.x list was stricter (TopK's K and Squeeze/Unsqueeze/Reduce axes as build
time constants) the stricter rule is kept, so one lint covers 10.0 to 11.x.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper
from tqdm import tqdm

from escnet.config import MODEL_CONFIGS
from escnet_export.artifacts import DEFAULT_ONNX_DIR, FP16_SUBDIR, file_sha256
from escnet_export.contract import StepSpec, graph_names, step_specs

OPSET_RANGE = (9, 24)
SIMPLIFIER_VERSION = "gs-fold-v1"  # bump when simplify_model changes: invalidates the disk cache

# Type sets of the support list (TensorRT's names).
_F = ("FP32", "FP16", "BF16")
_FI = (*_F, "INT32", "INT64")
_FIB = (*_FI, "BOOL")
_B = ("BOOL",)
_HALF = ("FP32", "FP16")
_Q = ("FP8", "FP4", "INT4", "INT8")

# Operator -> data types TensorRT takes (onnx-tensorrt docs/operators.md, TensorRT 10.15).
TRT_SUPPORT: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ["Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual"], _FI
    ),
    **dict.fromkeys(["IsNaN", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Neg", "Pow"], _FI),
    **dict.fromkeys(["Range", "Relu", "Scatter", "ScatterElements", "ScatterND", "Shrink", "Sign"], _FI),
    **dict.fromkeys(["SpaceToDepth", "Sub", "Sum", "TopK", "Pad"], _FI),
    **dict.fromkeys(
        [f"Reduce{k}" for k in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum")], _FI
    ),
    "ReduceSumSquare": _FI,
    **dict.fromkeys(["Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool"], _F),
    **dict.fromkeys(["BatchNormalization", "Ceil", "Celu", "Clip", "Conv", "ConvTranspose", "Cos"], _F),
    **dict.fromkeys(["Cosh", "CumSum", "Dropout", "Einsum", "Elu", "Erf", "Exp", "Floor", "Gemm"], _F),
    **dict.fromkeys(["GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization"], _F),
    **dict.fromkeys(["GRU", "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler", "IsInf"], _F),
    **dict.fromkeys(["InstanceNormalization", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax"], _F),
    **dict.fromkeys(["LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "MaxPool"], _F),
    **dict.fromkeys(["MeanVarianceNormalization", "ParametricSoftplus", "PRelu", "QuantizeLinear"], _F),
    **dict.fromkeys(["RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"], _F),
    **dict.fromkeys(["Reciprocal", "Resize", "RMSNormalization", "RNN", "RotaryEmbedding", "Round"], _F),
    **dict.fromkeys(["ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus"], _F),
    **dict.fromkeys(["Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample", "Attention"], _F),
    **dict.fromkeys(["Concat", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND"], _FIB),
    **dict.fromkeys(
        ["Identity", "If", "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape", "Size"], _FIB
    ),
    **dict.fromkeys(["Slice", "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where"], _FIB),
    **dict.fromkeys(["Cast", "CastLike"], (*_FIB, "UINT8")),
    **dict.fromkeys(["Constant", "ConstantOfShape"], (*_FIB, *_Q)),
    **dict.fromkeys(["And", "Not", "Or", "Xor"], _B),
    **dict.fromkeys(["BlackmanWindow", "DeformConv", "GridSample", "HammingWindow", "HannWindow"], _HALF),
    **dict.fromkeys(["Mish", "NonMaxSuppression", "NonZero", "RoiAlign"], _HALF),
    "Gelu": (*_FI, "INT8"),
    "DequantizeLinear": _Q,
    "STFT": ("FP32",),
    "TensorScatter": (*_F, "INT32"),
}
# Listed "N" (not supported) in the same table.
TRT_UNSUPPORTED = frozenset(
    [
        "AffineGrid",
        "Bernoulli",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "Col2Im",
        "CenterCropPad",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "DFT",
        "Det",
        "DynamicQuantizeLinear",
        "ImageDecoder",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MelWeightMatrix",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "RegexFullMatch",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "TfIdfVectorizer",
        "Unique",
    ]
)
# Refused by our own policy though the parser may take them: see the module docstring.
POLICY_REFUSED = {
    "If": "control flow: the graphs are branch-free by design (a Python branch leaked into the export)",
    "Loop": "control flow: the graphs are branch-free by design (a Python loop leaked into the export)",
    "Scan": "control flow: the graphs are branch-free by design",
    "NonZero": "data-dependent output shape (boolean indexing); use arithmetic masks",
    "Unique": "data-dependent output shape",
}
# Restrictions of the support list (and older 10.x lists where stricter) that can bite here.
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
TOPK_MAX_K = 3840

# Inputs that are shape tensors: they must not depend on input values.
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (1, 2, 3, 4),
    "Range": (0, 1, 2),
    "TopK": (1,),
    "ConstantOfShape": (0,),
    "Resize": (2, 3),
    "Upsample": (1,),
    "Pad": (1, 3),
    "OneHot": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Split": (1,),
    "CumSum": (1,),
    **{f"Reduce{k}": (1,) for k in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum")},
    "ReduceSumSquare": (1,),
}
# Inputs that must be build-time constants (initializers after folding).
CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {
    "TopK": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "CumSum": (1,),
    "OneHot": (1,),
    **{f"Reduce{k}": (1,) for k in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum")},
    "ReduceSumSquare": (1,),
}
# Which inputs carry the op's data type T (default: input 0); "out" checks output 0 instead.
_TYPED_INPUTS: dict[str, tuple[int, ...] | str] = {
    "Where": (1, 2),
    "Cast": "out",
    "ConstantOfShape": "out",
    "Shape": (),
    "Size": (),
    "Range": (0, 1, 2),
    **dict.fromkeys(
        ["Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "MatMul", "Gemm"], (0, 1)
    ),
    **dict.fromkeys(["LessOrEqual", "GreaterOrEqual", "Mod", "And", "Or", "Xor", "Conv"], (0, 1)),
}
ONNX_TO_TRT = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.BOOL: "BOOL",
    TensorProto.DOUBLE: "DOUBLE",
}
CONTRACT_TO_ONNX = {"FP32": TensorProto.FLOAT, "FP16": TensorProto.FLOAT16, "INT32": TensorProto.INT32}


@dataclass(frozen=True)
class Finding:
    """One reason a graph would not build (or not build as intended) in TensorRT."""

    graph: str
    node: str  # node name, or the tensor name for I/O findings
    op: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.graph}: {self.op} {self.node!r} [{self.rule}] {self.message}"


@dataclass
class LintReport:
    graph: str
    path: Path
    findings: list[Finding] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return not self.findings


def value_dependent_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose values depend on the VALUES of the graph inputs.

    A Shape or Size output depends only on its input's shape, so it and everything computed from it
    and constants alone are shape arithmetic, not data.
    """
    dependent = {i.name for i in graph.input}
    for node in graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        if any(name in dependent for name in node.input if name):
            dependent.update(o for o in node.output if o)
    return dependent


def simplify_model(model: onnx.ModelProto, max_passes: int = 3) -> onnx.ModelProto:
    """Constant-fold (shapes included), clean up and sort, until nothing changes; then infer shapes."""
    for _ in range(max_passes):
        before = len(model.graph.node)
        graph = gs.import_onnx(model)
        graph.fold_constants(fold_shapes=True, error_ok=False)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        model = gs.export_onnx(graph)
        if len(model.graph.node) == before:
            break
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def simplified_path(source: Path) -> Path:
    """The simplified graph of ``source``, made once and cached beside it (``simplified/<name>``)."""
    target = source.parent / "simplified" / source.name
    stamp = target.with_suffix(".json")
    key = {"source_sha256": file_sha256(source), "simplifier": SIMPLIFIER_VERSION, "onnx": onnx.__version__}
    if target.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(simplify_model(onnx.load(str(source))), str(target))
    stamp.write_text(json.dumps(key, indent=2))
    return target


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _check_attributes(node: onnx.NodeProto, constants: dict[str, np.ndarray], used: set[str]) -> list[str]:
    """Messages for the per-op restrictions of the support list that ``node`` breaks."""
    op, problems = node.op_type, []
    if op == "Resize":
        mode = _attr(node, "mode", "nearest")
        if mode not in RESIZE_MODES:
            problems.append(f"mode {mode!r}: TensorRT resizes {sorted(RESIZE_MODES)} only")
        coordinates = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if coordinates not in RESIZE_COORDINATES:
            problems.append(f"coordinate_transformation_mode {coordinates!r} is not supported")
        if mode == "nearest" and _attr(node, "nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST:
            problems.append(f"nearest_mode {_attr(node, 'nearest_mode')!r} is not supported")
        if _attr(node, "antialias", 0):
            problems.append("antialias is not supported")
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            problems.append("keep_aspect_ratio_policy other than 'stretch' is not supported")
        axes = _attr(node, "axes")
        if axes is not None and list(axes) != list(range(len(axes))):
            problems.append(f"axes {axes} must be an iota vector")
    elif op == "Einsum":
        equation = str(_attr(node, "equation", ""))
        if len([i for i in node.input if i]) > 2:
            problems.append(f"{len(node.input)} inputs ({equation!r}): TensorRT takes 2; write matmuls")
        if "..." in equation:
            problems.append(f"ellipsis in {equation!r} is not supported")
        if any(len(set(term)) != len(term) for term in equation.split("->")[0].split(",")):
            problems.append(f"diagonal (repeated index) in {equation!r} is not supported")
    elif op == "TopK":
        k = constants.get(node.input[1])
        if k is not None and int(k.reshape(-1)[0]) >= TOPK_MAX_K:
            problems.append(f"K = {int(k.reshape(-1)[0])} must be < {TOPK_MAX_K}")
        if _attr(node, "sorted", 1) != 1:
            problems.append("sorted must be 1")
    elif op in ("AveragePool", "MaxPool", "LpPool"):
        kernel = _attr(node, "kernel_shape", [])
        if len(kernel) not in (2, 3):
            problems.append(f"{len(kernel)}D pooling: TensorRT pools 2D or 3D only")
        if any(d != 1 for d in _attr(node, "dilations", None) or []):
            problems.append("dilations must be all ones")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1] in used:
            problems.append("the Indices output is not supported")
    elif op == "LayerNormalization" and any(o in used for o in node.output[1:]):
        problems.append("only the first output Y is supported")
    elif op == "ScatterND" and _attr(node, "reduction", "none") != "none":
        problems.append(f"reduction {_attr(node, 'reduction')!r}: only 'none' is supported")
    elif op == "Dropout" and len(node.input) > 2 and node.input[2]:
        training = constants.get(node.input[2])
        if training is None or bool(training):
            problems.append("is_training must be an initializer that is False")
    elif op == "Constant" and any(
        a.name in ("sparse_value", "value_string", "value_strings") for a in node.attribute
    ):
        problems.append("sparse or string constants are not supported")
    elif op == "Cast" and ONNX_TO_TRT.get(int(_attr(node, "to", 0))) not in TRT_SUPPORT["Cast"]:
        problems.append(f"cast to {TensorProto.DataType.Name(int(_attr(node, 'to', 0)))} is not supported")
    return problems


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weightless copy for shape inference: large initializers keep dims and type, lose data;
    declared output shapes are cleared so that inference says what the graph computes."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    for output in model.graph.output:
        cleared = graph.output.add()
        cleared.CopyFrom(output)
        cleared.type.tensor_type.ClearField("shape")
    for init in model.graph.initializer:
        if _small(init):
            graph.initializer.append(init)
        else:
            stub = graph.initializer.add()  # dims and type only: shape inference reads no values
            stub.name, stub.data_type = init.name, init.data_type
            stub.dims.extend(init.dims)
    return onnx.shape_inference.infer_shapes(skeleton, strict_mode=True, data_prop=True)


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
        for d in value.type.tensor_type.shape.dim
    ]


def _where_lost(inferred: onnx.ModelProto, tensor: str, expected: int | str) -> str:
    """Walk back from ``tensor`` along its data path to the node whose input still carries the
    contract's ``expected`` size or axis name and whose output no longer does."""
    graph = inferred.graph
    shapes = {v.name: _dims(v) for v in (*graph.input, *graph.value_info, *graph.output)}
    producer = {o: n for n in graph.node for o in n.output}
    path: list[str] = []
    current = tensor
    while current in producer and len(path) < 64:
        node = producer[current]
        path.append(f"{node.op_type} {node.name!r}")
        data = [i for i in node.input if i in shapes and len(shapes[i]) > 1]
        if not data:
            break
        if any(expected in shapes[i] for i in data):
            return f"{expected!r} disappears at {node.op_type} {node.name!r}"
        current = data[0]
    return f"{expected!r} not found upstream along " + " <- ".join(path[:6])


def _check_io(model: onnx.ModelProto, name: str, step: StepSpec) -> list[Finding]:
    """Graph inputs/outputs against the contract: names, dtypes, and every dim (as shape inference
    derives it, declared output shapes aside) the contract's fixed size or its named axis."""
    findings = []
    inferred = _skeleton(model)
    declared = {t.name: t for t in (*step.inputs, *step.outputs)}
    actual = {v.name: v for v in (*inferred.graph.input, *inferred.graph.output)}
    for missing in sorted(set(declared) - set(actual)):
        findings.append(
            Finding(name, missing, "io", "contract", "declared by the contract, absent in the graph")
        )
    for tensor_name, value in actual.items():
        spec = declared.get(tensor_name)
        if spec is None:
            findings.append(Finding(name, tensor_name, "io", "contract", "not declared by the contract"))
            continue
        want = CONTRACT_TO_ONNX.get(spec.dtype)
        if want is not None and value.type.tensor_type.elem_type != want:
            have = TensorProto.DataType.Name(value.type.tensor_type.elem_type)
            findings.append(
                Finding(name, tensor_name, "io", "dtype", f"{have}, the contract says {spec.dtype}")
            )
        dims = _dims(value)
        if len(dims) != len(spec.shape):
            findings.append(
                Finding(name, tensor_name, "io", "rank", f"rank {len(dims)}, contract {spec.shape}")
            )
            continue
        for axis, (got, expected) in enumerate(zip(dims, spec.shape, strict=True)):
            if got == expected:
                continue
            why = "unknown" if got is None or str(got).startswith("unk__") else repr(got)
            origin = _where_lost(inferred, tensor_name, expected)
            findings.append(
                Finding(
                    name,
                    tensor_name,
                    "io",
                    "dynamic-axes",
                    f"axis {axis} is {why} after shape inference; the contract declares {expected!r} "
                    f"(shape {spec.shape}); {origin}",
                )
            )
    return findings


def lint_model(model: onnx.ModelProto, name: str, step: StepSpec | None = None) -> list[Finding]:
    """Every TensorRT-readiness finding of a (simplified, shape-inferred) model."""
    graph = model.graph
    findings: list[Finding] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        findings.append(Finding(name, "model", "opset", "opset", f"opset {opset} outside {OPSET_RANGE}"))
    types: dict[str, int] = {i.name: i.data_type for i in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    constants: dict[str, np.ndarray] = {
        i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if _small(i)
    }
    initializers = {i.name for i in graph.initializer}
    dependent = value_dependent_tensors(graph)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for node in graph.node:
        op, label = node.op_type, node.name or f"<{node.op_type} -> {node.output[0]}>"

        def add(rule: str, message: str, op: str = op, label: str = label) -> None:
            findings.append(Finding(name, label, op, rule, message))

        if node.domain not in ("", "ai.onnx"):
            add("operator", f"custom domain {node.domain!r}: needs a TensorRT plugin")
            continue
        if op in POLICY_REFUSED:
            add("policy", POLICY_REFUSED[op])
        if op in TRT_UNSUPPORTED or op not in TRT_SUPPORT:
            add("operator", "not supported by the TensorRT ONNX parser (10.x/11.x support list)")
            continue
        for problem in _check_attributes(node, constants, used):
            add("restriction", problem)
        for slot in SHAPE_INPUTS.get(op, ()):
            if slot < len(node.input) and node.input[slot] in dependent:
                add("data-dependent-shape", f"input {slot} ({node.input[slot]!r}) depends on input values")
        for slot in CONSTANT_INPUTS.get(op, ()):
            if slot < len(node.input) and node.input[slot] and node.input[slot] not in initializers:
                add("constant-input", f"input {slot} ({node.input[slot]!r}) must be a build-time constant")
        slots = _TYPED_INPUTS.get(op, (0,))
        tensors = node.output[:1] if slots == "out" else [node.input[i] for i in slots if i < len(node.input)]
        for tensor in tensors:
            type_name = ONNX_TO_TRT.get(types.get(tensor, 0))
            if tensor and type_name is not None and type_name not in TRT_SUPPORT[op]:
                rule = "int64" if type_name == "INT64" else "dtype"
                add(rule, f"{tensor!r} is {type_name}; TensorRT's {op} takes {', '.join(TRT_SUPPORT[op])}")
        for tensor in (*node.input, *node.output):
            elem = types.get(tensor)
            if tensor and elem is not None and elem not in ONNX_TO_TRT:
                add("dtype", f"{tensor!r} is {TensorProto.DataType.Name(elem)}: not a TensorRT type")
            elif elem == TensorProto.DOUBLE:
                add("dtype", f"{tensor!r} is DOUBLE: TensorRT casts it to FLOAT with clamping")
    for value in (*graph.input, *graph.output):
        if value.type.tensor_type.elem_type in (TensorProto.INT64, TensorProto.DOUBLE):
            kind = TensorProto.DataType.Name(value.type.tensor_type.elem_type)
            findings.append(
                Finding(
                    name,
                    value.name,
                    "io",
                    "int64",
                    f"{kind} graph input/output: the engine I/O is INT32/FP32",
                )
            )
    if step is not None:
        findings.extend(_check_io(model, name, step))
    return findings


def _small(tensor: TensorProto) -> bool:
    size = 1
    for d in tensor.dims:
        size *= d
    return size <= 64


def lint_file(path: Path, step: StepSpec | None = None, *, simplify: bool = True) -> LintReport:
    """Lint one graph file (simplified first, through the disk cache, unless ``simplify`` is False)."""
    start = time.perf_counter()
    source = simplified_path(path) if simplify else path
    model = onnx.load(str(source), load_external_data=False)
    if not simplify:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    name = step.name if step is not None else path.stem
    findings = lint_model(model, name, step)
    ops = Counter(n.op_type for n in model.graph.node)
    return LintReport(
        graph=name,
        path=path,
        findings=findings,
        ops=dict(sorted(ops.items())),
        nodes=len(model.graph.node),
        seconds=time.perf_counter() - start,
    )


def graph_paths(variant: str, onnx_dir: Path, precision: str) -> dict[str, Path]:
    """The graph files of one variant and precision ("fp32": run_export's, "fp16": fp16.py's)."""
    directory = Path(onnx_dir) / variant / (FP16_SUBDIR if precision == "fp16" else "")
    return {g: directory / f"{g}.onnx" for g in graph_names(MODEL_CONFIGS[variant])}


def lint_variant(
    variant: str, onnx_dir: Path = DEFAULT_ONNX_DIR, precision: str = "fp32", *, progress: bool = True
) -> list[LintReport]:
    specs = step_specs(MODEL_CONFIGS[variant])
    paths = graph_paths(variant, onnx_dir, precision)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"not exported: {missing}")
    reports = []
    bar = tqdm(paths.items(), desc=f"lint {variant} {precision}", unit="graph", disable=not progress)
    for graph, path in bar:
        bar.set_postfix_str(graph)
        reports.append(lint_file(path, specs[graph]))
    return reports


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=list(MODEL_CONFIGS), nargs="+", default=["escnet_vitb16_384"])
    parser.add_argument("--precision", choices=["fp32", "fp16"], nargs="+", default=["fp32", "fp16"])
    parser.add_argument("--onnx-dir", type=Path, default=DEFAULT_ONNX_DIR)
    args = parser.parse_args(list(argv) if argv is not None else None)
    failed = 0
    for variant in args.variant:
        for precision in args.precision:
            for report in lint_variant(variant, args.onnx_dir, precision):
                state = "ok" if report else f"{len(report.findings)} finding(s)"
                print(f"{variant} {precision} {report.graph}: {report.nodes} nodes, {state}")
                for finding in report.findings:
                    print(f"  {finding}")
                failed += len(report.findings)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
