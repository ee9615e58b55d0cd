"""TensorRT engines from the exported graphs, and the checks that keep a plan tied to its machine.

``python -m escnet_export.engines.build`` (see build_engines.py) builds one plan per graph into
``model_repository/<ensemble>_<graph>/1/model.plan`` with ``model.plan.json`` beside it, then writes
the ``tensorrt_plan`` configs through ``escnet_export.triton_serving.repository`` (runtime "tensorrt").

- Strongly typed networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): precision comes from
  the graph (fp16.py keeps LayerNorm, softmax, reductions and normalisations in FP32 by explicit
  casts), never from a builder flag. TensorRT 11 has no FP16 flag and is always strongly typed (it
  accepts the flag and ignores it); TensorRT 10 needs the flag. One code path builds on both.
- The parser reads the simplified graph (trt_lint.simplified_path: constant-folded, the graph the
  lint checked), one optimisation profile per engine from the contract's AXIS_PROFILES (each axis
  overridable), a timing cache file shared by every build, and a progress bar while TensorRT works
  (IProgressMonitor where the TensorRT version has it, else one bar step per graph).
- Every plan gets its metadata: TensorRT version, GPU name and compute capability, the profiles,
  the sha256 of the source ONNX and of the plan, the precision. ``check_plan`` refuses a plan whose
  metadata does not match the running machine or the current ONNX graph, naming the command that
  rebuilds it.

TensorRT is imported lazily: this module imports, and its checks run, on machines without it.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from escnet.config import MODEL_CONFIGS
from escnet_export.artifacts import (
    DEFAULT_ONNX_DIR,
    DEFAULT_REPOSITORY,
    DEFAULT_TIMING_CACHE,
    PLAN_NAME,
    file_sha256,
    metadata_path,
)
from escnet_export.contract import (
    AXIS_PROFILES,
    DEFAULT_VARIANTS,
    AxisProfile,
    StepSpec,
    graph_names,
    step_specs,
)
from escnet_export.runtime.runners import validate_feeds
from escnet_export.triton_serving.configs import model_name

if TYPE_CHECKING:
    import tensorrt as trt

PRECISIONS = ("fp16", "fp32")
METADATA_SCHEMA = 1
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


class EngineBuildError(RuntimeError):
    """TensorRT refused a graph (parser errors) or failed to build it."""


@dataclass(frozen=True)
class MachineInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"  # which graphs: fp16.py's (FP16 with FP32 islands) or the FP32 export
    axes: Mapping[str, AxisProfile] = field(default_factory=lambda: dict(AXIS_PROFILES))
    workspace_gib: int = 8  # builder scratch memory limit
    optimization_level: int = 3  # TensorRT's default; 5 searches longest
    timing_cache: Path = DEFAULT_TIMING_CACHE
    verbose: bool = False


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
    profiles: dict[str, dict[str, list[int]]]  # input -> {"min": [...], "opt": [...], "max": [...]}
    axes: dict[str, list[int]]  # axis -> [min, opt, max]
    builder: dict[str, Any]
    built_at: str
    build_seconds: float
    schema: int = METADATA_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PlanMetadata:
        values = json.loads(text)
        if values.get("schema") != METADATA_SCHEMA:
            raise PlanMismatch(f"plan metadata schema {values.get('schema')!r}, expected {METADATA_SCHEMA}")
        return cls(**values)


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


def input_profiles(step: StepSpec, axes: Mapping[str, AxisProfile]) -> dict[str, dict[str, list[int]]]:
    """(min, opt, max) shape of every input of a graph: fixed sizes from the contract, named axes
    from ``axes``."""
    profiles: dict[str, dict[str, list[int]]] = {}
    for spec in step.inputs:
        missing = [d for d in spec.shape if isinstance(d, str) and d not in axes]
        if missing:
            raise ValueError(f"{step.name}.{spec.name}: no profile for axes {missing}")
        shapes: dict[str, list[int]] = {}
        for key, attribute in (("min", "minimum"), ("opt", "optimum"), ("max", "maximum")):
            shapes[key] = [d if isinstance(d, int) else getattr(axes[d], attribute) for d in spec.shape]
        profiles[spec.name] = shapes
    return profiles


def parse_axis(text: str) -> tuple[str, AxisProfile]:
    """``T=1,150,1024`` -> ("T", AxisProfile(1, 150, 1024)); checks min <= opt <= max."""
    name, _, values = text.partition("=")
    try:
        low, opt, high = (int(v) for v in values.split(","))
    except ValueError as error:
        raise ValueError(f"axis profile {text!r}: expected NAME=min,opt,max") from error
    if not 1 <= low <= opt <= high:
        raise ValueError(f"axis profile {text!r}: need 1 <= min <= opt <= max")
    return name.strip(), AxisProfile(low, opt, high)


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
    defaults = {k: [v.minimum, v.optimum, v.maximum] for k, v in AXIS_PROFILES.items()}
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


def load_engine(plan_path: Path, metadata: PlanMetadata | None = None, **check: Any) -> trt.ICudaEngine:
    """Check a plan (check_plan) and deserialize it."""
    require_tensorrt()
    import tensorrt as trt

    check_plan(plan_path, metadata, **check)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise PlanMismatch(f"{plan_path}: TensorRT could not deserialize the plan")
    return engine


class TrtRunner:
    """A built engine behind the runner interface of runners.py (``infer(feeds) -> outputs``), run
    through Polygraphy's TensorRT runner."""

    def __init__(self, step: StepSpec, plan_path: Path, **check: Any) -> None:
        from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner

        self.step = step
        self._runner = PolygraphyTrtRunner(load_engine(plan_path, **check))
        self._runner.activate()

    def infer(self, feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        validate_feeds(self.step, feeds)
        outputs = self._runner.infer({n: feeds[n] for n in self.step.input_names}, copy_outputs_to_host=True)
        return {name: np.asarray(outputs[name]) for name in self.step.output_names}

    def close(self) -> None:
        self._runner.deactivate()


def _progress_monitor(graph: str) -> trt.IProgressMonitor | None:
    """An IProgressMonitor drawing one tqdm bar per builder phase, where TensorRT has the interface."""
    import tensorrt as trt

    if not hasattr(trt, "IProgressMonitor"):
        return None

    class TqdmMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, tqdm] = {}
            self._lock = threading.Lock()  # TensorRT may report from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = 1 + (parent_phase is not None)
                self._bars[phase_name] = tqdm(
                    total=num_steps, desc=f"  {graph}: {phase_name}", position=depth, leave=False
                )

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return TqdmMonitor()


