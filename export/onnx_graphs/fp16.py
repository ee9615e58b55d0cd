"""FP16 graphs from the exported FP32 ones.

``python -m escnet_export.onnx_graphs.fp16 --variant escnet_vitb16_384``

Writes ``<onnx_dir>/<variant>/fp16/<graph>.onnx`` beside the FP32 graphs, cached by the sha256 of
the FP32 file and of this module (a change of the precision policy rebuilds). Inputs and outputs
stay FP32, so the contract, the Triton configs and every caller are unchanged; the casts are
explicit Cast nodes in the graph, which is what a strongly typed TensorRT build (TensorRT 11 has no
other kind) needs: precision is decided here, in the graph, and nowhere else.

The precision policy, node by node, in graph order:

- COMPUTE ops (MatMul, Gemm, Conv, ConvTranspose, pooling, activations) run in FP16: that is where
  the time goes, and TensorRT accumulates their products in FP32 anyway.
- KEPT ops run in FP32 whatever feeds them (each with its reason in ``KEEP_FP32``): LayerNorm,
  InstanceNorm (GroupNorm), softmax, every reduction, exponentials, powers and roots.
- The FP32 islands around them, found by pattern: the centring ``x - mean`` of a decomposed LayerNorm
  (SAM's LayerNorm2d), any division whose divisor is FP32 (the L2 normalise ``x / max(||x||, eps)``,
  LayerNorm's ``/ sqrt(var + eps)``, linear attention's ``/ (phi(q) . sum phi(k) + eps)``), and the
  arguments of Sin/Cos (SAM's random-Fourier positional encoding: phases of tens of radians, where
  FP16's spacing of 1/32 rad would shift every position).
- Everything else (element-wise arithmetic, layout ops, comparisons, Where, Concat) follows its
  inputs: FP32 while every non-constant float input is FP32, else FP16. So FP16 starts at the first
  compute op and stops at the next kept op, with one cast at each boundary.
- Shape arithmetic (nodes whose inputs derive only from constants and Shape ops) stays FP32: its
  float values are sizes, and FP16 is exact only up to 2048.
- Explicit casts to FLOAT in the source graph (a ``.float()`` in the model) are honoured.

Constants are converted per consumer (an FP16 copy for FP16 consumers, clamped to +-65504); Resize's
``roi``/``scales`` stay FLOAT as the ONNX spec requires. The result passes onnx.checker and strict
shape inference, which also proves every node's input types agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from escnet.config import MODEL_CONFIGS
from escnet_export.artifacts import DEFAULT_ONNX_DIR, FP16_SUBDIR, file_sha256
from escnet_export.contract import graph_names
from escnet_export.onnx_graphs.trt_lint import value_dependent_tensors

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)

# Ops kept in FP32 whatever their inputs, with the reason for each.
KEEP_FP32: dict[str, str] = {
    "LayerNormalization": "ViT/SAM LayerNorm: mean and variance over 768 channels lose the small "
    "differences that carry the signal in FP16 (the classic garbage-ViT failure)",
    "InstanceNormalization": "GroupNorm of the decoder: statistics over up to 96x96 cells per group; "
    "FP16 sums of squares overflow or lose precision",
    "GroupNormalization": "as InstanceNormalization",
    "BatchNormalization": "normalisation statistics (folded into Conv in eval exports; kept if present)",
    "Softmax": "exponentials of logits over up to 576 cells / 256 classes: FP16 overflows past 11.1",
    "LogSoftmax": "as Softmax",
    "ReduceMean": "reductions accumulate over hundreds of elements: FP16 sums lose bits or overflow",
    "ReduceSum": "as ReduceMean (linear attention's normaliser, class counts)",
    "ReduceSumSquare": "as ReduceMean",
    "ReduceMax": "the peak correlation that ranks classes for the top-256 cut: ties in FP16 reorder classes",
    "ReduceMin": "as ReduceMax",
    "ReduceProd": "as ReduceMean",
    "ReduceL1": "norm of a feature vector (L2 normalise)",
    "ReduceL2": "norm of a feature vector (the cosine cost volume's L2 normalise)",
    "ReduceLogSum": "as ReduceMean",
    "ReduceLogSumExp": "as Softmax",
    "Exp": "exponentials overflow FP16 past 11.1",
    "Elu": "exp-based feature map of CAT-Seg's linear class attention",
    "Celu": "as Elu",
    "Selu": "as Elu",
    "Softplus": "as Exp",
    "Log": "log of small values: FP16's subnormals start at 6e-5",
    "Pow": "squares of LayerNorm2d's centred values (variance)",
    "Sqrt": "roots of variances and norms",
    "Reciprocal": "1/x of small norms overflows FP16",
    "Sin": "positional-encoding phases of tens of radians (see module docstring)",
    "Cos": "as Sin",
    "Range": "index arithmetic",
}
# Resize in cubic mode: its negative lobes amplify FP16 rounding; linear/nearest are exact enough.
KEEP_FP32_RESIZE_MODES = {"cubic"}

# Ops that run in FP16 unless kept: the heavy arithmetic.
COMPUTE_FP16 = {
    "MatMul",
    "Gemm",
    "Conv",
    "ConvTranspose",
    "AveragePool",
    "MaxPool",
    "GlobalAveragePool",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Einsum",
    "Resize",
}
# Producers walked back from a Sin/Cos argument (the positional-encoding chain).
_PHASE_CHAIN = {
    "Mul",
    "Add",
    "Sub",
    "Div",
    "MatMul",
    "Gemm",
    "Reshape",
    "Transpose",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Cast",
    "Gather",
    "Slice",
    "Expand",
    "Flatten",
    "Neg",
}
_PHASE_DEPTH = 8
# Input slots whose type must not be rewritten: any type is accepted, or the spec fixes FLOAT.
_FIXED_SLOTS: dict[str, set[int] | None] = {
    "Shape": None,  # None: every slot
    "Size": None,
    "Cast": None,
    "CastLike": {0},
    "Resize": {1, 2},  # roi, scales: tensor(float)
}
# A Sub with an input from one of these is the centring x - mean of a decomposed LayerNorm.
_REDUCTIONS_WITH_MEAN = {"ReduceMean"}


@dataclass
class Fp16Report:
    """What one conversion did: nodes per precision and the cast count, for the logs and tests."""

    graph: str
    fp16_nodes: int = 0
    fp32_nodes: int = 0
    casts: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # op type -> nodes kept FP32


def converter_digest() -> str:
    """Hash of this module: part of the cache key, so a policy change rebuilds every FP16 graph."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types: dict[str, int] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.t.data_type
    return types


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _is_kept_op(node: onnx.NodeProto) -> bool:
    if node.op_type == "Resize":
        return _attr(node, "mode", "nearest") in KEEP_FP32_RESIZE_MODES
    return node.op_type in KEEP_FP32


