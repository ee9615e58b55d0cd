"""What one segmentation request returns: :class:`SegmentationResult` and its :class:`Timings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Timings:
    """Where the time of one request went, in seconds, measured by the client.

    prepare_s:    reading / converting the image and building the request (shared memory included)
    round_trip_s: the inference call: sending, the server's work, receiving
    total_s:      the whole ``segment`` call

    The server's own share is not reported: Triton gives per-request times only through tracing,
    which is not cheap; its statistics endpoint has per-model totals.
    """

    prepare_s: float
    round_trip_s: float
    total_s: float

    def to_dict(self) -> dict[str, float]:
        return {"prepare_s": self.prepare_s, "round_trip_s": self.round_trip_s, "total_s": self.total_s}


@dataclass(frozen=True)
class SegmentationResult:
    """The answer to one image and its T classes.

    labels:      [H, W] int32, the index into ``class_names`` of each pixel's class
    class_names: the T names sent, in order (a name with commas is one class with synonyms)
    scores:      [T, H, W] float32 per-class scores, or None when not asked for
    timings:     client-side timings of the request
    model:       the ensemble that answered ("escnet" or "catseg")
    """

    labels: np.ndarray
    class_names: list[str]
    scores: np.ndarray | None = None
    timings: Timings = field(default_factory=lambda: Timings(0.0, 0.0, 0.0))
    model: str = "escnet"

    @property
    def height(self) -> int:
        return int(self.labels.shape[0])

    @property
    def width(self) -> int:
        return int(self.labels.shape[1])

    def pixel_counts(self) -> np.ndarray:
        """[T] int64: how many pixels each class index got."""
        return np.bincount(self.labels.ravel(), minlength=len(self.class_names))[: len(self.class_names)]

    def class_shares(self) -> dict[str, float]:
        """Class name -> share of the image's pixels (0..1), every class in request order.

        A name given twice gets the sum of its indices' shares.
        """
        counts = self.pixel_counts()
        total = max(int(self.labels.size), 1)
        shares: dict[str, float] = {}
        for name, count in zip(self.class_names, counts, strict=True):
            shares[name] = shares.get(name, 0.0) + int(count) / total
        return shares

    def present_classes(self) -> list[tuple[int, str, float]]:
        """(index, name, share) of every class that covers at least one pixel, largest share first."""
        counts = self.pixel_counts()
        total = max(int(self.labels.size), 1)
        present = [(i, self.class_names[i], int(c) / total) for i, c in enumerate(counts) if c > 0]
        return sorted(present, key=lambda item: (-item[2], item[0]))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no arrays): model, size, classes, shares, timings."""
        return {
            "model": self.model,
            "height": self.height,
            "width": self.width,
            "classes": list(self.class_names),
            "shares": self.class_shares(),
            "timings": self.timings.to_dict(),
        }
