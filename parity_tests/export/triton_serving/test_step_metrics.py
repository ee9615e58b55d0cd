"""The edge steps' metrics and the text encoder's trace, on a real server's /metrics and trace file.

A small server serves catseg's preprocess, text embedder and text encoder models (as
build_repository writes them) with Triton's tracing on. Known requests go to each step directly;
the counters must move by exactly what those requests did:

* each refusal is counted under the rule it broke (escnet_step_refusals_total{reason});
* each class name is a cache hit or a miss (escnet_text_cache_lookups_total{result}), the cache's
  size is published, and the histogram of classes per request counts each request once;
* the text embedder's BLS call to the text encoder carries the request's trace: the encoder's
  trace is a child of the embedder's.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from triton_fixtures import needs_server

from escnet.config import MODEL_CONFIGS
from escnet.view_plan import plan_views
from escnet_export.contract import DEFAULT_VARIANTS
from escnet_export.triton_serving.configs import model_name
from escnet_export.triton_serving.server import TritonServer

pytestmark = [pytest.mark.triton, needs_server]

ENSEMBLE = "catseg"
CONFIG = MODEL_CONFIGS[DEFAULT_VARIANTS[ENSEMBLE]]
STEPS = ("preprocess", "text_embedder", "clip_text_encoder")
PREPROCESS, EMBEDDER, ENCODER = (model_name(ENSEMBLE, step) for step in STEPS)
IMAGE = (64, 80)


@pytest.fixture(scope="module")
def metrics_server(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """The three models of the built repository, in a repository of their own, traced."""
    root = tmp_path_factory.mktemp("step_metrics")
    repo = root / "repo"
    for name in (PREPROCESS, EMBEDDER, ENCODER):
        shutil.copytree(triton_repository / name, repo / name, symlinks=True)
    trace_file = root / "trace.json"
    tracing = (f"triton,file={trace_file}", "triton,log-frequency=1", "level=TIMESTAMPS", "rate=1")
    server = TritonServer(
        repo,
        log_path=root / "tritonserver.log",
        extra_args=[f"--trace-config={setting}" for setting in tracing],
        exit_timeout_s=5,
        reclaim_after_s=0,
    )
    with server.start(timeout_s=300) as srv:
        print(f"\n[step metrics] tritonserver ready in {srv.startup_s:.1f} s")
        srv.trace_file = trace_file
        yield srv


def metrics(server: TritonServer) -> dict[str, float]:
    """Series (name with labels) -> value, of our families on the server's /metrics."""
    with urllib.request.urlopen(server.metrics_url, timeout=30) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("escnet_step_refusals", "escnet_text_cache", "escnet_request_classes")):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The series that changed, by how much."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def infer(server: TritonServer, model: str, inputs: dict[str, np.ndarray]) -> Any:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.http_url, network_timeout=300.0)
    try:
        tensors = []
        for name, value in inputs.items():
            dtype = "BYTES" if value.dtype == object else httpclient.np_to_triton_dtype(value.dtype)
            tensor = httpclient.InferInput(name, list(value.shape), dtype)
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        return client.infer(model, tensors)
    finally:
        client.close()


def names(*classes: str) -> np.ndarray:
    return np.array([c.encode() for c in classes], dtype=object)


def embed(server: TritonServer, classes: list[str]) -> np.ndarray:
    plan = plan_views(*IMAGE, CONFIG.protocol).encode()
    result = infer(server, EMBEDDER, {"CLASS_NAMES": names(*classes), "VIEW_PLAN": plan})
    return result.as_numpy("TEXT_EMBEDDINGS")


# (image, class names) -> the reason the refusal must be counted under
REFUSALS = {
    "empty image": (np.zeros((0, 40, 3), np.uint8), ["cat"], "image_format"),
    "tiny image": (np.zeros((4, 40, 3), np.uint8), ["cat"], "image_size"),
    "empty class list": (np.zeros((*IMAGE, 3), np.uint8), [], "class_list"),
    "blank class name": (np.zeros((*IMAGE, 3), np.uint8), ["cat", "  "], "class_name"),
    "duplicate class": (np.zeros((*IMAGE, 3), np.uint8), ["cat", "Cat"], "duplicate_class"),
    "long prompt": (np.zeros((*IMAGE, 3), np.uint8), ["cat", " ".join(["q"] * 100)], "prompt_tokens"),
}


