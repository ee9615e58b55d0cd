"""A real tritonserver (the nvidia-pytriton wheel's, or NVIDIA's on PATH) serving a tiny repository.

Two Python-backend models and an ensemble chaining them: add_one then double over FP32 [-1], with a
BYTES tensor passing through add_one. add_one rejects bad requests the two ways a Python model can
(an error response carrying ``pb_utils.TritonError``, or raising ``pb_utils.TritonModelException``;
``raise pb_utils.TritonError(...)`` does not work: TritonError is not an exception class).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from parity_support import ROOT
from triton_fixtures import needs_server

from escnet_export.triton_serving.install import (
    MALLOC_HUGEPAGES_TUNABLE,
    locate_tritonserver,
    with_malloc_hugepages,
)
from escnet_export.triton_serving.server import TritonServer, free_port

SERVE_SH = ROOT / "scripts" / "serve.sh"
STOP_SH = ROOT / "scripts" / "stop_server.sh"

Tensor = tuple[str, str, tuple[int, ...]]  # name, data type, dims


def config_text(name: str, runs_on: str, inputs: list[Tensor], outputs: list[Tensor], rest: str) -> str:
    """An unbatched config.pbtxt: ``runs_on`` its backend or platform line, ``rest`` what follows."""

    def tensors(specs: list[Tensor]) -> str:
        return ",\n".join(
            f'  {{ name: "{n}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }}'
            for n, dtype, dims in specs
        )

    return (
        f'name: "{name}"\n{runs_on}\nmax_batch_size: 0\n'
        f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n{rest}"
    )


ONE_CPU_INSTANCE = "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
ADD_ONE_CONFIG = config_text(
    "add_one",
    'backend: "python"',
    [("INPUT0", "TYPE_FP32", (-1,)), ("TEXT", "TYPE_STRING", (-1,))],
    [("OUTPUT0", "TYPE_FP32", (-1,)), ("TEXT_OUT", "TYPE_STRING", (-1,))],
    ONE_CPU_INSTANCE,
)

ADD_ONE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            if not np.all(np.isfinite(x)):
                error = pb_utils.TritonError("add_one: INPUT0 must be finite")
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            if text.size and text.reshape(-1)[0] == b"raise":
                raise pb_utils.TritonModelException("add_one: asked to raise")
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32)),
                        pb_utils.Tensor("TEXT_OUT", text),
                    ]
                )
            )
        return responses
"""

DOUBLE_CONFIG = config_text(
    "double",
    'backend: "python"',
    [("INPUT0", "TYPE_FP32", (-1,))],
    [("OUTPUT0", "TYPE_FP32", (-1,)), ("PYTHON_ENV", "TYPE_STRING", (3,))],
    ONE_CPU_INSTANCE,
)

DOUBLE_MODEL = """
import os
import platform
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        env = [sys.prefix, platform.python_version(), os.environ.get("GLIBC_TUNABLES", "")]
        env = np.array([value.encode() for value in env], dtype=object)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (2 * x).astype(np.float32))
            responses.append(pb_utils.InferenceResponse([out, pb_utils.Tensor("PYTHON_ENV", env)]))
        return responses
"""

ENSEMBLE_CONFIG = config_text(
    "add_one_double",
    'platform: "ensemble"',
    [("X", "TYPE_FP32", (-1,)), ("TEXT", "TYPE_STRING", (-1,))],
    [("Y", "TYPE_FP32", (-1,)), ("TEXT_OUT", "TYPE_STRING", (-1,))],
    """\
ensemble_scheduling {
  step [
    {
      model_name: "add_one"
      model_version: -1
      input_map { key: "INPUT0" value: "X" }
      input_map { key: "TEXT" value: "TEXT" }
      output_map { key: "OUTPUT0" value: "x_plus_one" }
      output_map { key: "TEXT_OUT" value: "TEXT_OUT" }
    },
    {
      model_name: "double"
      model_version: -1
      input_map { key: "INPUT0" value: "x_plus_one" }
      output_map { key: "OUTPUT0" value: "Y" }
    }
  ]
}
""",
)


