"""A missing or corrupt graph, or a plan that is not this project's or no longer its own, stops the
start with a message naming the file and the fix; a graph that passes the quick look but does not
load stops the server with the model, the folder and the fix in the error.

The quick checks (check_model_repository) need no server. The TensorRT version and GPU checks of a
plan (tensorrt_engines.check_plan) run where TensorRT is importable; their refusals are tested on
synthetic plans in parity_tests/export/engines/test_tensorrt_engines.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from triton_fixtures import needs_server

from escnet.config import MODEL_CONFIGS
from escnet_export.contract import step_specs
from escnet_export.triton_serving.configs import model_module, step_config
from escnet_export.triton_serving.model_files import (
    BrokenModelFile,
    ModelRepositoryNotBuilt,
    check_model_repository,
)
from escnet_export.triton_serving.repository import model_py_text
from escnet_export.triton_serving.server import TritonServer

VARIANT = "catseg_vitb16_384"
GRAPH = "decoder"  # a small graph of the chain


def graph_repository(root: Path, graph: bytes | None, runtime: str = "onnxruntime") -> Path:
    """A repository of one graph model (catseg_decoder) holding ``graph`` as its graph file."""
    config = MODEL_CONFIGS[VARIANT]
    step = step_specs(config)[GRAPH]
    version = root / f"catseg_{GRAPH}" / "1"
    version.mkdir(parents=True)
    (version.parent / "config.pbtxt").write_text(step_config("catseg", config, step, runtime))
    if runtime == "onnxruntime":
        (version / "model.py").write_text(model_py_text(model_module(step)))
    if graph is not None:
        (version / ("model.onnx" if runtime == "onnxruntime" else "model.plan")).write_bytes(graph)
    return root


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (None, r"no graph \(1/model.onnx or 1/model.plan\) for catseg_decoder"),
        (b"", r"catseg_decoder/1/model.onnx .* is empty: re-export the graph"),
        (b"<html>not found</html>", r"catseg_decoder/1/model.onnx .* is not an ONNX model"),
    ],
    ids=["missing", "empty", "not ONNX"],
)
def test_missing_or_corrupt_onnx_is_refused(tmp_path: Path, graph: bytes | None, message: str) -> None:
    repository = graph_repository(tmp_path, graph)
    with pytest.raises(ModelRepositoryNotBuilt, match=message) as error:
        check_model_repository(repository)
    assert "python -m escnet_export.triton_serving.repository" in str(error.value)


def test_onnx_behind_a_dangling_link_is_missing(tmp_path: Path) -> None:
    repository = graph_repository(tmp_path, None)
    (repository / f"catseg_{GRAPH}" / "1" / "model.onnx").symlink_to(tmp_path / "gone.onnx")
    with pytest.raises(ModelRepositoryNotBuilt, match="no graph"):
        check_model_repository(repository)


def _write_sidecar(plan: Path, sha256: str) -> None:
    plan.with_name("model.plan.json").write_text(json.dumps({"plan_sha256": sha256}))


@pytest.mark.parametrize("case", ["no metadata", "replaced", "unreadable metadata", "empty"])
def test_plans_not_matching_their_metadata_are_refused(tmp_path: Path, case: str) -> None:
    content = b"" if case == "empty" else b"a plan, built elsewhere"
    repository = graph_repository(tmp_path, content, runtime="tensorrt")
    plan = repository / f"catseg_{GRAPH}" / "1" / "model.plan"
    if case == "replaced":
        _write_sidecar(plan, hashlib.sha256(b"the plan it was").hexdigest())
    elif case == "unreadable metadata":
        plan.with_name("model.plan.json").write_text("{")
    expected = {
        "no metadata": "has no metadata",
        "replaced": "does not match its metadata",
        "unreadable metadata": "unreadable",
        "empty": "is empty",
    }[case]
    with pytest.raises(BrokenModelFile, match=expected) as error:
        check_model_repository(repository)
    assert str(plan) in str(error.value) or str(plan.with_name("model.plan.json")) in str(error.value)
    assert "python -m escnet_export.engines.build" in str(error.value)


def test_plan_matching_its_metadata_passes_the_quick_check(tmp_path: Path) -> None:
    from escnet_export.engines.plans import tensorrt_unavailable

    if tensorrt_unavailable() is None:
        pytest.skip("with TensorRT, check_plan also needs full metadata (tested in test_tensorrt_engines.py)")
    repository = graph_repository(tmp_path, b"a plan", runtime="tensorrt")
    plan = repository / f"catseg_{GRAPH}" / "1" / "model.plan"
    _write_sidecar(plan, hashlib.sha256(b"a plan").hexdigest())
    assert check_model_repository(repository) == [f"catseg_{GRAPH}"]


def test_server_start_refuses_a_corrupt_graph_before_starting(tmp_path: Path) -> None:
    repository = graph_repository(tmp_path / "repo", b"\x00garbage")
    server = TritonServer(repository, log_path=tmp_path / "log")
    with pytest.raises(BrokenModelFile, match="model.onnx .* is not an ONNX model"):
        server.start(timeout_s=30)
    assert not server.running and not (tmp_path / "log").exists()


@pytest.mark.triton
@needs_server
def test_a_graph_that_does_not_load_stops_the_server_with_the_fix(tmp_path: Path) -> None:
    # Passes the quick look (starts like a ModelProto), fails in onnxruntime.
    repository = graph_repository(tmp_path / "repo", b"\x08\x07" + b"\xff" * 64)
    server = TritonServer(repository, log_path=tmp_path / "log", exit_timeout_s=5)
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 1") as error:
        server.start(timeout_s=180)
    message = str(error.value)
    print(f"\n{message[-1500:]}")
    assert "catseg_decoder: could not load from" in message
    assert "model.onnx" in message
    assert "python -m escnet_export.onnx_graphs.export --variant catseg_vitb16_384" in message
    assert not server.running
