"""pytest plugin: one real tritonserver per test session, serving the ``escnet`` and ``catseg`` ensembles.

Registered by ``pytest_plugins = ["triton_fixtures"]`` in parity_tests/conftest.py (or, alone,
``PYTHONPATH=parity_tests pytest -p triton_fixtures ...``). Nothing here is mocked:

* ``onnx_graphs``: the graphs of both default variants, exported by ``run_export`` into
  ``artifacts/onnx`` (or ``$ESCNET_ONNX_DIR``); an up-to-date export is reused (its cache key).
* ``triton_repository``: the repository built by ``build_repository`` into a session temp folder,
  configs included; the checked-in ``model_repository/`` is never touched.
* ``triton_server``: ONE tritonserver on free loopback ports, started on first use and stopped at the
  end of the session; skips (with the reason) where no tritonserver or tritonclient is installed.
* ``http_client`` / ``grpc_client``: tritonclient clients of that server, closed after each test.
* ``reference_models``: ``build_model(variant)`` per variant, built on first use and kept: built
  exactly as ``run_export`` builds the model it exports (seed 0, no checkpoint files).
"""

from __future__ import annotations

import gc
import importlib.util
import os
import resource
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ONNX_DIR_ENV = "ESCNET_ONNX_DIR"
SERVER_START_TIMEOUT_S = 600.0
CLIENT_TIMEOUT_S = 900.0  # one request with T = 150 classes takes minutes on a loaded 2-core CPU


def onnx_dir() -> Path:
    """Where the exported graphs live: ``$ESCNET_ONNX_DIR`` or the project's artifacts/onnx."""
    env = os.environ.get(ONNX_DIR_ENV)
    return Path(env) if env else ROOT / "artifacts" / "onnx"


def missing_serving_reason() -> str | None:
    """Why this machine cannot run the served tests, or None when it can."""
    if importlib.util.find_spec("tritonclient") is None:
        return "tritonclient is not installed (pip install -e '.[serve]')"
    from escnet_export.triton_serving.install import locate_tritonserver

    try:
        locate_tritonserver()
    except RuntimeError as error:
        return f"no tritonserver: {error}"
    return None


# For tests that start their own small server: skipped, with the reason, where none can run.
needs_server = pytest.mark.skipif(
    missing_serving_reason() is not None, reason=f"cannot serve here: {missing_serving_reason()}"
)