def write_repository(root: Path) -> Path:
    """Write the tiny repository (add_one, double, ensemble add_one_double) under ``root``."""
    models = {
        "add_one": (ADD_ONE_CONFIG, ADD_ONE_MODEL),
        "double": (DOUBLE_CONFIG, DOUBLE_MODEL),
        "add_one_double": (ENSEMBLE_CONFIG, None),
    }
    for name, (config, model) in models.items():
        version_dir = root / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(textwrap.dedent(config).lstrip())
        if model is not None:
            (version_dir / "model.py").write_text(textwrap.dedent(model).lstrip())
    return root


X = np.array([0.0, 1.5, -3.0, 10.0], dtype=np.float32)
TEXT = np.array([b"hello", "gr\u00fc\u00dfe".encode()], dtype=object)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("triton")
    repo = write_repository(root / "repo")
    server = TritonServer(repo, log_path=root / "tritonserver.log", exit_timeout_s=5)
    with server.start(timeout_s=120) as srv:
        yield srv


def _http_infer(url: str, model: str, x: np.ndarray, text: np.ndarray | None, outputs: list[str]):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url)
    try:
        inputs = [
            httpclient.InferInput("X" if model == "add_one_double" else "INPUT0", list(x.shape), "FP32")
        ]
        inputs[0].set_data_from_numpy(x)
        if text is not None:
            inputs.append(httpclient.InferInput("TEXT", list(text.shape), "BYTES"))
            inputs[-1].set_data_from_numpy(text)
        requested = [httpclient.InferRequestedOutput(name) for name in outputs]
        result = client.infer(model, inputs, outputs=requested)
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()


def _grpc_infer(url: str, x: np.ndarray, text: np.ndarray):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=url)
    try:
        inputs = [
            grpcclient.InferInput("X", list(x.shape), "FP32"),
            grpcclient.InferInput("TEXT", list(text.shape), "BYTES"),
        ]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(text)
        result = client.infer("add_one_double", inputs)
        return result.as_numpy("Y"), result.as_numpy("TEXT_OUT")
    finally:
        client.close()


@pytest.mark.triton
@needs_server
def test_ensemble_over_http(server: TritonServer) -> None:
    out = _http_infer(server.http_url, "add_one_double", X, TEXT, ["Y", "TEXT_OUT"])
    np.testing.assert_array_equal(out["Y"], (X + 1) * 2)
    assert out["Y"].dtype == np.float32
    assert out["TEXT_OUT"].tolist() == TEXT.tolist()


@pytest.mark.triton
@needs_server
def test_ensemble_over_grpc(server: TritonServer) -> None:
    y, text_out = _grpc_infer(server.grpc_url, X, TEXT)
    np.testing.assert_array_equal(y, (X + 1) * 2)
    assert text_out.tolist() == TEXT.tolist()


@pytest.mark.triton
@needs_server
def test_python_models_run_in_this_environment(server: TritonServer) -> None:
    if not locate_tritonserver().from_wheel:
        pytest.skip("a tritonserver on PATH runs its own Python")
    out = _http_infer(server.http_url, "double", X, None, ["PYTHON_ENV"])
    prefix, version, tunables = (v.decode() for v in out["PYTHON_ENV"])
    assert prefix == sys.prefix
    assert version == platform.python_version(), "the stub embeds another libpython than this interpreter's"
    if os.environ.get("ESCNET_MALLOC_HUGEPAGES") != "0":
        assert MALLOC_HUGEPAGES_TUNABLE in tunables.split(":"), "no allocator setting in the steps"