def test_refusals_are_counted_by_the_rule_they_broke(metrics_server: TritonServer) -> None:
    from tritonclient.utils import InferenceServerException

    for case, (image, classes, reason) in REFUSALS.items():
        before = metrics(metrics_server)
        inputs = {"IMAGE": image, "CLASS_NAMES": names(*classes) if classes else np.zeros(0, dtype=object)}
        with pytest.raises(InferenceServerException) as error:
            infer(metrics_server, PREPROCESS, inputs)
        assert str(error.value.status()) == "400", (case, error.value)
        change = moved(before, metrics(metrics_server))
        print(f"\n[step metrics] {case}: {change}")
        series = f'escnet_step_refusals_total{{model="{PREPROCESS}",reason="{reason}"}}'
        assert change == {series: 1.0}, case


def test_the_text_cache_counts_hits_and_misses(metrics_server: TritonServer) -> None:
    def series(name: str, **labels: str) -> str:
        return name + "{" + ",".join(f'{k}="{v}"' for k, v in {"model": EMBEDDER, **labels}.items()) + "}"

    hit, miss = (series("escnet_text_cache_lookups_total", result=r) for r in ("hit", "miss"))
    count, total = series("escnet_request_classes_count"), series("escnet_request_classes_sum")
    new = [f"metric probe {uuid.uuid4().hex[:8]}" for _ in range(3)]

    before = metrics(metrics_server)
    embed(metrics_server, new[:2])  # two new names
    first = metrics(metrics_server)
    embed(metrics_server, [*new[:2], new[2]])  # the two again, one new
    second = metrics(metrics_server)
    print(f"\n[step metrics] first {moved(before, first)}\n[step metrics] second {moved(first, second)}")

    assert moved(before, first)[miss] == 2 and hit not in moved(before, first)
    assert moved(first, second)[hit] == 2 and moved(first, second)[miss] == 1
    for step, after in ((before, first), (first, second)):
        assert after[count] - step.get(count, 0) == 1  # one request each
    assert first[total] - before.get(total, 0) == 2 and second[total] - first[total] == 3
    assert second[series("escnet_text_cache_entries")] >= 3
    # Two classes fall in the bucket "<= 2" and above; none in "<= 1".
    le1, le2 = (series("escnet_request_classes_bucket", le=bound) for bound in ("1", "2"))
    assert first[le2] - before.get(le2, 0) == 1 and first.get(le1, 0) == before.get(le1, 0)


def test_the_text_encoder_runs_inside_the_requests_trace(metrics_server: TritonServer) -> None:
    """Triton writes one trace per request; the encoder's BLS request has the embedder's as parent."""
    embed(metrics_server, [f"trace probe {uuid.uuid4().hex[:8]}"])
    traces: list[dict] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the trace files are written as traces complete
        traces = []
        for path in sorted(metrics_server.trace_file.parent.glob(metrics_server.trace_file.name + "*")):
            text = path.read_text().strip()
            if text:
                traces.extend(json.loads(text))
        models = {t.get("model_name") for t in traces}
        if {EMBEDDER, ENCODER} <= models:
            break
        time.sleep(0.5)
    by_id = {t["id"]: t for t in traces if "model_name" in t}
    children = [t for t in by_id.values() if t["model_name"] == ENCODER and t.get("parent_id")]
    print(f"\n[step metrics] {len(by_id)} traces; encoder traces with a parent: {len(children)}")
    assert children, f"no text encoder trace with a parent: {sorted({t.get('model_name') for t in traces})}"
    parents = {by_id[t["parent_id"]]["model_name"] for t in children if t["parent_id"] in by_id}
    assert parents == {EMBEDDER}, parents