def phase_chain(graph: onnx.GraphProto) -> set[str]:
    """Names of the nodes computing Sin/Cos arguments, walked back at most _PHASE_DEPTH producers."""
    constants = {i.name for i in graph.initializer}
    constants.update(n.output[0] for n in graph.node if n.op_type == "Constant")
    producer = {o: n for n in graph.node for o in n.output}
    marked: set[str] = set()
    frontier = [(name, 0) for n in graph.node if n.op_type in ("Sin", "Cos") for name in n.input[:1]]
    while frontier:
        tensor, depth = frontier.pop()
        node = producer.get(tensor)
        if node is None or tensor in constants or depth >= _PHASE_DEPTH or node.name in marked:
            continue
        if node.op_type not in _PHASE_CHAIN:
            continue
        marked.add(node.name)
        frontier.extend((name, depth + 1) for name in node.input if name)
    return marked


def assign_precisions(model: onnx.ModelProto) -> dict[str, int]:
    """Node name -> FLOAT or FLOAT16: the precision each node computes in (module docstring)."""
    graph = model.graph
    types = _elem_types(model)
    constants = {i.name for i in graph.initializer}
    constants.update(n.output[0] for n in graph.node if n.op_type == "Constant")
    dependent = value_dependent_tensors(graph)
    phases = phase_chain(graph)
    producer_op = {o: n.op_type for n in graph.node for o in n.output}
    domain: dict[str, int] = {i.name: FLOAT for i in graph.input}  # tensor -> precision it is in
    precision: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        floats = [
            name
            for name in node.input
            if name and name not in constants and types.get(name) in (FLOAT, FLOAT16)
        ]
        data = [name for name in node.input if name in dependent]
        if not data or node.name in phases or _is_kept_op(node):
            chosen = FLOAT
        elif node.op_type == "Cast":
            chosen = FLOAT  # an explicit cast to FLOAT in the model is honoured
        elif node.op_type in COMPUTE_FP16:
            chosen = FLOAT16
        elif node.op_type == "Gather" and node.input[0] in constants and types.get(node.input[0]) == FLOAT:
            chosen = FLOAT16  # a lookup in a weight table (token embeddings): a weight like any other
        elif node.op_type == "Div" and domain.get(node.input[1]) == FLOAT:
            chosen = FLOAT  # x / an FP32 quantity (a norm, a root, a sum): normalisations
        elif node.op_type == "Sub" and any(producer_op.get(n) in _REDUCTIONS_WITH_MEAN for n in floats):
            chosen = FLOAT  # x - mean of a decomposed LayerNorm
        else:
            chosen = FLOAT if all(domain.get(name, FLOAT) == FLOAT for name in floats) else FLOAT16
        precision[node.name] = chosen
        for output in node.output:
            if types.get(output) == FLOAT:
                domain[output] = chosen
    return precision


