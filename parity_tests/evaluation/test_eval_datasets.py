"""Dataset layouts discovered in tiny temporary folders, label conventions and class lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from escnet_client.datasets import DatasetError, open_dataset, read_class_list, read_label

LABEL = np.array([[0, 1, 2], [150, 255, 3]], dtype=np.uint8)  # [2, 3]


def write_pair(image: Path, label: Path | None, values: np.ndarray = LABEL) -> None:
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*values.shape, 3), np.uint8)).save(image)
    if label is not None:
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(values).save(label)


def write_list(path: Path, stems: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(stems) + "\n")


def test_ade20k_layout_shifts_zero(tmp_path: Path) -> None:
    for stem in ("ADE_val_2", "ADE_val_1"):
        write_pair(
            tmp_path / f"images/validation/{stem}.jpg", tmp_path / f"annotations/validation/{stem}.png"
        )
    write_pair(
        tmp_path / "images/training/ADE_train_1.jpg", tmp_path / "annotations/training/ADE_train_1.png"
    )
    dataset = open_dataset(tmp_path)
    assert (dataset.layout, dataset.split, dataset.reduce_zero_label) == ("ade20k", "validation", True)
    assert [s.name for s in dataset.samples] == ["ADE_val_1", "ADE_val_2"]  # name order, one split
    # 0 (other) -> 255, k -> k - 1, 255 stays 255
    np.testing.assert_array_equal(dataset.read_label(dataset.samples[0]), [[255, 0, 1], [149, 255, 2]])
    assert len(open_dataset(tmp_path, split="training")) == 1


def test_ade20k_detectron2_annotations_are_not_shifted(tmp_path: Path) -> None:
    write_pair(tmp_path / "images/validation/a.jpg", tmp_path / "annotations_detectron2/validation/a.png")
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "ade20k" and not dataset.reduce_zero_label
    np.testing.assert_array_equal(dataset.read_label(dataset.samples[0]), LABEL)


def test_voc_layout_follows_the_split_list(tmp_path: Path) -> None:
    for stem in ("2007_000033", "2007_000042", "2007_000061"):
        write_pair(tmp_path / f"JPEGImages/{stem}.jpg", tmp_path / f"SegmentationClass/{stem}.png")
    write_list(tmp_path / "ImageSets/Segmentation/val.txt", ["2007_000042", "2007_000033"])
    dataset = open_dataset(tmp_path)
    assert (dataset.layout, dataset.split, dataset.reduce_zero_label) == ("voc", "val", False)
    assert [s.name for s in dataset.samples] == ["2007_000033", "2007_000042"]
    np.testing.assert_array_equal(dataset.read_label(dataset.samples[0]), LABEL)  # 0 = background
    assert open_dataset(tmp_path, reduce_zero_label=True).reduce_zero_label  # VOC-20


def test_voc_palette_labels_read_as_indices(tmp_path: Path) -> None:
    label = Image.fromarray(LABEL, mode=None).convert("P")
    label.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    label.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_label(tmp_path / "palette.png"), LABEL)


def test_pascal_context_layouts(tmp_path: Path) -> None:
    prepared, stem = tmp_path / "prepared", "2008_000002"
    write_pair(prepared / f"JPEGImages/{stem}.jpg", prepared / f"annotations_detectron2/pc59_val/{stem}.png")
    dataset = open_dataset(prepared)
    assert (dataset.layout, dataset.reduce_zero_label, len(dataset)) == ("pascal-context", False, 1)

    mmseg = tmp_path / "mmseg"
    write_pair(mmseg / f"JPEGImages/{stem}.jpg", mmseg / f"SegmentationClassContext/{stem}.png")
    write_list(mmseg / "ImageSets/SegmentationContext/val.txt", [stem])
    dataset = open_dataset(mmseg)
    assert (dataset.layout, dataset.reduce_zero_label, len(dataset)) == ("pascal-context", True, 1)


def test_generic_layout(tmp_path: Path) -> None:
    write_pair(tmp_path / "images/b.png", tmp_path / "labels/b.png")
    write_pair(tmp_path / "images/a.jpg", tmp_path / "labels/a.png")
    (tmp_path / "images/notes.txt").write_text("not an image")
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "generic" and [s.name for s in dataset.samples] == ["a", "b"]
    assert dataset.samples[0].label == tmp_path / "labels/a.png"


def test_missing_files_and_unknown_layouts_are_refused(tmp_path: Path) -> None:
    write_pair(tmp_path / "images/a.jpg", tmp_path / "labels/a.png")
    write_pair(tmp_path / "images/b.jpg", None)
    with pytest.raises(DatasetError, match=r"1 of 2 samples .* no label file: labels/b.png"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="matches no known layout"):
        open_dataset(tmp_path / "images")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    voc = tmp_path / "voc"
    write_pair(voc / "JPEGImages/x.jpg", voc / "SegmentationClass/x.png")
    with pytest.raises(DatasetError, match="split list"):
        open_dataset(voc)


def test_colour_labels_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="single-channel"):
        read_label(tmp_path / "rgb.png")


def test_class_lists(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps(["wall", ["sofa", "couch"], "sky"]))
    assert read_class_list(tmp_path / "c.json") == ["wall", "sofa, couch", "sky"]
    (tmp_path / "c.txt").write_text("# ADE\nwall\n\n  sofa, couch \nsky\n")
    assert read_class_list(tmp_path / "c.txt") == ["wall", "sofa, couch", "sky"]
    (tmp_path / "bad.txt").write_text("wall; floor\n")
    with pytest.raises(DatasetError, match="entry 0"):
        read_class_list(tmp_path / "bad.txt")
    (tmp_path / "nested.json").write_text(json.dumps(["wall", ["sofa", 3]]))
    with pytest.raises(DatasetError, match="entry 1"):
        read_class_list(tmp_path / "nested.json")
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(DatasetError, match="JSON list"):
        read_class_list(tmp_path / "bad.json")
