"""Each Python step's own Prometheus metrics, served on Triton's /metrics beside its nv_* families
(the Python backend's custom metrics, pb_utils.MetricFamily):

- ``escnet_step_requests_total{model, outcome}``: requests answered, by outcome: ``ok``,
  ``refused`` (INVALID_ARGUMENT: the client's fault), ``cancelled``, ``unavailable`` (out of
  memory: retry), ``error`` (INTERNAL: ours);
- ``escnet_step_duration_us_total{model}``: time spent answering (read, run, write), so
  rate(duration) / rate(requests) is a step's mean latency;
- ``escnet_step_resident_bytes{model}``: the step process's resident memory after its last batch
  (what the step watchdog reclaims: README, Memory).

Each step instance is its own process; each creates the families once. Where the backend has no
custom metrics (an older one), the step serves without them.
"""

from __future__ import annotations

import os
from typing import Any

import triton_python_backend_utils as pb_utils

OUTCOME_BY_CODE = {  # pb_utils.TritonError code name -> outcome label
    "INVALID_ARG": "refused",
    "CANCELLED": "cancelled",
    "UNAVAILABLE": "unavailable",
}
OUTCOMES = ("ok", "refused", "cancelled", "unavailable", "error")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


class StepMetrics:
    """The metrics of one step model, labelled with its name."""

    def __init__(self, model_name: str) -> None:
        family = pb_utils.MetricFamily
        requests = family(
            name="escnet_step_requests_total",
            description="Requests a Python step answered, by outcome",
            kind=family.COUNTER,
        )
        duration = family(
            name="escnet_step_duration_us_total",
            description="Microseconds a Python step spent answering requests",
            kind=family.COUNTER,
        )
        resident = family(
            name="escnet_step_resident_bytes",
            description="Resident memory of the Python step's process after its last batch",
            kind=family.GAUGE,
        )
        labels = {"model": model_name}
        self._requests = {o: requests.Metric(labels={**labels, "outcome": o}) for o in OUTCOMES}
        self._duration = duration.Metric(labels=labels)
        self._resident = resident.Metric(labels=labels)
        self._families = (requests, duration, resident)  # kept alive with the metrics

    @classmethod
    def create(cls, model_name: str) -> StepMetrics | None:
        """The step's metrics, or None where this Python backend has no custom metrics."""
        if not hasattr(pb_utils, "MetricFamily"):
            return None
        return cls(model_name)

    def answered(self, response: Any, seconds: float) -> None:
        error = response.error() if response.has_error() else None
        if error is None:
            outcome = "ok"
        else:
            codes = {
                getattr(pb_utils.TritonError, name, None): label for name, label in OUTCOME_BY_CODE.items()
            }
            outcome = codes.get(error.code(), "error")
        self._requests[outcome].increment(1)
        self._duration.increment(seconds * 1e6)

    def batch_done(self) -> None:
        self._resident.set(resident_bytes())