def _parser_errors(parser: trt.OnnxParser) -> str:
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        lines.append(f"node {error.node()} {error.node_name()!r} ({error.node_operator()}): {error.desc()}")
    return "\n  ".join(lines)


def _network_flags() -> int:
    """STRONGLY_TYPED: required on TensorRT 10, accepted and ignored by 11 (always strongly typed)."""
    import tensorrt as trt

    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(
    source: Path,
    plan_path: Path,
    step: StepSpec,
    *,
    variant: str,
    ensemble: str,
    options: BuildOptions,
    parse_path: Path | None = None,
    progress: bool = True,
) -> PlanMetadata:
    """Build one strongly typed engine from ``source`` (parsed from ``parse_path``, its simplified
    form, when given) and write the plan and its metadata."""
    require_tensorrt()
    import tensorrt as trt

    start = time.perf_counter()
    machine = probe_machine()
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags())
    parser = trt.OnnxParser(network, logger)
    parsed = parse_path or source
    if not parser.parse_from_file(str(parsed)):
        raise EngineBuildError(f"TensorRT's ONNX parser refused {parsed}:\n  {_parser_errors(parser)}")
    profiles = input_profiles(step, options.axes)
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(profiles):
        raise EngineBuildError(f"{step.name}: network inputs {sorted(names)}, contract {sorted(profiles)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_gib << 30)
    config.builder_optimization_level = options.optimization_level
    tf32 = getattr(trt.BuilderFlag, "TF32", None)  # TensorRT 10: on by default; 11: no such flag
    if options.precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)  # an FP32 engine computes FP32 products, comparable with the FP32 graph
    profile = builder.create_optimization_profile()
    for name, shapes in profiles.items():
        profile.set_shape(name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
    config.add_optimization_profile(profile)
    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    monitor = _progress_monitor(step.name) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {step.name} from {parsed} (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(serialized)
    options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    options.timing_cache.write_bytes(config.get_timing_cache().serialize())

    metadata = PlanMetadata(
        variant=variant,
        ensemble=ensemble,
        graph=step.name,
        precision=options.precision,
        tensorrt_version=machine.tensorrt_version,
        gpu_name=machine.gpu_name,
        compute_capability=machine.compute_capability,
        onnx_path=str(source),
        onnx_sha256=file_sha256(source),
        plan_sha256=file_sha256(plan_path),
        profiles=profiles,
        axes={k: [v.minimum, v.optimum, v.maximum] for k, v in options.axes.items()},
        builder={
            "strongly_typed": True,
            "tf32": None if tf32 is None else options.precision != "fp32",  # None: no such flag
            "parsed": str(parsed),
            "workspace_gib": options.workspace_gib,
            "optimization_level": options.optimization_level,
            "timing_cache": str(options.timing_cache),
        },
        built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - start, 1),
    )
    metadata_path(plan_path).write_text(metadata.to_json())
    return metadata


def source_graphs(variant: str, onnx_dir: Path, precision: str) -> dict[str, Path]:
    """The ONNX graph each engine of a variant is built from (FP16 ones made here when missing)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16":
        from escnet_export.onnx_graphs.fp16 import export_fp16

        return export_fp16(variant, onnx_dir)
    paths = {g: Path(onnx_dir) / variant / f"{g}.onnx" for g in graph_names(MODEL_CONFIGS[variant])}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"not exported: {missing}. Run: python -m escnet_export.onnx_graphs.export --variant {variant} "
            f"--out {onnx_dir}"
        )
    return paths


def build_engines(
    repository: Path = DEFAULT_REPOSITORY,
    *,
    onnx_dir: Path = DEFAULT_ONNX_DIR,
    variants: Mapping[str, str] | None = None,
    options: BuildOptions | None = None,
    graphs: Sequence[str] | None = None,
    force: bool = False,
    write_configs: bool = True,
    progress: bool = True,
) -> dict[str, PlanMetadata]:
    """Build (or reuse, when check_plan passes) every engine of each ensemble; model name -> metadata.

    Then writes the tensorrt_plan configs of the repository (build_repository, runtime "tensorrt").
    """
    require_tensorrt()
    from escnet_export.onnx_graphs.trt_lint import simplified_path

    options = options or BuildOptions()
    chosen = dict(variants or DEFAULT_VARIANTS)
    built: dict[str, PlanMetadata] = {}
    for ensemble, variant in chosen.items():
        specs = step_specs(MODEL_CONFIGS[variant])
        sources = source_graphs(variant, onnx_dir, options.precision)
        todo = [g for g in sources if graphs is None or g in graphs]
        bar = tqdm(
            todo, desc=f"engines {ensemble} ({variant}, {options.precision})", unit="engine", position=0
        )
        for graph in bar:
            bar.set_postfix_str(graph)
            name = model_name(ensemble, graph)
            plan_path = Path(repository) / name / "1" / PLAN_NAME
            if not force and plan_path.is_file():
                try:
                    metadata = check_plan(plan_path, onnx_path=sources[graph], onnx_dir=onnx_dir)
                    if metadata.precision == options.precision and metadata.axes == {
                        k: [v.minimum, v.optimum, v.maximum] for k, v in options.axes.items()
                    }:
                        built[name] = metadata
                        continue
                except PlanMismatch as mismatch:
                    bar.write(f"rebuilding {name}: {mismatch}")
            built[name] = build_engine(
                sources[graph],
                plan_path,
                specs[graph],
                variant=variant,
                ensemble=ensemble,
                options=options,
                parse_path=simplified_path(sources[graph]),
                progress=progress,
            )
    if write_configs:
        from escnet_export.triton_serving.repository import build_repository

        try:
            build_repository(Path(repository), onnx_dir=onnx_dir, runtime="tensorrt", variants=chosen)
        except FileNotFoundError as missing:  # --graphs built a subset and other plans are absent
            raise EngineBuildError(f"engines built, but the repository is incomplete: {missing}") from missing
    return built


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
            plan_path = Path(repository) / model_name(ensemble, graph) / "1" / PLAN_NAME
            try:
                check_plan(plan_path, machine=machine, onnx_dir=onnx_dir)
            except PlanMismatch as mismatch:
                problems.append(str(mismatch))
    return problems
