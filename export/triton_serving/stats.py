"""Where a served request spends its time, from Triton's statistics API.

Triton keeps, per model, cumulative nanoseconds of compute_input, compute_infer and compute_output
over all requests it served. Taking a snapshot before and after a measurement and subtracting gives
each composing model's share of the measured requests; the benchmarks and the perf_analyzer sweep
both report it this way.
"""

from __future__ import annotations

from typing import Any

PYTHON_STEPS = ("preprocess", "text_embedder", "pseudo_points", "postprocess")
COMPUTE_PHASES = ("compute_input", "compute_infer", "compute_output")


def compute_snapshot(client: Any) -> dict[str, dict[str, int]]:
    """{model: {"ns": compute ns, "count": executions}} from a tritonclient http or grpc client."""
    stats = client.get_inference_statistics()
    if not isinstance(stats, dict):  # grpc answers a protobuf message
        from google.protobuf.json_format import MessageToDict

        stats = MessageToDict(stats, preserving_proto_field_name=True)
    snapshot = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        ns = sum(int(inference.get(phase, {}).get("ns", 0)) for phase in COMPUTE_PHASES)
        count = int(inference.get("success", {}).get("count", 0))
        snapshot[model["name"]] = {"ns": ns, "count": count}
    return snapshot


def composing_seconds(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], ensemble: str, requests: int
) -> dict[str, float]:
    """Seconds of compute per ensemble request of each composing model ``<ensemble>_<step>``,
    between two snapshots that ``requests`` ensemble requests apart."""
    prefix = f"{ensemble}_"
    seconds = {}
    for name in sorted(after):
        if name.startswith(prefix):
            spent_ns = after[name]["ns"] - before.get(name, {"ns": 0})["ns"]
            seconds[name.removeprefix(prefix)] = spent_ns / 1e9 / max(requests, 1)
    return seconds


def python_share(per_step_s: dict[str, float]) -> float:
    """The Python steps' part of all composing models' compute time (0..1)."""
    total = sum(per_step_s.values())
    python = sum(seconds for step, seconds in per_step_s.items() if step in PYTHON_STEPS)
    return python / total if total > 0 else 0.0