def test_malloc_hugepages_tunable_is_added_kept_or_left_out() -> None:
    assert with_malloc_hugepages({})["GLIBC_TUNABLES"] == MALLOC_HUGEPAGES_TUNABLE
    added = with_malloc_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert added["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{MALLOC_HUGEPAGES_TUNABLE}"
    own = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert with_malloc_hugepages(own) == own
    assert "GLIBC_TUNABLES" not in with_malloc_hugepages({"ESCNET_MALLOC_HUGEPAGES": "0"})


@pytest.mark.triton
@needs_server
@pytest.mark.parametrize(
    ("model", "text", "message"),
    [
        ("add_one", TEXT, "add_one: INPUT0 must be finite"),
        ("add_one_double", TEXT, "add_one: INPUT0 must be finite"),
        ("add_one", np.array([b"raise"], dtype=object), "add_one: asked to raise"),
        ("add_one_double", np.array([b"raise"], dtype=object), "add_one: asked to raise"),
    ],
)
def test_model_error_reaches_the_client(
    server: TritonServer, model: str, text: np.ndarray, message: str
) -> None:
    from tritonclient.grpc import InferenceServerException as GrpcError
    from tritonclient.http import InferenceServerException as HttpError

    bad = X.copy()
    if message.endswith("finite"):
        bad[1] = np.nan
    output = "Y" if model == "add_one_double" else "OUTPUT0"
    with pytest.raises(HttpError, match=message):
        _http_infer(server.http_url, model, bad, text, [output])
    if model == "add_one_double":
        with pytest.raises(GrpcError, match=message):
            _grpc_infer(server.grpc_url, bad, text)
    # The server and the model instance stay up and answer the next good request.
    assert server.is_ready()
    out = _http_infer(server.http_url, "add_one_double", X, TEXT, ["Y"])
    np.testing.assert_array_equal(out["Y"], (X + 1) * 2)


@pytest.mark.triton
@needs_server
def test_server_rss_counts_the_python_stubs(server: TritonServer) -> None:
    from escnet_export.triton_serving.server import process_tree_rss_bytes

    total = server.server_rss_bytes()
    stubs = [pid for pid in _children(server.pid) if "triton_python_backend_stub" in _cmdline(pid)]
    assert len(stubs) == 2  # add_one and double; the ensemble has no process
    stub_rss = sum(process_tree_rss_bytes(pid) for pid in stubs)
    assert stub_rss > 0
    assert total > stub_rss


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _stat_fields(int(proc.name))[1:2] == [str(pid)]:
            found.append(int(proc.name))
    return found


def _stat_fields(pid: int) -> list[str]:
    """state, ppid, ... of /proc/<pid>/stat; ["X"] when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ["X"]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.triton
@needs_server
def test_start_fails_with_the_log_when_a_model_is_broken(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo")
    (repo / "double" / "1" / "model.py").write_text("raise ImportError('double: broken on purpose')\n")
    server = TritonServer(repo, log_path=tmp_path / "log")
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 1 .*double: broken on purpose"):
        server.start(timeout_s=60)
    assert not server.running


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("kind", ["empty", "missing", "no-config"])
def test_serve_sh_refuses_an_unbuilt_repository(tmp_path: Path, kind: str) -> None:
    repo = tmp_path / "model_repository"
    if kind != "missing":
        repo.mkdir()
    if kind == "no-config":
        (repo / "escnet" / "1").mkdir(parents=True)
    pid_file = tmp_path / "tritonserver.pid"
    env = {**os.environ, "PID_FILE": str(pid_file), "LOG_FILE": str(tmp_path / "log")}
    result = _run(["bash", str(SERVE_SH), "--model-repository", str(repo), "--wait"], env=env)
    assert result.returncode != 0
    assert "not built" in result.stderr
    assert "python -m escnet_export.triton_serving.repository" in result.stderr
    assert not pid_file.exists()  # nothing was started


@pytest.mark.triton
@needs_server
def test_serve_sh_wait_and_stop_server_sh(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo")
    pid_file, log_file = tmp_path / "tritonserver.pid", tmp_path / "tritonserver.log"
    http_port = free_port()
    env = {**os.environ, "PID_FILE": str(pid_file), "LOG_FILE": str(log_file), "WAIT_TIMEOUT": "120"}
    ports = ["--http-port", str(http_port), "--grpc-port", "0", "--metrics-port", "0"]
    started = _run(["bash", str(SERVE_SH), "--model-repository", str(repo), *ports, "--wait"], env=env)
    assert started.returncode == 0, started.stderr
    assert "ready after" in started.stderr
    pid = int(pid_file.read_text())
    try:
        out = _http_infer(f"127.0.0.1:{http_port}", "add_one_double", X, TEXT, ["Y"])
        np.testing.assert_array_equal(out["Y"], (X + 1) * 2)
        again = _run(["bash", str(SERVE_SH), "--model-repository", str(repo), *ports, "--wait"], env=env)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        stopped = _run(["bash", str(STOP_SH)], env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_file.exists()
    deadline = time.monotonic() + 10
    while _stat_fields(pid)[0] not in ("Z", "X") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stat_fields(pid)[0] in ("Z", "X"), "the server is still running"
    # Nothing left to stop.
    assert _run(["bash", str(STOP_SH)], env=env).returncode == 0


def test_shell_scripts_are_valid_bash() -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    for script in (SERVE_SH, STOP_SH):
        assert _run(["bash", "-n", str(script)]).returncode == 0
