"""The checks that keep a TensorRT plan tied to its machine and its graph.

A plan (``model_repository/<ensemble>_<graph>/1/model.plan``, built by builder.py through
``python -m escnet_export.engines.build``) has its metadata beside it (``model.plan.json``):
TensorRT version, GPU name and compute capability, the profiles, the sha256 of the source ONNX and
of the plan, the precision. ``check_plan`` refuses a plan whose metadata does not match the running
machine or the current ONNX graph, naming the command that rebuilds it; ``check_repository`` runs it
over every plan of a repository.

TensorRT is imported lazily: this module imports, and its checks run, on machines without it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from escnet.config import MODEL_CONFIGS
from escnet_export.artifacts import (
    DEFAULT_ONNX_DIR,
    DEFAULT_REPOSITORY,
    file_sha256,
    metadata_path,
    plan_file,
)
from escnet_export.contract import AXIS_PROFILES, DEFAULT_VARIANTS, AxisProfile, graph_names
from escnet_export.triton_serving.configs import model_name

METADATA_SCHEMA = 2  # 2: a list of optimisation profiles
BUILD_COMMAND = "python -m escnet_export.engines.build"
NO_TENSORRT = (
    "TensorRT is not available here. Build and run engines where it is: inside "
    "NVIDIA's Triton container (nvcr.io/nvidia/tritonserver:<yy.mm>-py3), or after "
    "`pip install tensorrt` from NVIDIA's index; see the README, Running with TensorRT."
)


class TensorRTUnavailable(RuntimeError):
    """``import tensorrt`` does not give TensorRT here."""


class PlanMismatch(RuntimeError):
    """A plan that must not be served here: built elsewhere, or from another graph."""


@dataclass(frozen=True)
class MachineInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"


@dataclass
class PlanMetadata:
    """What a plan was built from and on; written as ``model.plan.json`` next to it."""

    variant: str
    ensemble: str
    graph: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_path: str
    onnx_sha256: str
    plan_sha256: str
    # one per optimisation profile, in the engine's order: input -> {"min": [...], "opt": [...], "max": [...]}
    profiles: list[dict[str, dict[str, list[int]]]]
    axes: dict[str, list[int]]  # axis -> [min, opt, max]
    builder: dict[str, Any]
    built_at: str
    build_seconds: float
    schema: int = METADATA_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, plan_path: Path) -> None:
        """Write it as the plan's ``model.plan.json``."""
        metadata_path(plan_path).write_text(self.to_json())

    @classmethod
    def from_json(cls, text: str) -> PlanMetadata:
        values = json.loads(text)
        if values.get("schema") != METADATA_SCHEMA:
            raise PlanMismatch(f"plan metadata schema {values.get('schema')!r}, expected {METADATA_SCHEMA}")
        return cls(**values)


def plan_metadata(plan_path: Path, onnx_path: Path, machine: MachineInfo, **declared: Any) -> PlanMetadata:
    """The metadata of a plan file and the graph it was built from: the machine's fields and both
    sha256 measured here, the rest (variant, ensemble, graph, precision, profiles, axes, builder,
    built_at, build_seconds) as declared."""
    return PlanMetadata(
        **declared,
        **asdict(machine),
        onnx_path=str(onnx_path),
        onnx_sha256=file_sha256(onnx_path),
        plan_sha256=file_sha256(plan_path),
    )


