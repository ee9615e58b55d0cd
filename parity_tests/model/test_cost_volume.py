"""The cost volume and the choice of classes class attention sees (escnet/cost_volume.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from escnet.cost_volume import class_keep_mask, cost_volume, mean_over_templates


def test_cost_volume_equals_einsum_of_normalised_features() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 32, 5, 7, generator=generator, dtype=torch.float64) * 3
    text = torch.randn(6, 3, 32, generator=generator, dtype=torch.float64) * 0.2
    expected = torch.einsum("bchw,tpc->bpthw", F.normalize(image, dim=1), F.normalize(text, dim=-1))
    corr = cost_volume(image, text)
    assert corr.shape == (2, 3, 6, 5, 7)  # [B, P, T, H, W]
    torch.testing.assert_close(corr, expected, rtol=1e-12, atol=1e-12)
    assert corr.abs().max() <= 1 + 1e-12  # cosines


def test_cost_volume_by_hand() -> None:
    # One pixel along x, one along y; classes "x", "y" and "x+y" (unnormalised on purpose).
    image = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # [1, C=2, H=1, W=2]
    text = torch.tensor([[[1.0, 0.0]], [[0.0, 3.0]], [[1.0, 1.0]]])  # [T=3, P=1, C=2]
    corr = cost_volume(image, text)[0, 0]  # [T, H, W]
    half = 2**-0.5
    expected = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[half, half]]])
    torch.testing.assert_close(corr, expected)
    torch.testing.assert_close(mean_over_templates(cost_volume(image, text)), corr.unsqueeze(0))


def peaks_volume(peaks: list[float], templates: int = 2) -> torch.Tensor:
    """A [1, P, T, 3, 3] volume whose class t peaks at peaks[t] (in one template, at one pixel)."""
    t = len(peaks)
    corr = torch.full((1, templates, t, 3, 3), -1.0)
    for index, peak in enumerate(peaks):
        corr[0, index % templates, index, index % 3, (2 * index) % 3] = peak
    return corr


def test_all_classes_kept_up_to_max() -> None:
    corr = peaks_volume([0.1, 0.9, 0.3])
    assert class_keep_mask(corr, 3).tolist() == [[1.0, 1.0, 1.0]]
    assert class_keep_mask(corr, 256).tolist() == [[1.0, 1.0, 1.0]]


def test_highest_peaks_kept_when_over_max() -> None:
    #            0     1     2     3     4     5
    peaks = [0.10, 0.90, 0.30, 0.80, 0.20, 0.50]
    assert class_keep_mask(peaks_volume(peaks), 3).tolist() == [[0, 1, 0, 1, 0, 1]]
    assert class_keep_mask(peaks_volume(peaks), 1).tolist() == [[0, 1, 0, 0, 0, 0]]
    assert class_keep_mask(peaks_volume(peaks), 5).tolist() == [[0, 1, 1, 1, 1, 1]]


def test_ties_go_to_the_lower_index() -> None:
    #            0    1    2    3    4
    peaks = [0.5, 0.7, 0.5, 0.5, 0.2]
    # 1 first; then three tied at 0.5: indices 0, 2, 3 in that order.
    assert class_keep_mask(peaks_volume(peaks), 2).tolist() == [[1, 1, 0, 0, 0]]
    assert class_keep_mask(peaks_volume(peaks), 3).tolist() == [[1, 1, 1, 0, 0]]
    assert class_keep_mask(peaks_volume(peaks), 4).tolist() == [[1, 1, 1, 1, 0]]
    # All equal: the first max_classes.
    assert class_keep_mask(torch.zeros(1, 1, 6, 2, 2), 4).tolist() == [[1, 1, 1, 1, 0, 0]]


def test_peak_is_the_max_over_templates_and_pixels() -> None:
    corr = torch.zeros(1, 3, 3, 2, 2)
    corr[0, 2, 0, 1, 1] = 0.9  # class 0 peaks in the last template, bottom-right pixel
    corr[0, :, 1] = 0.5  # class 1 is 0.5 everywhere (its mean is higher than class 0's)
    corr[0, 0, 2, 0, 0] = 0.6  # class 2 peaks in the first template
    assert class_keep_mask(corr, 2).tolist() == [[1, 0, 1]]


@pytest.mark.parametrize(("classes", "limit"), [(257, 256), (300, 256), (1024, 256), (50, 7)])
def test_exact_count_kept_per_image(classes: int, limit: int) -> None:
    generator = torch.Generator().manual_seed(classes)
    corr = torch.rand(3, 1, classes, 4, 4, generator=generator)
    corr[1] = corr[1].round(decimals=1)  # many ties in the second image
    corr[2] = 0.25  # all tied in the third
    mask = class_keep_mask(corr, limit)
    assert mask.shape == (3, classes)
    assert mask.dtype == torch.float32
    assert mask.sum(dim=1).tolist() == [limit, limit, limit]
    # The kept ones are exactly a top-k by peak (lower index first among ties).
    peak = corr.flatten(start_dim=3).amax(dim=-1).amax(dim=1)  # [B, T]
    for image in range(3):
        order = sorted(range(classes), key=lambda c: (-peak[image, c].item(), c))[:limit]
        expected = torch.zeros(classes)
        expected[order] = 1
        assert torch.equal(mask[image], expected)


def test_no_limit_keeps_everything() -> None:
    assert class_keep_mask(torch.rand(2, 1, 5, 3, 3), 0).tolist() == [[1] * 5, [1] * 5]
