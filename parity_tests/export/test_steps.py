"""The Python steps' own shortcuts against the torch operations they stand in for."""

from __future__ import annotations

import pytest
import torch

from escnet_export.steps import class_labels


@pytest.mark.parametrize("classes", [1, 2, 150])
def test_class_labels_equal_argmax_over_classes(classes: int) -> None:
    probabilities = torch.rand(classes, 37, 53, generator=torch.Generator().manual_seed(classes))
    labels = class_labels(probabilities)
    assert labels.dtype == torch.int32
    assert torch.equal(labels, probabilities.argmax(dim=0).to(torch.int32))


def test_class_labels_take_the_first_class_on_ties() -> None:
    # Quantised values make many exact ties between classes, as saturated sigmoids do.
    probabilities = (torch.rand(20, 64, 64, generator=torch.Generator().manual_seed(0)) * 4).round() / 4
    assert torch.equal(class_labels(probabilities), probabilities.argmax(dim=0).to(torch.int32))
    assert torch.equal(class_labels(torch.ones(5, 3, 3)), torch.zeros(3, 3, dtype=torch.int32))