def axis_values(axes: Mapping[str, AxisProfile]) -> dict[str, list[int]]:
    """Axis profiles as the metadata records them: axis -> [min, opt, max]."""
    return {name: [v.minimum, v.optimum, v.maximum] for name, v in axes.items()}


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot be used here, or None when it can.

    PyPI's tensorrt-stubs installs a ``tensorrt/`` folder of .pyi files only, so ``import tensorrt``
    then succeeds with an empty namespace package; that is not TensorRT.
    """
    try:
        import tensorrt as trt
    except ImportError as error:
        return f"{NO_TENSORRT} ({error})"
    if not hasattr(trt, "Builder"):
        return f"{NO_TENSORRT} (`tensorrt` here is an empty namespace package: tensorrt-stubs' type stubs)"
    return None


def require_tensorrt() -> None:
    reason = tensorrt_unavailable()
    if reason is not None:
        raise TensorRTUnavailable(reason)


def rebuild_command(
    ensemble: str,
    variant: str,
    graph: str,
    precision: str,
    repository: Path,
    onnx_dir: Path = DEFAULT_ONNX_DIR,
    axes: Mapping[str, Sequence[int]] | None = None,
) -> str:
    """The exact command that rebuilds one plan on the machine that will serve it (with the plan's
    own axis profiles where they differ from the contract's)."""
    defaults = axis_values(AXIS_PROFILES)
    custom = [
        f"--axis={name}={','.join(str(v) for v in values)}"
        for name, values in sorted((axes or {}).items())
        if list(values) != defaults.get(name)
    ]
    parts = [
        *BUILD_COMMAND.split(),
        "--ensembles",
        ensemble,
        f"--{ensemble}-variant",
        variant,
        "--graphs",
        graph,
        "--precision",
        precision,
        "--repository",
        str(repository),
        "--onnx-dir",
        str(onnx_dir),
        *custom,
        "--force",
    ]
    return shlex.join(parts)


def _visible_gpu() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def probe_machine() -> MachineInfo:
    """TensorRT version and the first visible GPU's name and compute capability (nvidia-smi)."""
    require_tensorrt()
    import tensorrt as trt

    query = ["nvidia-smi", "-i", _visible_gpu(), "--query-gpu=name,compute_cap", "--format=csv,noheader"]
    try:
        answer = subprocess.run(query, capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise PlanMismatch(f"cannot identify the GPU ({shlex.join(query)}): {error}") from error
    name, _, capability = answer.strip().splitlines()[0].rpartition(",")
    return MachineInfo(str(trt.__version__), name.strip(), capability.strip())


def check_plan(
    plan_path: Path,
    metadata: PlanMetadata | None = None,
    *,
    onnx_path: Path | None = None,
    machine: MachineInfo | None = None,
    onnx_dir: Path = DEFAULT_ONNX_DIR,
    require_onnx: bool = False,
) -> PlanMetadata:
    """Return the plan's metadata if it may be served here, else raise PlanMismatch saying why and
    what to run.

    A plan is refused when its metadata is missing or does not describe this file, when it was built
    with another TensorRT version or for another GPU compute capability than ``machine`` (default:
    probed), or when the ONNX graph it was built from has changed since (checked where the graph is
    on disk; ``require_onnx`` refuses a plan whose graph cannot be found). A different GPU model of
    the same compute capability only warns.
    """
    plan_path = Path(plan_path)
    repository = plan_path.parent.parent.parent  # <repository>/<model>/1/model.plan
    if metadata is None:
        meta_file = metadata_path(plan_path)
        if not plan_path.is_file() or not meta_file.is_file():
            raise PlanMismatch(
                f"{plan_path}: plan or its metadata ({meta_file.name}) is missing; build the engines: "
                f"{BUILD_COMMAND} --repository {shlex.quote(str(repository))}"
            )
        metadata = PlanMetadata.from_json(meta_file.read_text())
    command = rebuild_command(
        metadata.ensemble,
        metadata.variant,
        metadata.graph,
        metadata.precision,
        repository,
        onnx_dir,
        metadata.axes,
    )

    def refuse(reason: str) -> PlanMismatch:
        return PlanMismatch(f"{plan_path}: {reason}. Rebuild it on this machine: {command}")

    if not plan_path.is_file():
        raise refuse("the plan file is missing")
    if file_sha256(plan_path) != metadata.plan_sha256:
        raise refuse("the plan does not match its metadata (replaced or corrupted)")
    machine = machine or probe_machine()
    if machine.tensorrt_version != metadata.tensorrt_version:
        raise refuse(
            f"built with TensorRT {metadata.tensorrt_version}, this machine runs TensorRT "
            f"{machine.tensorrt_version} (plans are tied to the exact TensorRT version)"
        )
    if machine.compute_capability != metadata.compute_capability:
        raise refuse(
            f"built for compute capability {metadata.compute_capability} ({metadata.gpu_name}), this GPU "
            f"is {machine.compute_capability} ({machine.gpu_name})"
        )
    if machine.gpu_name != metadata.gpu_name:
        warnings.warn(
            f"{plan_path}: built on {metadata.gpu_name}, running on {machine.gpu_name} (same compute "
            f"capability {machine.compute_capability}); TensorRT advises building on the serving GPU model",
            stacklevel=2,
        )
    source = Path(onnx_path) if onnx_path is not None else Path(metadata.onnx_path)
    if source.is_file():
        if file_sha256(source) != metadata.onnx_sha256:
            raise refuse(f"its ONNX graph {source} has changed since the plan was built")
    elif require_onnx:
        raise refuse(f"its ONNX graph {source} is not on disk, so the plan cannot be verified")
    return metadata


def check_repository(
    repository: Path = DEFAULT_REPOSITORY,
    *,
    onnx_dir: Path = DEFAULT_ONNX_DIR,
    variants: Mapping[str, str] | None = None,
    machine: MachineInfo | None = None,
) -> list[str]:
    """check_plan over every engine of each ensemble; the refusals (empty when all may be served)."""
    problems = []
    for ensemble, variant in dict(variants or DEFAULT_VARIANTS).items():
        for graph in graph_names(MODEL_CONFIGS[variant]):
            plan_path = plan_file(repository, model_name(ensemble, graph))
            try:
                check_plan(plan_path, machine=machine, onnx_dir=onnx_dir)
            except PlanMismatch as mismatch:
                problems.append(str(mismatch))
    return problems
