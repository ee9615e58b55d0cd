"""Where built artefacts live, and the digest their cache keys are made of.

Graphs, FP16 graphs, simplified graphs and plans are rebuilt only when the sha256 of what they were
made from changes; every such key reads files through :func:`file_sha256`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DEFAULT_ONNX_DIR = Path("artifacts/onnx")  # <variant>/<graph>.onnx, fp16/<graph>.onnx
DEFAULT_REPOSITORY = Path("model_repository")
FP16_SUBDIR = "fp16"  # <variant>/fp16/<graph>.onnx beside the FP32 graphs


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
