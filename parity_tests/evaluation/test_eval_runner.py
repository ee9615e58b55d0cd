"""The runner, the reports and the command line without a server: stand-in backends, tiny images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from escnet_client.datasets import Dataset, open_dataset
from escnet_client.errors import ServerUnavailable
from escnet_client.eval_report import output_paths, report, write_report
from escnet_client.eval_runner import EvaluationAborted, evaluate, resize_labels, resize_short_side
from escnet_client.evaluate_cli import main
from escnet_client.evaluation import confusion_matrix

CLASSES = ["dark", "mid", "bright"]


def grey_classes(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [H, W] int32: 0 below 85, 1 below 170, else 2 (of the red channel)."""
    return np.digitize(image[..., 0], [85, 170]).astype(np.int32)


class GreyBackend:
    """Predicts the grey-level class of each pixel, shifted by ``offset`` (mod 3)."""

    def __init__(self, name: str, offset: int = 0, fail_on: int | None = None) -> None:
        self.name = name
        self.offset = offset
        self.fail_on = fail_on  # raise ServerUnavailable for an image of this width
        self.calls = 0

    def __call__(self, image: np.ndarray, classes: list[str]) -> np.ndarray:
        self.calls += 1
        if image.shape[1] == self.fail_on:
            raise ServerUnavailable("server at 127.0.0.1:1 is not ready")
        return (grey_classes(image) + self.offset) % len(classes)

    def close(self) -> None:
        self.calls = -1


def make_dataset(root: Path, count: int = 3, corrupt: bool = False) -> Dataset:
    rng = np.random.default_rng(0)
    for index in range(count):
        image = rng.integers(0, 256, (12, 10 + index, 3), dtype=np.uint8)
        label = grey_classes(image).astype(np.uint8)
        label[0, :] = 255  # ignored row
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"images/img{index}.png")
        Image.fromarray(label).save(root / f"labels/img{index}.png")
    if corrupt:
        (root / "images/broken.png").write_bytes(b"not a png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "labels/broken.png")
    return open_dataset(root)


def test_two_backends_confusions_and_agreement(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path)
    exact, shifted = GreyBackend("served"), GreyBackend("reference", offset=1)
    run = evaluate(dataset, CLASSES, [exact, shifted], workers=2, progress=False)
    assert sorted(run.scored) == ["img0", "img1", "img2"] and not run.failures and run.total == 3
    pixels = 12 * (10 + 11 + 12)
    counted = pixels - (10 + 11 + 12)  # the first row of each label is 255
    assert run.ignored_pixels == pixels - counted
    exact_matrix = run.confusions["served"]
    assert exact_matrix.sum() == counted and np.trace(exact_matrix) == counted  # all correct
    assert run.scores("served").miou == 1.0
    assert np.trace(run.confusions["reference"]) == 0  # every counted pixel one class off
    assert run.agreeing_pixels == 0 and run.compared_pixels == pixels and run.agreement == 0.0


def test_failed_image_stops_the_run_or_is_reported(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, count=2, corrupt=True)
    with pytest.raises(EvaluationAborted, match="image broken: ImageReadError"):
        evaluate(dataset, CLASSES, [GreyBackend("served")], progress=False)
    run = evaluate(dataset, CLASSES, [GreyBackend("served")], skip_errors=True, progress=False)
    assert sorted(run.scored) == ["img0", "img1"] and run.total == 3
    assert [f.name for f in run.failures] == ["broken"] and "ImageReadError" in run.failures[0].reason


def test_unavailable_server_stops_even_with_skip_errors(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path, count=3)
    with pytest.raises(EvaluationAborted, match="not ready") as caught:
        evaluate(dataset, CLASSES, [GreyBackend("served", fail_on=11)], skip_errors=True, progress=False)
    assert isinstance(caught.value.__cause__, ServerUnavailable)


def test_resizing_round_trip() -> None:
    image = np.zeros((30, 20, 3), np.uint8)
    assert resize_short_side(image, 40).shape == (60, 40, 3)
    labels = np.repeat(np.arange(4, dtype=np.int32), 15).reshape(60, 1).repeat(40, axis=1)  # [60, 40]
    back = resize_labels(labels, 30, 20)
    assert back.shape == (30, 20) and set(np.unique(back)) == {0, 1, 2, 3}


def test_reports_written(tmp_path: Path) -> None:
    dataset = make_dataset(tmp_path / "data")
    run = evaluate(dataset, [*CLASSES, "absent"], [GreyBackend("served")], progress=False)
    document = report(run, "served", [*CLASSES, "absent"], {"model": "escnet"})
    paths = write_report(tmp_path, document, [*CLASSES, "absent"], run.scores("served"))
    assert paths == output_paths(tmp_path, "served")
    saved = json.loads(paths[0].read_text())
    assert saved["miou"] == 1.0 and saved["classes_scored"] == 3 and saved["per_class"][3]["iou"] is None
    assert saved["images"] == {"total": 3, "scored": 3, "failed": 0}
    assert np.array_equal(np.array(saved["confusion"]), run.confusions["served"])
    rows = list(csv.DictReader(paths[1].open()))
    assert [row["name"] for row in rows] == [*CLASSES, "absent"] and rows[3]["iou"] == ""
    with Image.open(paths[2]) as chart:
        assert chart.mode == "RGB" and chart.height > 4 * 16


def test_confusion_of_reference_labels_is_exact(tmp_path: Path) -> None:
    # The runner's matrix equals one computed by hand from the same labels.
    dataset = make_dataset(tmp_path, count=1)
    run = evaluate(dataset, CLASSES, [GreyBackend("served", offset=2)], progress=False)
    image = np.asarray(Image.open(dataset.samples[0].image))
    expected = confusion_matrix((grey_classes(image) + 2) % 3, dataset.read_label(dataset.samples[0]), 3)
    np.testing.assert_array_equal(run.confusions["served"], expected)


def test_cli_refuses_to_overwrite_and_reports_an_unreachable_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path / "data", count=1)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "served.json").write_text("{}")
    args = [str(tmp_path / "data"), "--classes-file", str(tmp_path / "classes.txt"), "--out", str(out)]
    assert main([*args, "--url", "127.0.0.1:1", "--no-progress"]) == 2
    assert "does not resume" in capsys.readouterr().err
    assert main([*args, "--url", "127.0.0.1:1", "--no-progress", "--overwrite", "--timeout", "5"]) == 4
    assert (out / "served.json").read_text() == "{}"  # nothing written by a run that did not start
    assert main([str(tmp_path / "nowhere"), *args[1:]]) == 2
