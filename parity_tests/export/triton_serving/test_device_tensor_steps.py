"""The device-tensor path of the Python steps (step_models/base.py), run here on CPU tensors.

With FORCE_CPU_ONLY_INPUT_TENSORS "no" in its config, a step reads its inputs through DLPack as
torch tensors and runs escnet_export.runtime.torch_steps; without it, numpy and runtime.steps. On a
GPU the inputs would be CUDA tensors; here they are CPU tensors, through the same code: a real
tritonserver serves the escnet pseudo_points and postprocess steps with the parameter set, and
their answers are held to the numpy steps'. The torch steps are also held to the numpy steps
directly, without a server.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_support import assert_runs_without_torch
from triton_fixtures import needs_server

from escnet.config import MODEL_CONFIGS
from escnet.view_plan import plan_views
from escnet_export.contract import DEFAULT_VARIANTS, step_specs
from escnet_export.runtime import steps, torch_steps
from escnet_export.triton_serving.configs import model_module, model_name, step_config
from escnet_export.triton_serving.repository import model_py_text
from escnet_export.triton_serving.server import TritonServer

ENSEMBLE = "escnet"
CONFIG = MODEL_CONFIGS[DEFAULT_VARIANTS[ENSEMBLE]]
STEPS = ("pseudo_points", "postprocess")
DEVICE_TENSORS = (
    'parameters {\n  key: "FORCE_CPU_ONLY_INPUT_TENSORS"\n  value {\n    string_value: "no"\n  }\n}\n'
)
T = 3  # classes
IMAGE = (32, 48)  # the request image's height and width; the view plan follows from it
SCORE_TOLERANCE = 1e-5


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """SCORE, LOGITS and VIEW_PLAN of one request at the contract's shapes (views of the protocol)."""
    rng = np.random.default_rng(seed)
    specs = step_specs(CONFIG)
    plan = plan_views(*IMAGE, CONFIG.protocol)
    grid = specs["pseudo_points"].inputs[0].shape[2:]
    logits = specs["postprocess"].inputs[0].shape[2:]
    return {
        "SCORE": rng.standard_normal((plan.num_views, T, *grid)).astype(np.float32),
        "LOGITS": rng.standard_normal((plan.num_views, T, *logits)).astype(np.float32),
        "VIEW_PLAN": plan.encode(),
    }


