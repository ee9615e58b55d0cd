"""Score a dataset with one or more backends: a bounded thread pool, a progress bar, confusion matrices.

Every image is read, optionally resized (``short_side``), segmented by each backend, and its
prediction [H, W] compared with the ground truth [H, W] (a prediction at another size than the
label is brought to the label's size by nearest-neighbour resizing). At most ``workers`` images are
in flight at once. Confusion matrices are sums of integers, so the order in which images finish
does not change the result.

A failed image stops the run (EvaluationAborted) unless ``skip_errors``; then it is recorded with
its reason and left out of every backend's matrix. A server that is down or does not answer
(ServerUnavailable) always stops the run. Nothing is resumed or cached between runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from escnet_client.datasets import Dataset, DatasetError, Sample
from escnet_client.errors import ServerUnavailable
from escnet_client.eval_backends import Backend
from escnet_client.evaluation import Scores, confusion_matrix, ignored_pixels, scores
from escnet_client.images import load_image


@dataclass(frozen=True)
class Failure:
    """An image that could not be scored, and why."""

    name: str
    reason: str


class EvaluationAborted(RuntimeError):
    """The run stopped at a failed image (no --skip-errors) or because the server is unavailable."""

    def __init__(self, failure: Failure, done: int) -> None:
        super().__init__(f"image {failure.name}: {failure.reason} (after {done} images scored)")
        self.failure = failure
        self.done = done


@dataclass
class EvaluationRun:
    """The totals of a run.

    confusions:      backend name -> [K, K] int64 (rows = ground truth)
    scored:          names of the images that entered the matrices
    failures:        images left out, with their reasons
    total:           images in the dataset (or the limit)
    ignored_pixels:  ground-truth pixels not scored (255, or outside [0, K)), scored images only
    agreeing_pixels: with two backends: pixels where their labels are equal (all pixels, ignored too)
    compared_pixels: with two backends: pixels compared
    seconds:         wall time of the run
    """

    confusions: dict[str, np.ndarray]
    total: int
    scored: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    ignored_pixels: int = 0
    agreeing_pixels: int = 0
    compared_pixels: int = 0
    seconds: float = 0.0

    def scores(self, backend: str) -> Scores:
        return scores(self.confusions[backend])

    @property
    def agreement(self) -> float | None:
        """Share of pixels where the first two backends agree; None with one backend."""
        return self.agreeing_pixels / self.compared_pixels if self.compared_pixels else None


@dataclass(frozen=True)
class _SampleResult:
    name: str
    confusions: dict[str, np.ndarray]
    ignored: int
    agreeing: int
    compared: int


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [h, w, 3] with min(h, w) = short_side, aspect kept (bilinear)."""
    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (w, h)
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] integer labels -> [height, width] int32 by nearest neighbour."""
    if labels.shape == (height, width):
        return labels
    picture = Image.fromarray(labels.astype(np.int32))  # mode "I"
    return np.asarray(picture.resize((width, height), Image.Resampling.NEAREST)).astype(np.int32)


def score_sample(
    sample: Sample,
    dataset: Dataset,
    classes: list[str],
    backends: Sequence[Backend],
    short_side: int | None = None,
) -> _SampleResult:
    """One image through every backend -> its confusion matrices (ValueError / errors of the backends)."""
    image = load_image(sample.image)  # [H, W, 3] uint8
    truth = dataset.read_label(sample)  # [H, W] int64
    if truth.shape != image.shape[:2]:
        raise DatasetError(f"label is {list(truth.shape)} but the image is {list(image.shape[:2])}")
    sent = resize_short_side(image, short_side) if short_side else image
    predictions = [resize_labels(backend(sent, classes), *truth.shape) for backend in backends]
    agreeing = int(np.count_nonzero(predictions[0] == predictions[1])) if len(predictions) > 1 else 0
    return _SampleResult(
        name=sample.name,
        confusions={
            backend.name: confusion_matrix(prediction, truth, len(classes))
            for backend, prediction in zip(backends, predictions, strict=True)
        },
        ignored=ignored_pixels(truth, len(classes)),
        agreeing=agreeing,
        compared=truth.size if len(predictions) > 1 else 0,
    )


def evaluate(
    dataset: Dataset,
    classes: list[str],
    backends: Sequence[Backend],
    *,
    workers: int = 1,
    skip_errors: bool = False,
    short_side: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> EvaluationRun:
    """Score the first ``limit`` (default all) samples of ``dataset`` with every backend.

    Raises EvaluationAborted at the first failed image (without ``skip_errors``) or when the server
    is unavailable; images already in flight finish, the rest are cancelled.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not backends:
        raise ValueError("no backend to evaluate")
    samples = dataset.samples[:limit] if limit is not None else dataset.samples
    size = len(classes)
    run = EvaluationRun(
        confusions={b.name: np.zeros((size, size), dtype=np.int64) for b in backends}, total=len(samples)
    )
    started = time.perf_counter()
    label = " + ".join(backend.name for backend in backends)
    bar = tqdm(total=len(samples), desc=label, unit="img", disable=not progress)
    pending: dict[Future[_SampleResult], Sample] = {}
    todo = iter(samples)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evaluate") as pool:
        try:
            while True:
                while len(pending) < workers and (sample := next(todo, None)) is not None:
                    future = pool.submit(score_sample, sample, dataset, classes, backends, short_side)
                    pending[future] = sample
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    _collect(run, pending.pop(future), future, skip_errors)
                    bar.update(1)
                    bar.set_postfix(failed=len(run.failures), refresh=False)
        finally:
            bar.close()
            for future in pending:
                future.cancel()
    run.seconds = time.perf_counter() - started
    return run


def _collect(run: EvaluationRun, sample: Sample, future: Future[_SampleResult], skip_errors: bool) -> None:
    """Add one finished image to ``run``, or record / raise its failure."""
    error = future.exception()
    if error is None:
        result = future.result()
        for name, confusion in result.confusions.items():
            run.confusions[name] += confusion
        run.scored.append(result.name)
        run.ignored_pixels += result.ignored
        run.agreeing_pixels += result.agreeing
        run.compared_pixels += result.compared
        return
    if not isinstance(error, Exception):  # KeyboardInterrupt and the like
        raise error
    failure = Failure(sample.name, f"{type(error).__name__}: {error}")
    if isinstance(error, ServerUnavailable) or not skip_errors:
        raise EvaluationAborted(failure, len(run.scored)) from error
    run.failures.append(failure)