def _process_tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and its live descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    tree, todo = {pid}, [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        todo.extend(children)
    return sum(times.get(p, 0.0) for p in tree)


class ReferenceModels:
    """The PyTorch reference of each variant, built on first use (seed 0, random weights, no files).

    One variant is held at a time (~1 GiB each): the served tests run grouped by ensemble, and the
    memory is better left to the server's requests on a 24 GiB machine.
    """

    def __init__(self) -> None:
        self._models: dict[str, object] = {}

    def __getitem__(self, variant: str):  # -> OpenVocabSegmenter
        if variant not in self._models:
            from escnet.registry import build_model

            self._models.clear()
            gc.collect()

            # The same call run_export makes when it builds the model it exports (no checkpoint
            # arguments, default seed): the served graphs must reproduce this model.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the random-weights warning is expected here
                self._models[variant] = build_model(variant)
            print(f"\n[triton_fixtures] {variant}: reference built (seed 0, random weights, no files)")
        return self._models[variant]


@pytest.fixture(scope="session")
def reference_models() -> ReferenceModels:
    return ReferenceModels()


@pytest.fixture(scope="session")
def onnx_graphs() -> Path:
    """Export (or reuse) the graphs of both default variants; returns the folder above <variant>/."""
    from escnet_export.contract import DEFAULT_VARIANTS
    from escnet_export.onnx_graphs.export import run_export

    directory = onnx_dir()
    for variant in DEFAULT_VARIANTS.values():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-weights warning is expected here
            result = run_export(variant, directory, progress=False)
        state = "reused" if result.reused else "exported"
        print(f"\n[triton_fixtures] {variant}: {state} in {time.perf_counter() - start:.1f} s -> {directory}")
    return directory


@pytest.fixture(scope="session")
def triton_repository(onnx_graphs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model repository (configs, model.py files, graph links) in a session temp folder."""
    from escnet_export.triton_serving.repository import build_repository

    repository = tmp_path_factory.mktemp("triton") / "model_repository"
    build_repository(repository, onnx_dir=onnx_graphs, runtime="onnxruntime")
    return repository


@pytest.fixture(scope="session")
def triton_server(request: pytest.FixtureRequest) -> Iterator[object]:
    """ONE tritonserver for the whole session, on free ports; stopped when the session ends."""
    reason = missing_serving_reason()
    if reason is not None:
        pytest.skip(reason)  # before the export, which takes minutes
    from escnet_export.triton_serving.server import TritonServer

    triton_repository: Path = request.getfixturevalue("triton_repository")
    server = TritonServer(
        model_repository=triton_repository,
        log_path=triton_repository.parent / "tritonserver.log",
        exit_timeout_s=10,
        # No memory reclaim between tests: a request arriving while an idle step is being reloaded
        # would be refused as unavailable. test_resilience.py turns it on for its own test.
        reclaim_after_s=0,
    )
    server.start(timeout_s=SERVER_START_TIMEOUT_S)
    rss_gib = server.server_rss_bytes() / 2**30
    print(f"\n[triton_fixtures] tritonserver ready in {server.startup_s:.1f} s, {rss_gib:.1f} GiB RSS")
    try:
        yield server
    finally:
        # CPU seconds, not wall time, say what the session costs on a machine of its own.
        if server.running and server.pid is not None:
            server_cpu = _process_tree_cpu_seconds(server.pid)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(
                f"\n[triton_fixtures] CPU time: tritonserver and its models {server_cpu:.0f} s, "
                f"test process {usage.ru_utime + usage.ru_stime:.0f} s; server RSS at the end "
                f"{server.server_rss_bytes() / 2**30:.1f} GiB"
            )
        server.stop()


def _require_running(server) -> None:
    """Fail with the server's log when the session's server has died (killed, e.g. by the OOM killer)."""
    if not server.running:
        from escnet_export.triton_serving.server import log_excerpt

        pytest.fail(
            f"the session's tritonserver is no longer running (killed? out of memory?)\n"
            f"{log_excerpt(server.log_path)}",
            pytrace=False,
        )


@pytest.fixture
def shared_memory_given_back(triton_server) -> Iterator[None]:
    """After the test, the step watchdog reloads every step whose shared-memory region grew past
    its threshold: the Python backend never shrinks them, and a session of T = 150 requests would
    otherwise hold ~6 GiB of regions to the end (the session's server reclaims nothing by itself)."""
    yield
    if triton_server.running and triton_server.step_watchdog is not None:
        reloads = triton_server.step_watchdog.reclaim_now()
        if reloads:
            given = sum(r.region_bytes for r in reloads) / 2**30
            print(f"\n[triton_fixtures] {len(reloads)} steps reloaded, {given:.2f} GiB of shared memory back")


@pytest.fixture
def http_client(triton_server) -> Iterator[object]:
    import tritonclient.http as httpclient

    _require_running(triton_server)
    client = httpclient.InferenceServerClient(
        url=triton_server.http_url, connection_timeout=60.0, network_timeout=CLIENT_TIMEOUT_S
    )
    try:
        yield client
    finally:
        client.close()  # an open HTTP connection would hold up the server's shutdown


@pytest.fixture
def grpc_client(triton_server) -> Iterator[object]:
    import tritonclient.grpc as grpcclient

    _require_running(triton_server)
    client = grpcclient.InferenceServerClient(url=triton_server.grpc_url)
    try:
        yield client
    finally:
        client.close()