def _fp16_tensor(tensor: TensorProto, name: str) -> TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float64)
    finite = np.isfinite(values)
    values[finite] = np.clip(values[finite], -FP16_MAX, FP16_MAX)
    return numpy_helper.from_array(values.astype(np.float16), name)


def _unique_names(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}__{index}"
        seen.add(node.name)


def convert_model(model: onnx.ModelProto, name: str = "graph") -> tuple[onnx.ModelProto, Fp16Report]:
    """The FP16 graph of an FP32 model (FP32 inputs and outputs, explicit casts; module docstring)."""
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in model.graph.node
        for a in n.attribute
    ):
        raise NotImplementedError(f"{name}: graphs with subgraphs (If/Loop/Scan) are not converted")
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    _unique_names(model)
    graph = model.graph
    types = _elem_types(model)
    precision = assign_precisions(model)
    report = Fp16Report(graph=name)
    initializers = {i.name: i for i in graph.initializer}
    constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    outputs = {o.name for o in graph.output}

    # Tensor precision after conversion: graph inputs and constants stay FLOAT; node outputs follow.
    domain: dict[str, int] = {}
    for node in graph.node:
        for output in node.output:
            if types.get(output) == FLOAT and node.op_type != "Constant":
                domain[output] = precision[node.name]

    new_nodes: list[onnx.NodeProto] = []
    new_initializers: dict[str, TensorProto] = {}
    converted: dict[tuple[str, int], str] = {}  # (tensor, precision) -> name in that precision

    def in_precision(tensor: str, want: int) -> str:
        have = domain.get(tensor, FLOAT)
        if have == want:
            return tensor
        key = (tensor, want)
        if key in converted:
            return converted[key]
        suffix = "fp16" if want == FLOAT16 else "fp32"
        if tensor in initializers or tensor in constant_nodes:
            source = initializers.get(tensor)
            if source is None:
                source = next(a.t for a in constant_nodes[tensor].attribute if a.name == "value")
            new_name = f"{tensor}__{suffix}"
            new_initializers[new_name] = _fp16_tensor(source, new_name)
        else:
            new_name = f"{tensor}__{suffix}"
            new_nodes.append(
                helper.make_node("Cast", [tensor], [new_name], name=f"{new_name}__cast", to=want)
            )
            report.casts += 1
        converted[key] = new_name
        return new_name

    for node in graph.node:
        if node.op_type == "Constant":
            new_nodes.append(node)
            continue
        want = precision[node.name]
        fixed = _FIXED_SLOTS.get(node.op_type, set())
        for slot, tensor in enumerate(node.input):
            if not tensor or types.get(tensor) != FLOAT or fixed is None or slot in fixed:
                continue
            node.input[slot] = in_precision(tensor, want)
        if want == FLOAT16:
            report.fp16_nodes += 1
        else:
            report.fp32_nodes += 1
            if _is_kept_op(node):
                report.kept[node.op_type] = report.kept.get(node.op_type, 0) + 1
        new_nodes.append(node)
        # An FP16 result that is a graph output is written under a new name and cast back to FP32;
        # FP16 consumers of it keep reading the FP16 tensor.
        for index, output in enumerate(node.output):
            if output in outputs and domain.get(output) == FLOAT16:
                node.output[index] = f"{output}__fp16"
                converted[(output, FLOAT16)] = node.output[index]
                domain[output] = FLOAT
                cast = helper.make_node(
                    "Cast", [node.output[index]], [output], name=f"{output}__cast", to=FLOAT
                )
                new_nodes.append(cast)
                report.casts += 1

    # Initializers used only through their FP16 copy are dropped. Nodes stay in graph order: every
    # cast was placed right before its first consumer, after its producer.
    used = {name for node in new_nodes for name in node.input} | outputs
    new_nodes = [n for n in new_nodes if n.op_type != "Constant" or n.output[0] in used]
    kept_initializers = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend([*kept_initializers, *new_initializers.values()])
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model, report