def _check_pseudo_points(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name in ("POINTS", "POINT_LABELS", "PSEUDO_MASK"):
        assert got[name].dtype == want[name].dtype == np.float32, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _check_postprocess(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[float, float]:
    """(share of equal labels, max |score difference|), after checking both against the bounds."""
    assert got["LABELS"].dtype == want["LABELS"].dtype == np.int32
    assert got["SCORES"].dtype == want["SCORES"].dtype == np.float32
    assert got["LABELS"].shape == want["LABELS"].shape == IMAGE
    assert got["SCORES"].shape == want["SCORES"].shape == (T, *IMAGE)
    equal = float(np.mean(got["LABELS"] == want["LABELS"]))
    score_error = float(np.max(np.abs(got["SCORES"] - want["SCORES"])))
    print(f"\n[device tensors] labels equal {equal:.6f}, scores max abs diff {score_error:.3g}")
    assert equal == 1.0
    assert score_error < SCORE_TOLERANCE
    return equal, score_error


def test_torch_steps_match_the_numpy_steps_on_cpu_tensors() -> None:
    inputs = _inputs()
    torch_points = torch_steps.pseudo_points(torch.from_numpy(inputs["SCORE"]), CONFIG)
    _check_pseudo_points(
        {name: value.numpy() for name, value in torch_points.items()},
        steps.pseudo_points(inputs["SCORE"], CONFIG),
    )
    torch_post = torch_steps.postprocess(
        torch.from_numpy(inputs["LOGITS"]), torch.from_numpy(inputs["VIEW_PLAN"])
    )
    _check_postprocess(
        {name: value.numpy() for name, value in torch_post.items()},
        steps.postprocess(inputs["LOGITS"], inputs["VIEW_PLAN"]),
    )


# base.py imports the Python backend's module, which only the step processes have: a stand-in
# module lets a fresh interpreter import it (the steps' own code is the real one).
IMPORT_BASE = (
    "import sys, types\n"
    "sys.modules['triton_python_backend_utils'] = types.ModuleType('triton_python_backend_utils')\n"
    "from escnet_export.triton_serving.step_models.base import is_out_of_memory\n"
)


def test_out_of_memory_is_told_apart_on_both_paths() -> None:
    """numpy's MemoryError and torch's allocation failures (CPU and GPU) are answered UNAVAILABLE;
    the check imports no torch on the numpy path."""
    assert_runs_without_torch(
        IMPORT_BASE + "assert is_out_of_memory(MemoryError())\n"
        "assert not is_out_of_memory(ValueError('score must be finite'))\n"
        'assert not is_out_of_memory(RuntimeError("can\'t allocate memory"))  # no torch: not its error\n'
    )
    code = IMPORT_BASE + (
        "import torch\n"
        "try:\n"
        "    torch.empty(2**60, dtype=torch.uint8)  # past any address space: the CPU allocator fails\n"
        "except RuntimeError as error:\n"
        "    assert is_out_of_memory(error), error\n"
        "else:\n"
        "    raise AssertionError('2**60 bytes allocated')\n"
        "assert is_out_of_memory(torch.OutOfMemoryError('CUDA out of memory'))\n"
        "assert not is_out_of_memory(RuntimeError('shape mismatch'))\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# --------------------------------------------------------------------------------------------------
# Served
# --------------------------------------------------------------------------------------------------


def write_device_step_repository(root: Path) -> Path:
    """The two steps, as build_repository writes them for the CPU runtime, plus the parameter."""
    specs = step_specs(CONFIG)
    for step in STEPS:
        directory = root / model_name(ENSEMBLE, step)
        (directory / "1").mkdir(parents=True)
        config = step_config(ENSEMBLE, CONFIG, specs[step], "onnxruntime")
        assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in config  # the CPU runtime leaves inputs numpy
        (directory / "config.pbtxt").write_text(config + DEVICE_TENSORS)
        (directory / "1" / "model.py").write_text(model_py_text(model_module(specs[step])))
    return root


@pytest.fixture(scope="module")
def device_step_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("device_tensors")
    repo = write_device_step_repository(root / "repo")
    server = TritonServer(repo, log_path=root / "tritonserver.log", exit_timeout_s=5, reclaim_after_s=0)
    start = time.perf_counter()
    with server.start(timeout_s=120) as srv:
        print(f"\n[device tensors] tritonserver ready in {time.perf_counter() - start:.1f} s")
        yield srv


def _infer(server: TritonServer, step: str, inputs: dict[str, np.ndarray], outputs: list[str]):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.http_url, network_timeout=120.0)
    try:
        tensors = []
        for spec in step_specs(CONFIG)[step].inputs:
            tensor = httpclient.InferInput(spec.name, list(inputs[spec.name].shape), spec.dtype)
            tensor.set_data_from_numpy(inputs[spec.name])
            tensors.append(tensor)
        requested = [httpclient.InferRequestedOutput(name) for name in outputs]
        result = client.infer(model_name(ENSEMBLE, step), tensors, outputs=requested)
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()


def _step_processes_with_torch(repo: Path) -> set[str]:
    """The models of ``repo`` whose Python-backend stub process has libtorch loaded (Linux /proc)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "triton_python_backend_stub" not in cmdline or str(repo) not in cmdline:
                continue
            maps = (proc / "maps").read_text()
        except OSError:
            continue
        if "libtorch" in maps:
            found.update(step for step in STEPS if f"/{model_name(ENSEMBLE, step)}/" in cmdline)
    return found


@pytest.mark.triton
@needs_server
def test_served_steps_on_device_tensors_match_the_numpy_steps(device_step_server: TritonServer) -> None:
    inputs = _inputs(seed=1)
    points = _infer(device_step_server, "pseudo_points", inputs, ["POINTS", "POINT_LABELS", "PSEUDO_MASK"])
    _check_pseudo_points(points, steps.pseudo_points(inputs["SCORE"], CONFIG))
    post = _infer(device_step_server, "postprocess", inputs, ["LABELS", "SCORES"])
    _check_postprocess(post, steps.postprocess(inputs["LOGITS"], inputs["VIEW_PLAN"]))
    # Only LABELS asked for: SCORES is left out, as on the numpy path.
    labels = _infer(device_step_server, "postprocess", inputs, ["LABELS"])
    np.testing.assert_array_equal(labels["LABELS"], post["LABELS"])
    # The answers came from the torch steps: both step processes loaded torch (the numpy path never does).
    repo = device_step_server.model_repository.resolve()
    assert _step_processes_with_torch(repo) == set(STEPS)


@pytest.mark.triton
@needs_server
def test_a_failing_request_on_device_tensors_gets_the_steps_error(device_step_server: TritonServer) -> None:
    from tritonclient.http import InferenceServerException

    inputs = _inputs(seed=2)
    inputs["SCORE"][0, 0, 0, 0] = np.nan
    with pytest.raises(InferenceServerException, match=r"escnet_pseudo_points: ValueError: .*finite"):
        _infer(device_step_server, "pseudo_points", inputs, ["POINTS"])
    # The step answers the next good request.
    good = _inputs(seed=3)
    points = _infer(device_step_server, "pseudo_points", good, ["POINTS", "POINT_LABELS", "PSEUDO_MASK"])
    _check_pseudo_points(points, steps.pseudo_points(good["SCORE"], CONFIG))


def _step_metrics(server: TritonServer) -> dict[tuple[str, str], float]:
    """(metric with labels, model) -> value of the escnet_step_* series on the server's /metrics."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=30) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("escnet_step_"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


@pytest.mark.triton
@needs_server
def test_steps_publish_their_metrics(device_step_server: TritonServer) -> None:
    """step_models/metrics.py's families on Triton's real /metrics: an answered and a failed request
    each counted under their outcome, the time spent, the process's resident memory."""
    model = model_name(ENSEMBLE, "pseudo_points")
    ok = f'escnet_step_requests_total{{model="{model}",outcome="ok"}}'
    failed = f'escnet_step_requests_total{{model="{model}",outcome="error"}}'
    before = _step_metrics(device_step_server)
    _infer(device_step_server, "pseudo_points", _inputs(seed=4), ["POINTS"])
    bad = _inputs(seed=5)
    bad["SCORE"][0, 0, 0, 0] = np.nan
    with pytest.raises(Exception, match="finite"):
        _infer(device_step_server, "pseudo_points", bad, ["POINTS"])
    after = _step_metrics(device_step_server)
    print(f"\n[metrics] {model}: " + ", ".join(f"{k} {v:g}" for k, v in after.items() if model in k))
    assert after[ok] - before.get(ok, 0) == 1
    assert after[failed] - before.get(failed, 0) == 1
    duration = f'escnet_step_duration_us_total{{model="{model}"}}'
    assert after[duration] > before.get(duration, 0)
    assert after[f'escnet_step_resident_bytes{{model="{model}"}}'] > 10 * 2**20
