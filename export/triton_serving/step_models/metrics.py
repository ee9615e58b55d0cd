"""Each Python step's own Prometheus metrics, served on Triton's /metrics beside its nv_* families
(the Python backend's custom metrics, pb_utils.MetricFamily):

- ``escnet_step_requests_total{model, outcome}``: requests answered, by outcome: ``ok``,
  ``refused`` (INVALID_ARGUMENT: the client's fault), ``cancelled``, ``unavailable`` (out of
  memory: retry), ``error`` (INTERNAL: ours);
- ``escnet_step_duration_us_total{model}``: time spent answering (read, run, write), so
  rate(duration) / rate(requests) is a step's mean latency;
- ``escnet_step_resident_bytes{model}``: the step process's resident memory after its last batch
  (what the step watchdog reclaims: README, Memory);
- ``escnet_step_refusals_total{model, reason}``: refused requests by the rule they broke
  (request_checks.REFUSAL_REASONS);
- the text embedder's (:class:`TextEmbedderMetrics`): ``escnet_text_cache_lookups_total{model,
  result}`` (class names found in its cache, ``hit``, or encoded, ``miss``),
  ``escnet_text_cache_entries{model}`` and the histogram ``escnet_request_classes{model}`` of
  classes per request.

Each step instance is its own process; each creates the families once. Where the backend has no
custom metrics (an older one), the step serves without them.
"""

from __future__ import annotations

import os
from typing import Any

import triton_python_backend_utils as pb_utils

from escnet_export.runtime.request_checks import REFUSAL_REASONS

OUTCOME_BY_CODE = {  # pb_utils.TritonError code name -> outcome label
    "INVALID_ARG": "refused",
    "CANCELLED": "cancelled",
    "UNAVAILABLE": "unavailable",
}
OUTCOMES = ("ok", "refused", "cancelled", "unavailable", "error")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# Upper bounds of the classes-per-request histogram: a handful, a dataset's vocabulary (ADE-150,
# Pascal Context-459), ADE-847, the limit.
CLASS_BUCKETS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 150.0, 300.0, 500.0, 1000.0]


def resident_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


# Every family ours: name -> (description, kind). Each step process creates those it publishes once.
FAMILIES = {
    "escnet_step_requests_total": ("Requests a Python step answered, by outcome", "COUNTER"),
    "escnet_step_duration_us_total": ("Microseconds a Python step spent answering requests", "COUNTER"),
    "escnet_step_resident_bytes": (
        "Resident memory of the Python step's process after its last batch",
        "GAUGE",
    ),
    "escnet_step_refusals_total": (
        "Requests a Python step refused (INVALID_ARGUMENT), by the rule they broke",
        "COUNTER",
    ),
    "escnet_text_cache_lookups_total": (
        "Class names looked up in the text embedder's cache: hit (cached) or miss (encoded)",
        "COUNTER",
    ),
    "escnet_text_cache_entries": ("Class names held in the text embedder's cache", "GAUGE"),
    "escnet_request_classes": ("Classes per request the text embedder embedded", "HISTOGRAM"),
}


def create_families(*names: str) -> list[Any]:
    """The pb_utils.MetricFamily of each name, as FAMILIES describes it."""
    family = pb_utils.MetricFamily
    return [
        family(name=name, description=FAMILIES[name][0], kind=getattr(family, FAMILIES[name][1]))
        for name in names
    ]


class StepMetrics:
    """The metrics of one step model, labelled with its name."""

    def __init__(self, model_name: str) -> None:
        requests, duration, resident, refusals = self._families = create_families(
            "escnet_step_requests_total",
            "escnet_step_duration_us_total",
            "escnet_step_resident_bytes",
            "escnet_step_refusals_total",
        )  # kept alive with the metrics
        labels = {"model": model_name}
        self._requests = {o: requests.Metric(labels={**labels, "outcome": o}) for o in OUTCOMES}
        self._duration = duration.Metric(labels=labels)
        self._resident = resident.Metric(labels=labels)
        self._refusals = {r: refusals.Metric(labels={**labels, "reason": r}) for r in REFUSAL_REASONS}
        self._outcome_by_code = {
            getattr(pb_utils.TritonError, name, None): label for name, label in OUTCOME_BY_CODE.items()
        }

    @classmethod
    def create(cls, model_name: str) -> StepMetrics | None:
        """The step's metrics, or None where this Python backend has no custom metrics."""
        if not hasattr(pb_utils, "MetricFamily"):
            return None
        return cls(model_name)

    def answered(self, response: Any, seconds: float) -> None:
        error = response.error() if response.has_error() else None
        outcome = "ok" if error is None else self._outcome_by_code.get(error.code(), "error")
        self._requests[outcome].increment(1)
        self._duration.increment(seconds * 1e6)

    def refused(self, reason: str) -> None:
        self._refusals[reason].increment(1)

    def batch_done(self) -> None:
        self._resident.set(resident_bytes())


class TextEmbedderMetrics:
    """The text embedder's cache and the classes of each request it embeds."""

    def __init__(self, model_name: str) -> None:
        lookups, entries, classes = self._families = create_families(
            "escnet_text_cache_lookups_total", "escnet_text_cache_entries", "escnet_request_classes"
        )
        labels = {"model": model_name}
        self._hits = lookups.Metric(labels={**labels, "result": "hit"})
        self._misses = lookups.Metric(labels={**labels, "result": "miss"})
        self._entries = entries.Metric(labels=labels)
        self._classes = classes.Metric(labels=labels, buckets=CLASS_BUCKETS)

    @classmethod
    def create(cls, model_name: str) -> TextEmbedderMetrics | None:
        if not hasattr(pb_utils, "MetricFamily") or not hasattr(pb_utils.MetricFamily, "HISTOGRAM"):
            return None
        return cls(model_name)

    def embedded(self, classes: int, missing: int, cache_entries: int) -> None:
        """One request's ``classes`` names, ``missing`` of them (distinct) encoded, not cached."""
        self._hits.increment(classes - missing)
        self._misses.increment(missing)
        self._entries.set(cache_entries)
        self._classes.observe(classes)