def convert_file(source: Path, target: Path, name: str | None = None) -> Fp16Report:
    """Convert one FP32 .onnx file to FP16 and check it (onnx.checker, strict shape inference)."""
    model, report = convert_model(onnx.load(str(source)), name or source.stem)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    onnx.checker.check_model(str(target), full_check=True)
    return report


def _manifest_entry(source: Path) -> dict[str, str]:
    return {"source_sha256": file_sha256(source), "converter": converter_digest()}


def export_fp16(
    variant: str,
    onnx_dir: Path = DEFAULT_ONNX_DIR,
    *,
    graphs: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """FP16 copies of a variant's exported graphs: graph -> ``<onnx_dir>/<variant>/fp16/<graph>.onnx``.

    A graph is converted again only when its FP32 file or this converter changed.
    """
    source_dir = Path(onnx_dir) / variant
    target_dir = source_dir / FP16_SUBDIR
    wanted = list(graphs or graph_names(MODEL_CONFIGS[variant]))
    missing = [g for g in wanted if not (source_dir / f"{g}.onnx").is_file()]
    if missing:
        raise FileNotFoundError(
            f"FP32 graphs of {variant} not exported: {missing} in {source_dir}. "
            f"Run: python -m escnet_export.onnx_graphs.export --variant {variant} --out {onnx_dir}"
        )
    manifest_path = target_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    result: dict[str, Path] = {}
    bar = tqdm(wanted, desc=f"fp16 {variant}", unit="graph", disable=not progress)
    for graph in bar:
        bar.set_postfix_str(graph)
        source, target = source_dir / f"{graph}.onnx", target_dir / f"{graph}.onnx"
        entry = _manifest_entry(source)
        cached = manifest.get(graph, {})
        if target.is_file() and all(cached.get(k) == v for k, v in entry.items()):
            result[graph] = target
            continue
        start = time.perf_counter()
        report = convert_file(source, target, graph)
        manifest[graph] = {
            **entry,
            "seconds": round(time.perf_counter() - start, 2),
            "fp16_nodes": report.fp16_nodes,
            "fp32_nodes": report.fp32_nodes,
            "casts": report.casts,
            "kept_fp32": report.kept,
        }
        target_dir.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=2))
        result[graph] = target
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=list(MODEL_CONFIGS), default="escnet_vitb16_384")
    parser.add_argument("--onnx-dir", type=Path, default=DEFAULT_ONNX_DIR, help="run_export's --out")
    parser.add_argument("--graphs", nargs="*", help="only these graphs")
    args = parser.parse_args(argv)
    paths = export_fp16(args.variant, args.onnx_dir, graphs=args.graphs)
    print(json.dumps({"variant": args.variant, "graphs": {k: str(v) for k, v in paths.items()}}, indent=2))


if __name__ == "__main__":
    main()
