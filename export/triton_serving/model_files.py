"""The model repository's files, checked before a server starts on them.

A repository is built when every model has its config.pbtxt and its graph (1/model.onnx or
1/model.plan); a graph is refused when it is empty, not an ONNX file, or a plan that does not match
its metadata sidecar or this machine. Standard library only (serve.sh runs the launcher as a plain
script); the TensorRT check is used where the project and TensorRT are importable.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

BUILD_REPOSITORY_COMMAND = "python -m escnet_export.triton_serving.repository"
BUILD_ENGINES_COMMAND = "python -m escnet_export.engines.build"
ONNX_FIRST_BYTE = 0x08  # protobuf tag of ModelProto field 1 (ir_version), varint


class ModelRepositoryNotBuilt(RuntimeError):
    """The model repository does not exist or holds no ``<model>/config.pbtxt``."""


class BrokenModelFile(ModelRepositoryNotBuilt):
    """A graph file of the repository is empty, corrupt, or a plan built for another machine."""


def check_model_repository(model_repository: Path) -> list[str]:
    """Return the names of the models in the repository; raise ModelRepositoryNotBuilt if none."""
    repo = Path(model_repository)
    if not repo.is_dir():
        reason = "does not exist" if not repo.exists() else "is not a directory"
        raise ModelRepositoryNotBuilt(
            f"Model repository {repo} {reason}: it is not built. Build it with: {BUILD_REPOSITORY_COMMAND}"
        )
    models = sorted(d.name for d in repo.iterdir() if (d / "config.pbtxt").is_file())
    if not models:
        raise ModelRepositoryNotBuilt(
            f"Model repository {repo} is not built: no <model>/config.pbtxt in it. "
            f"Build it with: {BUILD_REPOSITORY_COMMAND}"
        )
    unbuilt = [name for name in models if _missing_graph(repo / name)]
    if unbuilt:
        listed = ", ".join(unbuilt[:4]) + (" ..." if len(unbuilt) > 4 else "")
        raise ModelRepositoryNotBuilt(
            f"Model repository {repo} is not built: no graph (1/model.onnx or 1/model.plan) for {listed}. "
            f"Build it with: {BUILD_REPOSITORY_COMMAND}"
        )
    for name in models:
        problem = _broken_graph(repo / name)
        if problem is not None:
            raise BrokenModelFile(problem)
    return models


def _graph_kind(model_dir: Path) -> str | None:
    """ "plan" (tensorrt_plan), "onnx" (an ONNX graph, run by a Python model or by Triton's
    onnxruntime backend) or None (no graph)."""
    config = (model_dir / "config.pbtxt").read_text()  # text format: one field per line
    if 'platform: "tensorrt_plan"' in config:
        return "plan"
    if 'platform: "onnxruntime_onnx"' in config:
        return "onnx"
    model_py = model_dir / "1" / "model.py"
    if model_py.is_file() and "onnx_graph" in model_py.read_text():
        return "onnx"
    return None


def _missing_graph(model_dir: Path) -> bool:
    """A graph model (ONNX run by a Python model, or a TensorRT plan) whose graph file is absent."""
    kind = _graph_kind(model_dir)
    if kind == "plan":
        return not (model_dir / "1" / "model.plan").is_file()
    if kind == "onnx":
        return not (model_dir / "1" / "model.onnx").exists()
    return False


def _broken_graph(model_dir: Path) -> str | None:
    """Why a present graph file cannot be served (corrupt, or a plan for another machine), or None."""
    kind = _graph_kind(model_dir)
    if kind == "onnx":
        return _onnx_problem(model_dir / "1" / "model.onnx")
    if kind == "plan":
        return _plan_problem(model_dir / "1" / "model.plan")
    return None


def _onnx_problem(path: Path) -> str | None:
    """A cheap look at an ONNX file: not empty, and a protobuf ModelProto opening with ir_version.

    onnx writes fields in number order, so every graph it serialises starts with field 1
    (ir_version, a varint: byte 0x08). A full parse happens when onnxruntime loads the graph.
    """
    fix = (
        "re-export the graph (python -m escnet_export.onnx_graphs.export), "
        f"then rebuild: {BUILD_REPOSITORY_COMMAND}"
    )
    with open(path, "rb") as handle:
        head = handle.read(2)
    if not head:
        return f"{path} (-> {path.resolve()}) is empty: {fix}"
    if head[0] != ONNX_FIRST_BYTE:
        return f"{path} (-> {path.resolve()}) is not an ONNX model (corrupt or another file): {fix}"
    return None


def _plan_problem(path: Path) -> str | None:
    """A plan against its metadata sidecar (model.plan.json, written by build_engines).

    Where this project and TensorRT are importable, ``tensorrt_engines.check_plan`` also checks the
    TensorRT version and the GPU; without TensorRT only the sidecar and the plan's sha256 are checked.
    """
    fix = f"build the engines on this machine: {BUILD_ENGINES_COMMAND} --repository {path.parents[2]}"
    sidecar = path.with_name(path.name + ".json")
    if path.stat().st_size == 0:
        return f"{path} is empty: {fix}"
    if not sidecar.is_file():
        return f"{path} has no metadata ({sidecar.name}): it was not built by this project; {fix}"
    try:
        expected = json.loads(sidecar.read_text())["plan_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{sidecar} is unreadable ({type(error).__name__}: {error}); {fix}"
    with open(path, "rb") as handle:
        actual = hashlib.file_digest(handle, "sha256").hexdigest()
    if actual != expected:
        return f"{path} does not match its metadata {sidecar.name} (replaced or corrupted): {fix}"
    try:
        from escnet_export.engines.plans import PlanMismatch, check_plan, tensorrt_unavailable
    except ImportError:  # serve.sh on a machine where the project is not installed
        return None
    if tensorrt_unavailable() is not None:
        return None
    try:
        check_plan(path)
    except PlanMismatch as error:
        return str(error)
    return None
