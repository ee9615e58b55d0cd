"""What the session's real tritonserver does when things go wrong, as a client and the probes see it:

- a step's process killed (kill -9 by its pid): the step watchdog (escnet_export.triton_serving.step_watchdog)
  reloads the model, and the ensemble answers correctly again;
- a request over the memory budget: refused before any work with INVALID_ARGUMENT / 400, naming
  the estimate, the budget and what to change; the next request is answered correctly;
- a request whose client gave up (gRPC deadline): the remaining steps answer CANCELLED at once
  instead of running; what the cancelled request still cost is measured and printed.

The server runs in explicit model-control mode (the launcher's flags), so these tests can reload a
model and override a config through Triton's own repository API, and restore it afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
skimage_data = pytest.importorskip("skimage.data")

from tritonclient.utils import InferenceServerException  # noqa: E402

from escnet_export.contract import CLASS_NAMES, IMAGE, LABELS  # noqa: E402
from escnet_export.triton_serving.configs import model_name  # noqa: E402
from escnet_export.triton_serving.server_processes import (  # noqa: E402
    is_alive,
    pss_bytes,
    server_processes,
    shm_region_bytes,
    step_pids,
)

pytestmark = pytest.mark.triton

ENSEMBLE = "catseg"
NAMES = ["cat", "wall", "floor"]
RECOVERY_TIMEOUT_S = 120.0


def request(client: Any, image: np.ndarray, names: list[str], **kwargs: Any) -> np.ndarray:
    """One LABELS request to the catseg ensemble over ``client`` (HTTP or gRPC)."""
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    encoded = np.array([n.encode() for n in names], dtype=np.object_)
    inputs = [
        module.InferInput(IMAGE.name, list(image.shape), "UINT8"),
        module.InferInput(CLASS_NAMES.name, [len(names)], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(encoded)
    result = client.infer(ENSEMBLE, inputs, outputs=[module.InferRequestedOutput(LABELS.name)], **kwargs)
    return result.as_numpy(LABELS.name)


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return skimage_data.chelsea()


@pytest.fixture(scope="module")
def expected_labels(triton_server: Any, chelsea: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url=triton_server.http_url, network_timeout=900)
    try:
        return request(client, chelsea, NAMES)
    finally:
        client.close()


def test_a_killed_step_process_is_brought_back(
    triton_server: Any, http_client: Any, chelsea: np.ndarray, expected_labels: np.ndarray
) -> None:
    step = model_name(ENSEMBLE, "aggregator_1")
    watchdog = triton_server.step_watchdog
    assert watchdog is not None, "the session's server runs without its step watchdog"
    (pid,) = step_pids(triton_server.pid)[step]
    recoveries_before = len(watchdog.recoveries)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    seen: list[str] = []  # what a client and the probes saw, in order
    deadline = killed_at + RECOVERY_TIMEOUT_S
    while len(watchdog.recoveries) == recoveries_before and time.monotonic() < deadline:
        ready = http_client.is_server_ready()
        seen.append(f"{time.monotonic() - killed_at:.2f}s ready={ready}")
        time.sleep(0.1)
    assert len(watchdog.recoveries) > recoveries_before, f"{step} was not reloaded: {seen[-5:]}"
    recovery = [r for r in watchdog.recoveries[recoveries_before:] if r.reason == "died"][-1]
    assert recovery.model == step and pid in recovery.dead_pids and recovery.reloaded, recovery
    while not http_client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    recovered_s = time.monotonic() - killed_at
    assert http_client.is_server_ready() and http_client.is_model_ready(ENSEMBLE)
    assert not is_alive(pid)
    labels = request(http_client, chelsea, NAMES)
    np.testing.assert_array_equal(labels, expected_labels)
    (new_pid,) = step_pids(triton_server.pid)[step]
    print(
        f"\n{step}: pid {pid} killed; reloaded by the watchdog in {recovery.seconds:.2f} s, server ready "
        f"again {recovered_s:.2f} s after the kill (new pid {new_pid}); probes during recovery: "
        f"{seen[:3]}...{seen[-2:]}; the next request gave the same labels"
    )


def _preprocess_config(client: Any) -> dict:
    return client.get_model_config(model_name(ENSEMBLE, "preprocess"))


def test_a_request_over_the_memory_budget_is_refused_then_the_next_is_answered(
    triton_server: Any, http_client: Any, grpc_client: Any, chelsea: np.ndarray, expected_labels: np.ndarray
) -> None:
    preprocess = model_name(ENSEMBLE, "preprocess")
    config = _preprocess_config(http_client)
    assert config["parameters"]["memory_budget_gib"]["string_value"] == "auto"
    tight = json.loads(json.dumps(config))
    tight["parameters"]["memory_budget_gib"]["string_value"] = "1.5"  # a T=20 request needs ~2 GiB
    http_client.load_model(preprocess, config=json.dumps(tight))
    try:
        names = [f"object number {i}" for i in range(150)]
        for client in (http_client, grpc_client):
            started = time.monotonic()
            with pytest.raises(InferenceServerException) as error:
                request(client, chelsea, names)
            refused_s = time.monotonic() - started
            message = error.value.message()
            grpc = isinstance(client, grpcclient.InferenceServerClient)
            assert str(error.value.status()) == ("StatusCode.INVALID_ARGUMENT" if grpc else "400")
            for part in ("150 classes on a 300x451 image", "estimated", "budget of 1.5 GiB", "fewer classes"):
                assert part in message, message
            assert refused_s < 5, f"the refusal took {refused_s:.1f} s: work ran before it"
            print(f"\nover budget ({type(client).__module__}, {refused_s:.2f} s): {message}")
    finally:
        # Back to the repository's own config. A load without a config would not reload: Triton
        # sees no change in the model's files and keeps the override.
        http_client.load_model(preprocess, config=json.dumps(config))
    assert _preprocess_config(http_client)["parameters"]["memory_budget_gib"]["string_value"] == "auto"
    np.testing.assert_array_equal(request(http_client, chelsea, NAMES), expected_labels)


def _composing_executions(client: Any) -> int:
    stats = client.get_inference_statistics("")["model_stats"]
    return sum(int(m.get("execution_count", 0)) for m in stats if m["name"].startswith(f"{ENSEMBLE}_"))


def test_a_cancelled_request_stops_at_its_next_step(
    triton_server: Any, http_client: Any, grpc_client: Any, chelsea: np.ndarray, expected_labels: np.ndarray
) -> None:
    names = [f"object number {i}" for i in range(300)]
    started = time.monotonic()
    request(http_client, chelsea, NAMES)
    small_s = time.monotonic() - started  # a warm T=3 request alone
    with pytest.raises(InferenceServerException) as error:
        request(grpc_client, chelsea, names, client_timeout=5.0)
    assert "Deadline" in str(error.value.status()) or "DEADLINE" in str(error.value), error.value
    gave_up = time.monotonic()
    executions = _composing_executions(http_client)
    # The next request waits behind whatever the cancelled one still runs (one instance per step).
    np.testing.assert_array_equal(request(http_client, chelsea, NAMES), expected_labels)
    after_s = time.monotonic() - gave_up
    statistics = http_client.get_inference_statistics("")["model_stats"]
    failed = {
        m["name"]: int(m["inference_stats"]["fail"]["count"])
        for m in statistics
        if m["name"].startswith(f"{ENSEMBLE}_") and int(m["inference_stats"]["fail"]["count"])
    }
    print(
        f"\ncancelled T=300 request: the next T=3 request was answered {after_s:.1f} s after the client "
        f"gave up (alone it takes {small_s:.1f} s), so the cancelled request cost about "
        f"{max(0.0, after_s - small_s):.1f} s more; composing executions when it gave up: {executions}; "
        f"steps that answered with an error since the session began: {failed}"
    )


@pytest.mark.parametrize("trigger", ["server idle", "memory short"])
def test_idle_steps_give_their_shared_memory_back(
    trigger: str, triton_server: Any, http_client: Any, chelsea: np.ndarray, expected_labels: np.ndarray
) -> None:
    """A request with many classes grows the steps' shared-memory regions (the Python backend never
    shrinks them); once the server is idle, or at once for the steps idle a moment when memory is
    short, the watchdog reloads those steps with fresh regions."""
    watchdog = triton_server.step_watchdog
    pressure_below = watchdog.pressure_below_bytes
    names = [f"object number {i}" for i in range(60)]
    request(http_client, chelsea, names)

    def regions() -> dict[str, int]:
        return {p.model: shm_region_bytes(p.pid) for p in server_processes(triton_server.pid)[1:]}

    def total_pss() -> int:
        return sum(pss_bytes(p.pid) for p in server_processes(triton_server.pid))

    grown = {m: size for m, size in regions().items() if size > watchdog.reclaim_above_bytes}
    assert grown, f"no step's region grew past {watchdog.reclaim_above_bytes} bytes: {regions()}"
    pss_before = total_pss()
    first = len(watchdog.recoveries)
    if trigger == "server idle":
        watchdog.reclaim_after_s = 2.0
    else:  # memory always short; the server-idle path out of reach
        watchdog.reclaim_after_s, watchdog.pressure_below_bytes = 1e9, 1 << 62
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S + 30 * len(grown)
    try:
        while time.monotonic() < deadline:
            reclaimed = {r.model for r in watchdog.recoveries[first:] if r.reason == "reclaim"}
            if set(grown) <= reclaimed:
                break
            time.sleep(0.5)
    finally:
        watchdog.reclaim_after_s, watchdog.pressure_below_bytes = 0.0, pressure_below
    reclaimed_runs = [r for r in watchdog.recoveries[first:] if r.reason == "reclaim"]
    assert set(grown) <= {r.model for r in reclaimed_runs}, (grown, reclaimed_runs)
    assert all(r.reloaded for r in reclaimed_runs), reclaimed_runs
    while not http_client.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    # A replaced process keeps its old region until Triton retires it (when its last request is
    # done): wait for that, then no process of the server may hold a grown region.
    retire_deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    left = {m: size for m, size in regions().items() if size > watchdog.reclaim_above_bytes}
    while left and time.monotonic() < retire_deadline:
        time.sleep(0.5)
        left = {m: size for m, size in regions().items() if size > watchdog.reclaim_above_bytes}
    assert not left, left
    pss_after = total_pss()
    np.testing.assert_array_equal(request(http_client, chelsea, NAMES), expected_labels)
    print(
        f"\n{trigger}: reclaimed {len(reclaimed_runs)} steps' shared memory "
        f"({sum(r.region_bytes for r in reclaimed_runs) / 2**20:.0f} MiB of regions) in "
        f"{sum(r.seconds for r in reclaimed_runs):.1f} s of reloads; server PSS "
        f"{pss_before / 2**30:.2f} -> {pss_after / 2**30:.2f} GiB"
    )
