"""The computed GPU memory table: the ensemble's live tensors along the chain, checked against the
tensor sizes worked out by hand from the contract's shapes."""

from __future__ import annotations

from escnet.config import MODEL_CONFIGS
from escnet_export.engines.gpu_memory import memory_table, request_tensors


def test_largest_call_is_the_first_aggregator_at_five_views() -> None:
    config = MODEL_CONFIGS["escnet_vitb16_384"]
    views, classes, grid, hidden = 5, 1024, 24, 128
    embedding = views * hidden * classes * grid * grid * 4  # EMBEDDING [B, 128, T, 24, 24] float32
    live, largest, step = request_tensors(config, classes, views, (480, 640))
    assert step == "aggregator_1"
    # EMBEDDING, SAM_FEATURES in and NEXT_EMBEDDING out, plus the small guidance tensors
    assert 3 * embedding <= largest < 3.01 * embedding
    assert largest <= live < 1.01 * largest


def test_table_rows_grow_with_classes_and_views() -> None:
    rows = memory_table("catseg_vitb16_384", classes=(19, 150), views=(1, 5), with_weights=False)
    assert [(r.views, r.classes) for r in rows] == [(1, 19), (1, 150), (5, 19), (5, 150)]
    assert rows[0].live < rows[1].live and rows[2].live < rows[3].live
    assert all(r.weights is None and r.total is None for r in rows)
