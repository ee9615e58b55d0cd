"""``escnet-evaluate`` end to end: the session's real tritonserver against the PyTorch reference.

The dataset is built here from three real photos (skimage.data), resized small, with labels
derived from their grey level (three classes) and ignored pixels (a 255 border and an
out-of-range patch). The weights are random, so the mIoU means nothing; what is checked is that
the served ensemble and the reference score the same: the served chain equals the reference on
>= 99.9 % of pixels, so their confusion matrices may differ only by what the disagreeing pixels
can move.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from escnet_client import eval_backends
from escnet_client.evaluate_cli import main
from escnet_export.contract import DEFAULT_VARIANTS

pytestmark = pytest.mark.triton

MODEL = "escnet"
VARIANT = DEFAULT_VARIANTS[MODEL]
CLASSES = ["sky", "person, astronaut", "cup"]  # T = 3; the second class has two synonyms
PHOTOS = {"astronaut": (256, 256), "chelsea": (192, 288), "coffee": (192, 256)}  # name: (H, W)
MIN_AGREEMENT = 0.999  # share of pixels where served and reference labels are equal
CLI = [sys.executable, "-m", "escnet_client.evaluate_cli"]


def write_photo(root: Path, name: str, size: tuple[int, int]) -> None:
    """images/<name>.png and labels/<name>.png: grey level < 85 -> 0, < 170 -> 1, else 2."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the photos")
    photo = Image.fromarray(getattr(data, name)()).convert("RGB")
    image = np.asarray(photo.resize(size[::-1], Image.Resampling.BILINEAR))  # [H, W, 3]
    label = np.digitize(image.mean(axis=2), [85, 170]).astype(np.uint8)  # [H, W] in 0..2
    label[:6], label[-6:], label[:, :6], label[:, -6:] = 255, 255, 255, 255  # ignored border
    label[20:40, 20:40] = 7  # outside [0, 3): ignored as well
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(label).save(root / "labels" / f"{name}.png")


@pytest.fixture(scope="module")
def photo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photo_dataset")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for name, size in PHOTOS.items():
        write_photo(root, name, size)
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return root


@pytest.fixture(scope="module")
def both_reports(triton_server, reference_models, photo_dataset: Path, tmp_path_factory) -> dict[str, dict]:
    """``escnet-evaluate --backend both``; its reference is the session's reference model."""
    out = tmp_path_factory.mktemp("evaluation")

    def session_reference(cls, variant: str, **files: object) -> eval_backends.ReferenceBackend:
        assert variant == VARIANT and not any(files.get(k) for k in ("checkpoint", "clip_checkpoint"))
        return cls(reference_models[variant])  # the model run_export exported (seed 0, no files)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eval_backends.ReferenceBackend, "from_variant", classmethod(session_reference))
        code = main(
            [
                str(photo_dataset),
                "--classes-file",
                str(photo_dataset / "classes.json"),
                "--out",
                str(out),
                "--backend",
                "both",
                "--url",
                triton_server.http_url,
                "--model",
                MODEL,
                "--timeout",
                "900",
                "--workers",
                "2",
                "--no-progress",
            ]
        )
    assert code == 0
    names = ("served", "reference", "comparison")
    return {name: json.loads((out / f"{name}.json").read_text()) for name in names}


def iou_bound(union: int, disagreeing: int) -> float:
    """Largest change of one class's IoU = I / U when ``disagreeing`` pixels change label.

    I and U each move by at most D: |I/U - I'/U'| <= 2 D / (U - D) (U > D).
    """
    return 2 * disagreeing / (union - disagreeing) if union > disagreeing else 1.0


def test_served_and_reference_score_alike(both_reports: dict[str, dict]) -> None:
    served, reference = both_reports["served"], both_reports["reference"]
    comparison = both_reports["comparison"]
    for document in (served, reference):
        assert document["images"] == {"total": len(PHOTOS), "scored": len(PHOTOS), "failed": 0}
        assert document["pixels"]["ignored"] > 0 and document["num_classes"] == len(CLASSES)
    total_pixels = sum(h * w for h, w in PHOTOS.values())
    assert comparison["compared_pixels"] == total_pixels
    agreement = comparison["agreement"]
    disagreeing = total_pixels - comparison["agreeing_pixels"]
    served_matrix, reference_matrix = np.array(served["confusion"]), np.array(reference["confusion"])
    moved = int(np.abs(served_matrix - reference_matrix).sum())
    print(
        f"\n[evaluate] served mIoU {100 * served['miou']:.3f}, reference mIoU {100 * reference['miou']:.3f}, "
        f"difference {100 * (served['miou'] - reference['miou']):+.4f} points; pixel accuracy "
        f"{100 * served['pixel_accuracy']:.3f} / {100 * reference['pixel_accuracy']:.3f}; labels agree on "
        f"{100 * agreement:.4f}% of {total_pixels} pixels ({disagreeing} differ); confusion entries moved "
        f"{moved}\nserved confusion\n{served_matrix}\nreference confusion\n{reference_matrix}"
    )
    assert agreement >= MIN_AGREEMENT
    assert served_matrix.sum() == reference_matrix.sum()  # the same ground-truth pixels counted
    assert moved <= 2 * disagreeing  # a pixel that changes label moves one count out of a cell, into another
    bounds = []
    for s_row, r_row in zip(served["per_class"], reference["per_class"], strict=True):
        union = s_row["gt_pixels"] + s_row["pred_pixels"] - served_matrix[s_row["index"], s_row["index"]]
        assert (s_row["iou"] is None) == (r_row["iou"] is None), s_row["name"]
        if s_row["iou"] is not None:
            bounds.append(iou_bound(int(union), disagreeing))
            assert abs(s_row["iou"] - r_row["iou"]) <= bounds[-1], s_row["name"]
    assert abs(served["miou"] - reference["miou"]) <= sum(bounds) / len(bounds)


def test_failed_image_is_an_error_unless_skipped(triton_server, photo_dataset: Path, tmp_path: Path) -> None:
    """The console entry point on a dataset with one good and one unreadable image."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for folder in ("images", "labels"):
        (root / folder / "coffee.png").write_bytes((photo_dataset / folder / "coffee.png").read_bytes())
    (root / "images/broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labels/broken.png")
    common = [str(root), "--classes-file", str(photo_dataset / "classes.json")]
    common += ["--url", triton_server.http_url, "--workers", "1", "--no-progress", "--timeout", "900"]

    stopped = subprocess.run([*CLI, *common, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert stopped.returncode == 1, stopped.stderr
    assert "image broken: ImageReadError" in stopped.stderr and not (tmp_path / "a/served.json").exists()

    skipped = subprocess.run(
        [*CLI, *common, "--out", str(tmp_path / "b"), "--skip-errors"], capture_output=True, text=True
    )
    assert skipped.returncode == 0, skipped.stderr
    print(f"\n[evaluate] {skipped.stdout}")
    assert "scored 1 of 2 images, 1 failed" in skipped.stdout
    assert "failed broken: ImageReadError" in skipped.stdout
    document = json.loads((tmp_path / "b/served.json").read_text())
    assert document["images"] == {"total": 2, "scored": 1, "failed": 1}
    assert document["failures"][0]["image"] == "broken" and document["scored_images"] == ["coffee"]
