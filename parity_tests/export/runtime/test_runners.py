"""Graphs run in slices of their separable axes (escnet_export.runtime.runners.infer_in_chunks): the same
answer as one run, a bounded working memory, and a stop between slices when the client gave up."""

from __future__ import annotations

import numpy as np
import pytest
from parity_support import onnx_dir

from escnet.config import MODEL_CONFIGS
from escnet_export.contract import step_specs
from escnet_export.runtime.request_checks import RequestCancelled
from escnet_export.runtime.runners import OrtRunner, RunChunks, infer_in_chunks

SPECS = step_specs(MODEL_CONFIGS["escnet_vitb16_384"])


def fake_decoder(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per view and class, like the real decoder: LOGITS [B, T, 96, 96] from EMBEDDING [B, C, T, 24, 24]."""
    embedding = feeds["EMBEDDING"].sum(axis=1)  # [B, T, 24, 24]
    shift = feeds["DECODER_GUIDANCE_MID"].mean(axis=(1, 2, 3))[:, None, None, None]  # [B, 1, 1, 1]
    logits = np.repeat(np.repeat(embedding, 4, axis=-1), 4, axis=-2) + shift
    return {"LOGITS": logits * feeds["CLASS_MASK"][:, :, None, None]}


def decoder_feeds(views: int, classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "EMBEDDING": rng.standard_normal((views, 128, classes, 24, 24), dtype=np.float32),
        "DECODER_GUIDANCE_MID": rng.standard_normal((views, 32, 48, 48), dtype=np.float32),
        "DECODER_GUIDANCE_FINE": rng.standard_normal((views, 16, 96, 96), dtype=np.float32),
        "CLASS_MASK": (rng.random((views, classes)) > 0.3).astype(np.float32),
    }


@pytest.mark.parametrize(("views", "classes"), [(5, 300), (1, 7), (5, 128), (2, 129)])
@pytest.mark.parametrize("chunks", [RunChunks(views=1, classes=128), RunChunks(views=2, classes=50)])
def test_slices_give_the_one_run_answer(views: int, classes: int, chunks: RunChunks) -> None:
    feeds = decoder_feeds(views, classes)
    seen: list[tuple[int, int]] = []

    def run(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(part["EMBEDDING"].shape[0:3:2])  # (views, classes) of this run
        return fake_decoder(part)

    out = infer_in_chunks(SPECS["decoder"], feeds, run, chunks)
    np.testing.assert_array_equal(out["LOGITS"], fake_decoder(feeds)["LOGITS"])
    assert max(b for b, _ in seen) <= chunks.views and max(t for _, t in seen) <= chunks.classes
    expected_runs = -(-views // chunks.views) * -(-classes // chunks.classes)
    assert len(seen) == expected_runs


def test_inputs_without_the_axis_go_whole_and_unseparable_axes_stay_whole() -> None:
    spec = SPECS["aggregator_1"]  # separable along B only: class attention sees all classes
    assert spec.separable == ("B",)
    rng = np.random.default_rng(1)
    feeds = {
        "EMBEDDING": rng.standard_normal((3, 128, 300, 24, 24), dtype=np.float32),
        "SAM_FEATURES": rng.standard_normal((3, 128, 300, 24, 24), dtype=np.float32),
        "TEXT_GUIDANCE": rng.standard_normal((3, 300, 128), dtype=np.float32),
        "CLASS_MASK": np.ones((3, 300), np.float32),
    }
    seen = []

    def run(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(part["EMBEDDING"].shape)
        return {"NEXT_EMBEDDING": part["EMBEDDING"] * 2, "NEXT_SCORE": part["EMBEDDING"][:, 0]}

    out = infer_in_chunks(spec, feeds, run, RunChunks(views=1, classes=16))
    assert seen == [(1, 128, 300, 24, 24)] * 3
    np.testing.assert_array_equal(out["NEXT_EMBEDDING"], feeds["EMBEDDING"] * 2)
    text = SPECS["clip_text_encoder"]
    tokens = np.arange(40 * 77, dtype=np.int32).reshape(40, 77)
    sizes = []
    out = infer_in_chunks(
        text,
        {"TOKENS": tokens},
        lambda f: sizes.append(len(f["TOKENS"])) or {"TEXT_FEATURES": f["TOKENS"][:, :2] * 1.0},
        RunChunks(texts=16),
    )
    assert sizes == [16, 16, 8]
    np.testing.assert_array_equal(out["TEXT_FEATURES"], tokens[:, :2] * 1.0)


def test_a_cancelled_request_stops_before_the_next_slice() -> None:
    runs = []
    asked = []

    def cancelled() -> bool:
        asked.append(True)
        return len(runs) >= 2

    def run(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runs.append(part["EMBEDDING"].shape[0])
        return fake_decoder(part)

    with pytest.raises(RequestCancelled, match="decoder: the client gave up"):
        infer_in_chunks(SPECS["decoder"], decoder_feeds(5, 10), run, RunChunks(views=1), cancelled=cancelled)
    assert len(runs) == 2 and len(asked) == 3


def test_chunk_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk sizes must be >= 1"):
        RunChunks(views=0)


@pytest.mark.slow
def test_the_exported_decoder_in_slices_matches_one_run() -> None:
    """The real graph: onnxruntime in slices of 1 view x 64 classes vs one run of 2 views x 150."""
    path = onnx_dir() / "catseg_vitb16_384" / "decoder.onnx"
    if not path.is_file():
        pytest.skip(
            f"{path} not exported "
            "(run python -m escnet_export.onnx_graphs.export --variant catseg_vitb16_384)"
        )
    spec = step_specs(MODEL_CONFIGS["catseg_vitb16_384"])["decoder"]
    feeds = decoder_feeds(2, 150, seed=3)
    whole = OrtRunner(spec, path, threads=2, chunks=RunChunks(views=8, classes=1024)).infer(feeds)
    sliced = OrtRunner(spec, path, threads=2, chunks=RunChunks(views=1, classes=64)).infer(feeds)
    difference = float(np.abs(whole["LOGITS"] - sliced["LOGITS"]).max())
    scale = float(np.abs(whole["LOGITS"]).max())
    print(f"\ndecoder sliced vs one run: max |diff| {difference:.2e} of scale {scale:.2f}")
    assert difference <= 1e-5 * scale
