"""The request memory model (escnet_export.runtime.memory_model) and the budget check built on it."""

from __future__ import annotations

import pytest

from escnet.config import MODEL_CONFIGS
from escnet_export.contract import step_specs
from escnet_export.runtime.memory_model import (
    COSTS,
    GIB,
    RequestShape,
    StepCost,
    estimate_request_memory,
    io_bytes,
    resolve_budget,
    step_kind,
)
from escnet_export.runtime.request_checks import RequestError, check_memory_available, check_memory_budget
from escnet_export.triton_serving.server_processes import available_memory_bytes, machine_memory_bytes

STEPS = {v: list(step_specs(MODEL_CONFIGS[v]).values()) for v in ("escnet_vitb16_384", "catseg_vitb16_384")}


def test_piecewise_costs_interpolate_and_extend_along_the_last_segment() -> None:
    cost = StepCost("view_classes", ((100, 1.0), (200, 2.0), (300, 4.0)))
    assert cost.bytes_at(50) == 1.0 * GIB  # below the first point: the first point
    assert cost.bytes_at(150) == pytest.approx(1.5 * GIB)
    assert cost.bytes_at(250) == pytest.approx(3.0 * GIB)
    assert cost.bytes_at(400) == pytest.approx(6.0 * GIB)  # beyond: the last (steepest) slope


def test_step_kinds() -> None:
    assert step_kind("aggregator_2") == "aggregator"
    assert step_kind("sam_prompt_decoder_4") == "sam_prompt_decoder"
    assert step_kind("prep") == "prep" and step_kind("clip_text_encoder") == "clip_text_encoder"


def test_every_graph_and_python_step_has_a_cost() -> None:
    for variant, steps in STEPS.items():
        costs = COSTS["escnet" if variant.startswith("escnet") else "catseg"]
        missing = [s.name for s in steps if step_kind(s.name) not in costs]
        assert not missing, f"no memory cost for {missing}"


def test_io_is_the_steps_tensors() -> None:
    """catseg, T=150, five views of a 480x640 photo: 1.57 GiB of tensors between steps computed
    (1.68 GiB measured as the server's memory rise, README, Memory)."""
    shape = RequestShape(150, 5, 480, 640)
    io = sum(io_bytes(step, shape) for step in STEPS["catseg_vitb16_384"])
    assert 1.5 * GIB < io < 1.65 * GIB
    embedding = 5 * 128 * 150 * 24 * 24 * 4  # EMBEDDING [B, 128, T, 24, 24] float32
    aggregator = next(s for s in STEPS["catseg_vitb16_384"] if s.name == "aggregator_1")
    assert io_bytes(aggregator, shape) >= 2 * embedding


@pytest.mark.parametrize("variant", list(STEPS))
def test_the_estimate_grows_with_classes_and_pixels(variant: str) -> None:
    def peak(classes: int, side: int = 480) -> float:
        return estimate_request_memory(STEPS[variant], RequestShape(classes, 5, side, side)).peak

    assert peak(20) < peak(150) < peak(300) < peak(1024)
    assert peak(150, 480) <= peak(150, 1300)
    single = estimate_request_memory(STEPS[variant], RequestShape(150, 1, 480, 480)).peak
    assert single <= peak(150)  # one view holds less than five


def test_the_budget_check_names_estimate_budget_and_what_to_change() -> None:
    estimate = estimate_request_memory(STEPS["catseg_vitb16_384"], RequestShape(1000, 5, 512, 512))
    check_memory_budget(estimate, estimate.peak + 1, 1000, 512, 512)
    with pytest.raises(RequestError) as error:
        check_memory_budget(estimate, 2 * GIB, 1000, 512, 512)
    message = str(error.value)
    for part in (
        "1000 classes on a 512x512 image",
        "estimated",
        "largest step",
        "budget of 2.0 GiB",
        "fewer",
    ):
        assert part in message, message


def test_a_request_that_does_not_fit_the_free_memory_now_is_a_memory_error() -> None:
    """Within the budget but more than is free now: MemoryError, which the steps answer UNAVAILABLE
    (the server's condition, worth a retry), not a RequestError (the client's fault)."""
    estimate = estimate_request_memory(STEPS["escnet_vitb16_384"], RequestShape(150, 5, 480, 640))
    check_memory_available(estimate, estimate.peak + 1)
    with pytest.raises(
        MemoryError, match=r"needs an estimated 7\.\d GiB and the machine has 1\.0 GiB available now"
    ):
        check_memory_available(estimate, 1 * GIB)


def test_free_memory_is_read_and_within_the_machine() -> None:
    assert 0 < available_memory_bytes() <= machine_memory_bytes()


def test_budget_parameters() -> None:
    assert resolve_budget("12") == 12 * GIB
    assert 0 < resolve_budget("auto") == resolve_budget(None)
    with pytest.raises(ValueError, match="positive number of GiB"):
        resolve_budget("-1")
