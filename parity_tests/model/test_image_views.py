"""From an image to the model's views and from view logits back (escnet/image_views.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from escnet.image_views import CROP_SIZE, make_views, merge_views, plan_views
from escnet.registry import MODEL_CONFIGS

CONFIG = MODEL_CONFIGS["catseg_vitb16_384"]
MEAN = torch.tensor(CONFIG.clip.pixel_mean).view(1, 3, 1, 1)
STD = torch.tensor(CONFIG.clip.pixel_std).view(1, 3, 1, 1)


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)


def as_batch(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.permute(2, 0, 1).unsqueeze(0).float()  # [1, 3, H, W]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize(("height", "width"), [(512, 512), (100, 37), (639, 2000), (384, 384)])
def test_small_image_is_one_view(height: int, width: int) -> None:
    plan = plan_views(height, width, CONFIG)
    assert not plan.sliding
    assert plan.num_views == 1
    pixels = random_image(height, width)
    views = make_views(pixels, plan, CONFIG)
    assert views.shape == (1, 3, 384, 384)
    assert views.dtype == torch.float32
    expected = (resize(as_batch(pixels), 384) - MEAN) / STD
    torch.testing.assert_close(views, expected, rtol=1e-5, atol=1e-5)


def test_large_image_is_four_crops_and_a_global_view() -> None:
    pixels = random_image(700, 960)
    plan = plan_views(700, 960, CONFIG)
    assert plan.sliding
    assert (plan.window_size, plan.stride) == (640, 256)  # int(384 * (1 - 0.333)) = 256
    assert plan.num_views == 5
    views = make_views(pixels, plan, CONFIG)
    assert views.shape == (5, 3, 384, 384)
    window = (resize(as_batch(pixels), 640) - MEAN) / STD  # [1, 3, 640, 640]
    # Crops in row-major order at offsets (0, 0), (0, 256), (256, 0), (256, 256) of the 640 resize.
    for index, (top, left) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
        crop = window[0, :, top : top + CROP_SIZE, left : left + CROP_SIZE]
        torch.testing.assert_close(views[index], crop, rtol=1e-5, atol=1e-5, msg=f"crop {index}")
    global_view = (resize(as_batch(pixels), 384) - MEAN) / STD
    torch.testing.assert_close(views[4:], global_view, rtol=1e-5, atol=1e-5)


def test_short_side_640_is_the_threshold() -> None:
    assert plan_views(640, 640, CONFIG).sliding
    assert plan_views(2000, 640, CONFIG).sliding
    assert not plan_views(639, 640, CONFIG).sliding


@pytest.mark.parametrize(("height", "width"), [(512, 512), (300, 500), (640, 640), (700, 960)])
@pytest.mark.parametrize("value", [-3.0, 0.0, 2.5])
def test_constant_logits_merge_to_their_sigmoid(height: int, width: int, value: float) -> None:
    plan = plan_views(height, width, CONFIG)
    classes = 3
    logits = torch.full((plan.num_views, classes, 96, 96), value)
    probabilities = merge_views(logits, plan)
    assert probabilities.shape == (classes, height, width)  # the image's own size
    expected = torch.full_like(probabilities, torch.sigmoid(torch.tensor(value)).item())
    torch.testing.assert_close(probabilities, expected, rtol=1e-6, atol=1e-6)


def test_sliding_merge_averages_overlapping_crops_then_the_global_view() -> None:
    plan = plan_views(640, 640, CONFIG)  # no final resize: the 640 frame is the image
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
