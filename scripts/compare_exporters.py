"""Compare torch.onnx.export's two paths on the project's graphs: TorchScript (dynamo=False, what
escnet_export uses) and dynamo (dynamo=True, torch's default since 2.9).

    python scripts/compare_exporters.py [--variant escnet_vitb16_384] [--graphs prep decoder ...]

Both exporters get the same export wrappers and sample inputs
(escnet_export.onnx_graphs.wrappers.graph_wrapper, sample_inputs: B=2, T=3, N=4, every dynamic
axis > 1) and the contract's dynamic axes: ``dynamic_axes``
for TorchScript, ``dynamic_shapes`` with one named torch.export.Dim per contract axis (shared across
inputs, bounds from the contract's profiles) for dynamo. For each exporter and graph it reports the
export time, success or the error's first line, onnx.checker (full) on the written file, whether every
declared dynamic axis of every input and output is still dynamic (a dim_param) and under which name,
the node count, the size on disk, and the largest ORT-vs-PyTorch difference at sizes other than the
traced ones (B=1, T=7, N=7).

Writes artifacts/benchmarks/exporters.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from escnet.registry import MODEL_CONFIGS, build_model
from escnet.segmenter import OpenVocabSegmenter
from escnet_export.contract import AXIS_PROFILES, StepSpec
from escnet_export.onnx_graphs.export import OPSET
from escnet_export.onnx_graphs.wrappers import graph_steps, graph_wrapper, sample_inputs
from escnet_export.runtime.runners import OrtRunner, TorchRunner

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "artifacts" / "benchmarks" / "exporters.json"
DEFAULT_GRAPHS = [
    "prep",
    "aggregator_1",
    "sam_prompt_decoder_1",
    "decoder",
    "clip_text_encoder",
    "clip_image_encoder",
]
EXPORTERS = ("torchscript", "dynamo")
CHECK_AXES = {"B": 1, "T": 7, "N": 7, "P": 1}  # differ from the traced B=2, T=3, N=4 (P is fixed at 1)


def first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return next((line for line in text.splitlines() if line.strip()), text)[:300]


def dynamic_shapes(step: StepSpec) -> tuple[dict[int, object] | None, ...]:
    """One torch.export.Dim per contract axis name, shared by every input that has that axis.

    An axis whose profile allows a single size (P: 1..1) cannot be a Dim (min < max is required);
    it gets Dim.DYNAMIC and whatever torch.export makes of it is reported.
    """
    dims: dict[str, object] = {}
    for name, profile in AXIS_PROFILES.items():
        if profile.maximum > profile.minimum:
            dims[name] = torch.export.Dim(name, min=profile.minimum, max=profile.maximum)
        else:
            dims[name] = torch.export.Dim.DYNAMIC
    shapes: list[dict[int, object] | None] = []
    for spec in step.inputs:
        axes = {axis: dims[axis_name] for axis, axis_name in spec.dynamic_axes.items()}
        shapes.append(axes or None)
    return tuple(shapes)


def export(exporter: str, wrapper: torch.nn.Module, step: StepSpec, path: Path) -> None:
    feeds = tuple(sample_inputs(step).values())
    common = dict(input_names=step.input_names, output_names=step.output_names, opset_version=OPSET)
    # nn.MultiheadAttention's fused inference kernel has no ONNX form (as in escnet_export).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                axes = {t.name: t.dynamic_axes for t in (*step.inputs, *step.outputs) if t.dynamic_axes}
                torch.onnx.export(
                    wrapper,
                    feeds,
                    str(path),
                    dynamic_axes=axes,
                    dynamo=False,
                    do_constant_folding=True,
                    **common,
                )
            else:
                torch.onnx.export(
                    wrapper,
                    feeds,
                    str(path),
                    dynamic_shapes=dynamic_shapes(step),
                    dynamo=True,
                    external_data=True,
                    optimize=True,
                    **common,
                )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def axes_report(model: onnx.ModelProto, step: StepSpec) -> dict[str, object]:
    """Which declared dynamic axes stayed dynamic, and the names they carry."""
    values = {v.name: v for v in (*model.graph.input, *model.graph.output)}
    lost: list[str] = []
    renamed: list[str] = []
    for spec in (*step.inputs, *step.outputs):
        if spec.name not in values:
            lost.append(f"{spec.name}: not a graph input/output")
            continue
        dims = values[spec.name].type.tensor_type.shape.dim
        for axis, name in spec.dynamic_axes.items():
            dim = dims[axis]
            if not dim.dim_param:
                lost.append(f"{spec.name}[{axis}] ({name}) fixed at {dim.dim_value}")
            elif dim.dim_param != name:
                renamed.append(f"{spec.name}[{axis}] ({name}) named {dim.dim_param!r}")
    return {"all_dynamic_axes_kept": not lost, "lost_axes": lost, "renamed_axes": renamed}


def disk_mib(path: Path) -> float:
    files = [path, *path.parent.glob(path.name + ".data"), *path.parent.glob(path.stem + ".onnx.data")]
    return round(sum(f.stat().st_size for f in set(files) if f.is_file()) / 2**20, 1)


def compare(step: StepSpec, wrapper: torch.nn.Module, path: Path, threads: int) -> dict[str, object]:
    feeds = {k: v.numpy() for k, v in sample_inputs(step, seed=1, axes=CHECK_AXES).items()}
    reference = TorchRunner(step, wrapper).infer(feeds)
    got = OrtRunner(step, path, threads=threads).infer(feeds)
    errors = {}
    for name, expected in reference.items():
        if got[name].shape != expected.shape:
            errors[name] = f"shape {got[name].shape} != {expected.shape}"
            continue
        err = float(np.abs(got[name] - expected).max())
        scale = float(np.abs(expected).max())
        errors[name] = {"max_abs_err": err, "max_abs_ref": scale}
    worst = max((e["max_abs_err"] for e in errors.values() if isinstance(e, dict)), default=None)
    shapes_ok = all(isinstance(e, dict) for e in errors.values())
    return {"check_axes": CHECK_AXES, "ort_vs_torch": errors, "max_abs_err": worst, "shapes_ok": shapes_ok}


def run_one(
    model: OpenVocabSegmenter, name: str, step: StepSpec, exporter: str, directory: Path, threads: int
) -> dict[str, object]:
    path = directory / exporter / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = graph_wrapper(model, name)
    row: dict[str, object] = {"graph": name, "exporter": exporter}
    start = time.perf_counter()
    try:
        export(exporter, wrapper, step, path)
    except Exception as error:  # noqa: BLE001 - a failed export is a result
        row.update(export_s=round(time.perf_counter() - start, 1), ok=False, error=first_line(error))
        traceback.print_exc(limit=2)
        return row
    row.update(export_s=round(time.perf_counter() - start, 1), ok=True, size_mib=disk_mib(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
        row["checker"] = "ok"
    except Exception as error:  # noqa: BLE001
        row["checker"] = first_line(error)
    proto = onnx.load(str(path), load_external_data=False)
    row["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    row["nodes"] = len(proto.graph.node)
    row["function_nodes"] = sum(len(f.node) for f in proto.functions)
    row.update(axes_report(proto, step))
    try:
        row.update(compare(step, wrapper, path, threads))
    except Exception as error:  # noqa: BLE001 - a graph that ORT cannot run at other sizes is a result
        row.update(ort_error=first_line(error), max_abs_err=None)
    return row


def warm_up(directory: Path) -> None:
    """Pay one-time costs (imports, registries) before anything is timed."""
    tiny = torch.nn.Linear(4, 4).eval()
    x = torch.randn(2, 4)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny, (x,), str(directory / "warm_ts.onnx"), dynamo=False)
        batch = torch.export.Dim("batch", min=1, max=8)
        torch.onnx.export(
            tiny, (x,), str(directory / "warm_dy.onnx"), dynamo=True, dynamic_shapes=({0: batch},)
        )


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'graph':22s} {'exporter':11s} {'export':>7s} {'ok':3s} {'opset':>5s} {'checker':8s} "
        f"{'axes kept':10s} {'nodes':>6s} {'MiB':>6s} {'max|ORT-PT|':>12s}  note"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        start = f"{r['graph']:22s} {r['exporter']:11s} {r['export_s']:6.1f}s"
        if not r["ok"]:
            print(f"{start} no  {r['error']}")
            continue
        err = r.get("max_abs_err")
        notes = (r.get("lost_axes") or [])[:2] + (r.get("renamed_axes") or [])[:1]
        note = r.get("ort_error") or "; ".join(notes)
        checker = "ok" if r["checker"] == "ok" else "FAIL"
        kept = "yes" if r["all_dynamic_axes_kept"] else "NO"
        error = "-" if err is None else f"{err:.2e}"
        print(
            f"{start} yes {r['opset']:5d} {checker:8s} {kept:10s} {r['nodes']:6d} {r['size_mib']:6.1f} "
            f"{error:>12s}  {note}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=list(MODEL_CONFIGS), default="escnet_vitb16_384")
    parser.add_argument("--graphs", nargs="+", default=DEFAULT_GRAPHS)
    parser.add_argument("--exporters", nargs="+", choices=EXPORTERS, default=list(EXPORTERS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--keep", type=Path, help="keep the exported graphs in this folder")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model = build_model(args.variant)
    steps = graph_steps(model)
    unknown = [g for g in args.graphs if g not in steps]
    if unknown:
        raise SystemExit(f"{args.variant} has no graphs {unknown}; it has {list(steps)}")

    directory = Path(tempfile.mkdtemp(prefix="exporters_"))
    rows: list[dict] = []
    started = time.perf_counter()
    try:
        warm_up(directory)
        for name in args.graphs:
            for exporter in args.exporters:
                print(f"  {name} / {exporter} ...", flush=True)
                row = run_one(model, name, steps[name], exporter, directory, args.threads)
                rows.append(row)
                print("   ", json.dumps({k: v for k, v in row.items() if k != "ort_vs_torch"}), flush=True)
        if args.keep:
            shutil.copytree(directory, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print()
    print_table(rows)
    report = {
        "variant": args.variant,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "opset_asked": OPSET,
        "traced_axes": "B=2, T=3, N=4, P=1 (escnet_export.onnx_graphs.wrappers.SAMPLE_AXES)",
        "checked_axes": CHECK_AXES,
        "threads": args.threads,
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
