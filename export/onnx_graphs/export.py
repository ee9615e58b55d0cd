"""Export a variant's graphs to ONNX.

``python -m escnet_export.onnx_graphs.export --variant escnet_vitb16_384``

Writes ``<out>/<variant>/<graph>.onnx`` and ``manifest.json``. A graph is re-exported only when the
cache key changes: a hash of the variant's config, the weight files, the exporter settings, torch's
version and the model and export source. Every written graph passes onnx.checker and shape
inference.

Exporter: the TorchScript path (``dynamo=False``). Both paths were measured (see README,
"Exporter"); the TorchScript one honours every declared dynamic axis and writes one
self-contained file per graph.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from tqdm import tqdm

import escnet
from escnet.config import MODEL_CONFIGS
from escnet.registry import build_model
from escnet.segmenter import OpenVocabSegmenter
from escnet_export.artifacts import DEFAULT_ONNX_DIR, file_sha256
from escnet_export.contract import graph_names
from escnet_export.onnx_graphs.wrappers import graph_steps, graph_wrapper, sample_inputs

OPSET = 17
EXPORTER = "torchscript"


@dataclass
class ExportResult:
    variant: str
    directory: Path
    cache_key: str
    graphs: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: bool = False

    def path(self, graph: str) -> Path:
        return self.graphs[graph]


# The code a graph is made of: the model package, less the modules that only run between graphs
# (views, class names, prompts, pseudo points), and the export's own modules that shape graphs.
BETWEEN_GRAPH_MODULES = (
    "image_views.py",
    "view_plan.py",
    "class_names.py",
    "text_prompts.py",
    "pseudo_prompts.py",
)
GRAPH_EXPORT_MODULES = ("contract.py", "onnx_graphs/wrappers.py", "onnx_graphs/export.py")


def _source_digest() -> str:
    digest = hashlib.sha256()
    model_sources = [
        p for p in sorted(Path(escnet.__file__).parent.glob("*.py")) if p.name not in BETWEEN_GRAPH_MODULES
    ]
    export_sources = [Path(__file__).parents[1] / name for name in GRAPH_EXPORT_MODULES]
    for path in [*model_sources, *export_sources]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(variant: str, weights: dict[str, Path | None], opset: int) -> str:
    parts = {
        "config": repr(MODEL_CONFIGS[variant]),
        "weights": {
            name: "none" if path is None else file_sha256(path) for name, path in sorted(weights.items())
        },
        "exporter": EXPORTER,
        "opset": opset,
        "torch": torch.__version__,
        "source": _source_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def export_graph(model: OpenVocabSegmenter, name: str, path: Path, opset: int = OPSET) -> None:
    """Export one graph with its contract names and dynamic axes, then check it."""
    step = graph_steps(model)[name]
    wrapper = graph_wrapper(model, name)
    feeds = sample_inputs(step)
    dynamic_axes = {t.name: t.dynamic_axes for t in (*step.inputs, *step.outputs) if t.dynamic_axes}
    path.parent.mkdir(parents=True, exist_ok=True)
    # nn.MultiheadAttention's fused inference kernel has no ONNX form; the plain path has.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic are expected
        torch.onnx.export(
            wrapper,
            tuple(feeds.values()),
            str(path),
            input_names=step.input_names,
            output_names=step.output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    torch.backends.mha.set_fastpath_enabled(fastpath)
    onnx.checker.check_model(str(path), full_check=True)
    # data_prop: the tracer writes reshapes as Shape -> Gather -> Mul -> Concat; propagating those
    # values is what lets the fixed sizes (24 x 24, 96 x 96) reach the declared outputs.
    onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=True, data_prop=True)


def run_export(
    variant: str,
    out_dir: Path = DEFAULT_ONNX_DIR,
    *,
    checkpoint: Path | None = None,
    clip_checkpoint: Path | None = None,
    sam_checkpoint: Path | None = None,
    graphs: list[str] | None = None,
    opset: int = OPSET,
    model: OpenVocabSegmenter | None = None,
    progress: bool = True,
) -> ExportResult:
    """Export ``graphs`` (default: all of the variant's) and return where they are."""
    weights = {"checkpoint": checkpoint, "clip": clip_checkpoint, "sam": sam_checkpoint}
    key = cache_key(variant, weights, opset)
    directory = Path(out_dir) / variant
    manifest_path = directory / "manifest.json"
    config = MODEL_CONFIGS[variant]
    wanted = graphs or graph_names(config)
    result = ExportResult(variant=variant, directory=directory, cache_key=key)
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("cache_key") != key:
        manifest = {"cache_key": key, "variant": variant, "opset": opset, "exporter": EXPORTER, "graphs": {}}
    todo = [g for g in wanted if g not in manifest["graphs"] or not (directory / f"{g}.onnx").is_file()]
    for name in wanted:
        result.graphs[name] = directory / f"{name}.onnx"
    if not todo:
        result.reused = True
        return result
    if model is None:
        model = build_model(
            variant, checkpoint=checkpoint, clip_checkpoint=clip_checkpoint, sam_checkpoint=sam_checkpoint
        )
    bar = tqdm(todo, desc=f"export {variant}", unit="graph", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        export_graph(model, name, directory / f"{name}.onnx", opset)
        result.seconds[name] = time.perf_counter() - start
        manifest["graphs"][name] = {
            "seconds": round(result.seconds[name], 2),
            "weights": {k: str(v) for k, v in weights.items()},
        }
        manifest_path.write_text(json.dumps(manifest, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=list(MODEL_CONFIGS), default="escnet_vitb16_384")
    parser.add_argument("--out", type=Path, default=DEFAULT_ONNX_DIR)
    parser.add_argument("--checkpoint", type=Path, help="whole-model checkpoint (CAT-Seg official or ours)")
    parser.add_argument("--clip-checkpoint", type=Path, help="OpenAI / open_clip CLIP weights")
    parser.add_argument("--sam-checkpoint", type=Path, help="SAM weights for the ESC blocks")
    parser.add_argument("--graphs", nargs="*", help="only these graphs")
    parser.add_argument("--opset", type=int, default=OPSET)
    args = parser.parse_args(argv)
    result = run_export(
        args.variant,
        args.out,
        checkpoint=args.checkpoint,
        clip_checkpoint=args.clip_checkpoint,
        sam_checkpoint=args.sam_checkpoint,
        graphs=args.graphs,
        opset=args.opset,
    )
    state = "up to date" if result.reused else "exported"
    print(
        json.dumps(
            {
                "variant": result.variant,
                "state": state,
                "cache_key": result.cache_key,
                "graphs": {k: str(v) for k, v in result.graphs.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
