"""From an image to the model's views and from view logits back (escnet/view_plan.py, image_views.py),
under both inference protocols. Expected values are written from the protocol's definition (CAT-Seg's
evaluation as escnet/config.py states it), not from the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from escnet.config import PROTOCOLS
from escnet.image_views import make_views, merge_views
from escnet.registry import MODEL_CONFIGS
from escnet.view_plan import ViewPlan, plan_views, resize_shortest_edge, shortest_edge_size
from escnet_export.contract import step_specs

CONFIG = MODEL_CONFIGS["catseg_vitb16_384"]
SLIDING = PROTOCOLS["catseg_eval"]
SINGLE = PROTOCOLS["single_view"]
SINGLE_CONFIG = CONFIG.with_protocol(SINGLE)
MEAN = torch.tensor(CONFIG.clip.pixel_mean).view(1, 3, 1, 1)
STD = torch.tensor(CONFIG.clip.pixel_std).view(1, 3, 1, 1)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def as_batch(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float()  # [1, 3, H, W]


def resize(x: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    return F.interpolate(x, size=(height, width or height), mode="bilinear", align_corners=False)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (480, 640, (640, 853)),  # 640 * 640 / 480 = 853.33 -> 853
        (640, 480, (853, 640)),
        (384, 384, (640, 640)),
        (640, 640, (640, 640)),
        (768, 1024, (640, 853)),
        (100, 37, (1730, 640)),  # 640 * 100 / 37 = 1729.7 -> 1730
        (100, 1000, (256, 2560)),  # the longer side capped at 2560: 6400 -> 2560, 640 -> 256
        (3, 9, (640, 1920)),  # 1920 is under the cap
        (333, 500, (640, 961)),  # 960.96 -> 961 (half up)
    ],
)
def test_shortest_edge_size_is_detectron2s(height: int, width: int, expected: tuple[int, int]) -> None:
    assert shortest_edge_size(height, width, SLIDING) == expected


def test_shortest_edge_resize_is_pils_bilinear_on_uint8() -> None:
    pixels = random_image(480, 640)
    resized = resize_shortest_edge(pixels, SLIDING)
    expected = np.asarray(Image.fromarray(pixels).resize((853, 640), Image.Resampling.BILINEAR))
    assert resized.dtype == np.uint8 and resized.shape == (640, 853, 3)
    np.testing.assert_array_equal(resized, expected)
    same = random_image(640, 700)
    np.testing.assert_array_equal(resize_shortest_edge(same, SLIDING), same)  # already 640: a copy


@pytest.mark.parametrize(("height", "width"), [(480, 640), (384, 384), (700, 960), (100, 37)])
def test_sliding_window_is_four_crops_and_a_global_view_of_the_resized_image(height: int, width: int) -> None:
    plan = plan_views(height, width, SLIDING)
    assert plan.sliding and plan.num_views == 5
    assert (plan.window_size, plan.crop_size, plan.stride) == (640, 384, 256)  # int(384 * 0.667)
    resized = resize_shortest_edge(random_image(height, width), SLIDING)
    assert resized.shape[:2] == (plan.resized_height, plan.resized_width)
    views = make_views(torch.from_numpy(resized), plan, CONFIG)
    assert views.shape == (5, 3, 384, 384) and views.dtype == torch.float32
    window = resize(as_batch(resized), 640)  # [1, 3, 640, 640], normalised after cropping
    for index, (top, left) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
        crop = (window[:, :, top : top + 384, left : left + 384] - MEAN) / STD
        torch.testing.assert_close(views[index : index + 1], crop, rtol=0, atol=1e-6, msg=f"crop {index}")
    global_view = (resize(as_batch(resized), 384) - MEAN) / STD
    torch.testing.assert_close(views[4:], global_view, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("height", "width"), [(480, 640), (384, 384), (100, 1000)])
def test_single_view_pads_to_32_then_resizes(height: int, width: int) -> None:
    plan = plan_views(height, width, SINGLE)
    assert not plan.sliding and plan.num_views == 1
    resized = resize_shortest_edge(random_image(height, width), SINGLE)
    views = make_views(torch.from_numpy(resized), plan, SINGLE_CONFIG)
    h, w = resized.shape[:2]
    padded_h, padded_w = -(-h // 32) * 32, -(-w // 32) * 32
    normalised = (as_batch(resized) - MEAN) / STD
    padded = torch.zeros(1, 3, padded_h, padded_w)
    padded[:, :, :h, :w] = normalised
    torch.testing.assert_close(views, resize(padded, 384), rtol=0, atol=1e-6)


@pytest.mark.parametrize("protocol", [SLIDING, SINGLE], ids=lambda p: p.name)
@pytest.mark.parametrize(("height", "width"), [(512, 512), (300, 500), (640, 640), (700, 960)])
@pytest.mark.parametrize("value", [-3.0, 0.0, 2.5])
def test_constant_logits_merge_to_their_sigmoid(protocol, height: int, width: int, value: float) -> None:
    plan = plan_views(height, width, protocol)
    classes = 3
    logits = torch.full((plan.num_views, classes, 96, 96), value)
    probabilities = merge_views(logits, plan)
    assert probabilities.shape == (classes, height, width)  # the original image's own size
    expected = torch.full_like(probabilities, torch.sigmoid(torch.tensor(value)).item())
    torch.testing.assert_close(probabilities, expected, rtol=1e-6, atol=1e-6)


def test_sliding_merge_averages_overlapping_crops_then_the_global_view() -> None:
    plan = plan_views(640, 640, SLIDING)  # no final resize: the 640 frame is the image
    values = torch.tensor([-2.0, -1.0, 0.5, 1.0, 3.0])  # crops 0..3, then the global view
    logits = values.view(5, 1, 1, 1).expand(5, 1, 96, 96).clone()
    merged = merge_views(logits, plan)[0]
    s = torch.sigmoid(values)
    cases = {
        (10, 10): s[0],  # only crop 0 covers the top-left corner
        (10, 300): (s[0] + s[1]) / 2,  # columns 256..383 are in crops 0 and 1
        (10, 600): s[1],
        (300, 10): (s[0] + s[2]) / 2,
        (300, 300): s[:4].mean(),  # the centre is in all four crops
        (600, 600): s[3],
    }
    for (row, col), crops in cases.items():
        expected = (crops + s[4]) / 2
        torch.testing.assert_close(merged[row, col], expected, msg=f"pixel {(row, col)}")


def test_single_view_keeps_the_padding_and_crops_only_below_96_pixels() -> None:
    # A 100x1000 image resizes to 256x2560: the view's 96x96 probabilities are cut to their first
    # 96 rows and columns (no cut) and stretched over the image, padding included, as CAT-Seg does.
    plan = plan_views(100, 1000, SINGLE)
    logits = torch.linspace(-4, 4, 96).view(1, 1, 1, 96).expand(1, 1, 96, 96).clone()
    expected = resize(logits.sigmoid(), 100, 1000)[0]
    torch.testing.assert_close(merge_views(logits, plan), expected, rtol=0, atol=1e-7)
    # 10x2000 -> 26x... at the cap: only the first 26 rows of the view remain (CAT-Seg's crop).
    thin = plan_views(10, 2000, SINGLE)
    assert thin.resized_height < 96
    rows = torch.linspace(-4, 4, 96).view(1, 1, 96, 1).expand(1, 1, 96, 96).clone()
    expected = resize(rows.sigmoid()[:, :, : thin.resized_height], 10, 2000)[0]
    torch.testing.assert_close(merge_views(rows, thin), expected, rtol=0, atol=1e-7)


def test_view_plan_length_is_the_contracts() -> None:
    from dataclasses import fields

    from escnet_export.contract import VIEW_PLAN_LENGTH

    assert len(fields(ViewPlan)) == VIEW_PLAN_LENGTH
    assert step_specs(CONFIG)["preprocess"].output("VIEW_PLAN").shape == (VIEW_PLAN_LENGTH,)


@pytest.mark.parametrize("protocol", [SLIDING, SINGLE], ids=lambda p: p.name)
def test_view_plan_travels_as_int32_and_back(protocol) -> None:
    plan = plan_views(481, 1023, protocol)
    encoded = plan.encode()
    assert encoded.dtype == np.int32
    assert ViewPlan.decode(encoded) == plan
    with pytest.raises(ValueError, match="VIEW_PLAN must have"):
        ViewPlan.decode(encoded[:-1])
