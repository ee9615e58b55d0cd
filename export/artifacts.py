"""Where built artefacts live, and the digest their cache keys are made of.

Graphs, FP16 graphs, simplified graphs and plans are rebuilt only when the sha256 of what they were
made from changes; every such key reads files through :func:`file_sha256`.

This module imports nothing of the project, so every other module may import it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DEFAULT_ONNX_DIR = Path("artifacts/onnx")  # <variant>/<graph>.onnx, fp16/<graph>.onnx
DEFAULT_REPOSITORY = Path("model_repository")  # <model>/config.pbtxt, <model>/1/model.{onnx,plan}
FP16_SUBDIR = "fp16"  # <variant>/fp16/<graph>.onnx beside the FP32 graphs
DEFAULT_TIMING_CACHE = Path("artifacts/tensorrt/timing.cache")  # shared by every TensorRT build
PLAN_NAME = "model.plan"
METADATA_SUFFIX = ".json"  # model.plan -> model.plan.json


def plan_file(repository: Path, model: str) -> Path:
    """Where a model's TensorRT plan lives in a repository: ``<repository>/<model>/1/model.plan``."""
    return Path(repository) / model / "1" / PLAN_NAME


def metadata_path(plan: Path) -> Path:
    """The metadata sidecar of a plan: ``model.plan`` -> ``model.plan.json``."""
    return plan.with_name(plan.name + METADATA_SUFFIX)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_report(path: Path, report: object) -> None:
    """A script's JSON report at ``path`` (folders made), and a line saying where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")
