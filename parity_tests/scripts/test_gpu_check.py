"""scripts/gpu_check.py on this machine: its steps section runs the torch steps (the GPU
repository's code after DLPack) on CPU tensors where there is no CUDA device, against the numpy
steps, and its reference section says it did not run. On a CUDA machine the same test checks the
GPU figures are there."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from parity_support import load_script

from escnet_export.parity import TOLERANCES

gpu_check = load_script("gpu_check")


def test_gpu_check_writes_steps_parity_and_says_what_it_could_not_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--classes", "3", "--runs", "1", "--warmup", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["steps"]
    pseudo = [r for r in rows if r["step"] == "pseudo_points"]
    post = [r for r in rows if r["step"] == "postprocess"]
    assert [r["variant"] for r in pseudo] == ["escnet_vitb16_384"]  # only ESC-Net has the step
    assert {r["variant"] for r in post} == {"escnet_vitb16_384", "catseg_vitb16_384"}
    for row in pseudo:  # the same float64 pseudo-prompt code: held to "exact"
        assert row["mask_equal"] and row["point_labels_equal"], row
        assert row["points_max_abs"] <= TOLERANCES["exact"].max_abs_of_scale, row
    for row in post:  # probabilities (scale 1): held to the numpy steps' tolerance
        assert row["labels_equal_share"] >= TOLERANCES["labels"].min_label_agreement, row
        assert row["scores_max_abs"] <= TOLERANCES["numpy_steps"].max_abs_of_scale, row
    if torch.cuda.is_available():
        assert report["steps_device"] == "cuda"
        assert {(r["variant"], r["precision"]) for r in report["reference"]}, report["reference"]
    else:
        assert report["steps_device"] == "cpu"
        assert report["reference"].startswith("not run: no CUDA device"), report["reference"]
