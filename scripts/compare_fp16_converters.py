"""Our FP16 converter (export/onnx_graphs/fp16.py) against onnxruntime's
(``onnxruntime.transformers.float16.convert_float_to_float16``), on the same graphs and real inputs.

    python scripts/compare_fp16_converters.py [--variants escnet_vitb16_384 catseg_vitb16_384]
                                              [--onnx-dir artifacts/onnx] [--out PATH]

The FP32 chain segments a real photo (scikit-image's astronaut) into a real class list; every
graph's inputs and outputs are recorded. Each graph is then converted both ways, onnxruntime's with
``keep_io_types=True`` (FP32 inputs and outputs, as ours) and ``op_block_list`` = our policy's op
types (fp16.KEEP_FP32: what an op-type block list can say; our policy also keeps the divisions by
FP32 norms, the centred values of decomposed LayerNorms and the phase chain of the positional
encodings, which no op-type list can name). Both run in onnxruntime on the CPU on the recorded
inputs; each output is compared with the FP32 output (max |error| of scale, least cosine), and the
Cast nodes and the nodes left in FP32 are counted. Writes one JSON (default
artifacts/parity/fp16_converters.json) and prints a table.

Needs the exported FP32 graphs (python -m escnet_export.onnx_graphs.export --variant <v>).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.transformers.float16 import convert_float_to_float16
from skimage import data

from escnet.config import MODEL_CONFIGS
from escnet_export.artifacts import DEFAULT_ONNX_DIR, write_report
from escnet_export.contract import DEFAULT_VARIANTS, graph_names
from escnet_export.onnx_graphs.fp16 import KEEP_FP32, convert_model
from escnet_export.parity import TOLERANCES, compare_arrays
from escnet_export.runtime.chain import GraphChain
from escnet_export.runtime.runners import GraphRunner

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "artifacts" / "parity" / "fp16_converters.json"
CLASSES = ["person", "rocket, spaceship", "flag", "sky", "wall", "floor", "tree", "grass"]


class Recording:
    """A runner that keeps its (only) call's inputs and outputs."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner
        self.step = runner.step
        self.feeds: dict[str, np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.runner.infer(feeds)
        if not self.feeds:
            self.feeds = {k: v.copy() for k, v in feeds.items()}
            self.outputs = outputs
        return outputs


def record_calls(variant: str, onnx_dir: Path) -> dict[str, Recording]:
    config = MODEL_CONFIGS[variant]
    chain = GraphChain.from_onnx(config, onnx_dir / variant)
    recordings = {name: Recording(runner) for name, runner in chain.runners.items()}
    chain.runners = recordings
    chain.segment(data.astronaut(), CLASSES)
    return recordings


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Cast nodes, and nodes whose first float output is FP32 (after shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.output})
    floats = [t for n in model.graph.node for t in n.output[:1] if types.get(t) in (1, 10)]
    return {
        "nodes": len(model.graph.node),
        "casts": sum(n.op_type == "Cast" for n in model.graph.node),
        "fp32_outputs_share": round(sum(types[t] == 1 for t in floats) / max(len(floats), 1), 3),
    }


def run(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], workdir: Path, name: str
) -> dict[str, np.ndarray]:
    path = workdir / f"{name}.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def compare_graph(graph: str, source: Path, recording: Recording, workdir: Path) -> dict[str, Any]:
    fp32 = onnx.load(str(source))
    converted: dict[str, Any] = {}
    ours, _ = convert_model(fp32, graph)
    converted["ours"] = ours
    try:
        converted["onnxruntime"] = convert_float_to_float16(
            onnx.load(str(source)), keep_io_types=True, op_block_list=sorted(KEEP_FP32)
        )
    except Exception as error:  # the converter's own failure is a result
        converted["onnxruntime"] = f"{type(error).__name__}: {error}"
    row: dict[str, Any] = {"graph": graph}
    for who, model in converted.items():
        if isinstance(model, str):
            row[who] = {"error": model}
            continue
        entry: dict[str, Any] = node_counts(model)
        try:
            outputs = run(model, recording.feeds, workdir, f"{graph}_{who}")
        except Exception as error:
            entry["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            row[who] = entry
            continue
        worst = {"max_abs_of_scale": 0.0, "min_cosine": 1.0, "passed": True}
        for name, expected in recording.outputs.items():
            result = compare_arrays(name, outputs[name], expected, TOLERANCES["fp16_graph"])
            worst["max_abs_of_scale"] = max(
                worst["max_abs_of_scale"], result.max_abs / max(result.scale, 1e-30)
            )
            if result.cosine is not None:
                worst["min_cosine"] = min(worst["min_cosine"], result.cosine)
            worst["passed"] = worst["passed"] and bool(result)
        entry.update({k: round(v, 6) if isinstance(v, float) else v for k, v in worst.items()})
        row[who] = entry
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS.values()))
    parser.add_argument("--onnx-dir", type=Path, default=DEFAULT_ONNX_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "reference": "the FP32 graphs in onnxruntime (CPU) on the inputs the FP32 chain fed them",
        "image": "skimage.data.astronaut()",
        "classes": CLASSES,
        "tolerance": "fp16_graph",
        "variants": {},
    }
    print("| variant | graph | converter | casts | FP32 share | max abs / scale | min cosine | passes |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            recordings = record_calls(variant, args.onnx_dir)
            rows = []
            for graph in graph_names(MODEL_CONFIGS[variant]):
                row = compare_graph(
                    graph, args.onnx_dir / variant / f"{graph}.onnx", recordings[graph], Path(tmp)
                )
                rows.append(row)
                for who in ("ours", "onnxruntime"):
                    e = row[who]
                    if "max_abs_of_scale" not in e:
                        print(
                            f"| {variant} | {graph} | {who} | {e.get('casts', '-')} | - | - | - "
                            f"| {e['error']} |"
                        )
                        continue
                    print(
                        f"| {variant} | {graph} | {who} | {e['casts']} | {e['fp32_outputs_share']} | "
                        f"{e['max_abs_of_scale']:.2e} | {e['min_cosine']:.5f} | {e['passed']} |"
                    )
            report["variants"][variant] = rows
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
