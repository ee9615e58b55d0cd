"""TensorRT engines from the exported graphs, built through Polygraphy.

``python -m escnet_export.engines.build`` (build.py) builds one plan per graph into
``model_repository/<ensemble>_<graph>/1/model.plan`` with ``model.plan.json`` beside it (plans.py's
PlanMetadata), then writes the ``tensorrt_plan`` configs through
``escnet_export.triton_serving.repository`` (runtime "tensorrt").

Polygraphy's loaders do the TensorRT work: NetworkFromOnnxPath parses, CreateConfig sets up the
builder (profiles, memory pool, optimisation level, timing cache, progress monitor),
EngineBytesFromNetwork builds and merges the timing cache back into its file (under a lock),
SaveBytes writes the plan. What stays here is what is ours: which graph, which profiles, which
flags, and the metadata.

- Strongly typed networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): precision comes from
  the graph (fp16.py keeps LayerNorm, softmax, reductions and normalisations in FP32 by explicit
  casts), never from a builder flag. TensorRT 11 has no FP16 flag and is always strongly typed (it
  accepts the flag and ignores it); TensorRT 10 needs the flag. One code path builds on both.
- TF32 stays TensorRT's default (on) for the FP16 build and is cleared for FP32, where the flag
  exists (Polygraphy would clear it by default); the profiling verbosity stays TensorRT's default
  (Polygraphy would ask for DETAILED).
- The parser reads the simplified graph (trt_lint.simplified_path: constant-folded, the graph the
  lint checked), the optimisation profiles of contract.engine_profiles (a view count x a class
  bucket each; each axis overridable), a timing cache file shared by every build, and a progress
  bar while TensorRT works (IProgressMonitor where the TensorRT version has it, else one bar step
  per graph).
- A plan that passes plans.check_plan (same machine, same graph, same precision and axes) is reused.

TensorRT is imported lazily (Polygraphy's loaders import it when called): this module imports on
machines without it, and its builders say so.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from polygraphy.backend.common import SaveBytes
from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
from polygraphy.exception import PolygraphyException
from polygraphy.logger import G_LOGGER
from tqdm import tqdm

from escnet.config import MODEL_CONFIGS
from escnet_export.artifacts import DEFAULT_ONNX_DIR, DEFAULT_REPOSITORY, DEFAULT_TIMING_CACHE, plan_file
from escnet_export.contract import (
    AXIS_PROFILES,
    DEFAULT_VARIANTS,
    AxisProfile,
    StepSpec,
    engine_profiles,
    graph_names,
    step_specs,
)
from escnet_export.engines.plans import (
    PlanMetadata,
    PlanMismatch,
    axis_values,
    check_plan,
    plan_metadata,
    probe_machine,
    require_tensorrt,
)
from escnet_export.onnx_graphs.fp16 import export_fp16
from escnet_export.onnx_graphs.trt_lint import simplified_path
from escnet_export.triton_serving.configs import model_name
from escnet_export.triton_serving.repository import build_repository

if TYPE_CHECKING:
    import tensorrt as trt

PRECISIONS = ("fp16", "fp32")


class EngineBuildError(RuntimeError):
    """TensorRT refused a graph (parser errors) or failed to build it."""


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"  # which graphs: fp16.py's (FP16 with FP32 islands) or the FP32 export
    axes: Mapping[str, AxisProfile] = field(default_factory=lambda: dict(AXIS_PROFILES))
    workspace_gib: int = 8  # builder scratch memory limit
    optimization_level: int = 3  # TensorRT's default; 5 searches longest
    timing_cache: Path = DEFAULT_TIMING_CACHE
    verbose: bool = False


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


def polygraphy_profiles(profiles: Sequence[Mapping[str, Mapping[str, list[int]]]]) -> list[Profile]:
    """contract.engine_profiles as Polygraphy Profiles, in the engine's order (one min/opt/max an input)."""
    converted = []
    for shapes_by_input in profiles:
        profile = Profile()
        for name, shapes in shapes_by_input.items():
            profile.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
        converted.append(profile)
    return converted


def _check_inputs(network: trt.INetworkDefinition, step: StepSpec, profile: Mapping[str, object]) -> None:
    """Polygraphy fills an input a profile does not name with default shapes; the contract must name
    every input of the graph, and only those."""
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(profile):
        raise EngineBuildError(f"{step.name}: network inputs {sorted(names)}, contract {sorted(profile)}")


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
    parsed = parse_path or source
    profiles = engine_profiles(step, options.axes)
    has_tf32 = getattr(trt.BuilderFlag, "TF32", None) is not None  # TensorRT 10: on by default; 11: none
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")  # see the module doc
    cache = options.timing_cache
    cache.parent.mkdir(parents=True, exist_ok=True)  # Polygraphy locks <cache>.lock beside it
    # TensorRT's verbose messages reach Polygraphy's logger as EXTRA_VERBOSE, its warnings as WARNING
    with G_LOGGER.verbosity(G_LOGGER.EXTRA_VERBOSE if options.verbose else G_LOGGER.WARNING):
        try:
            builder, network, parser = NetworkFromOnnxPath(str(parsed), strongly_typed=strongly_typed)()
        except PolygraphyException as error:
            raise EngineBuildError(
                f"TensorRT's ONNX parser refused {parsed}: {error} (Polygraphy logged its errors above)"
            ) from error
        _check_inputs(network, step, profiles[0])
        config = CreateConfig(
            # an FP32 engine computes FP32 products, comparable with the FP32 graph
            tf32=has_tf32 and options.precision != "fp32",
            profiles=polygraphy_profiles(profiles),
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: options.workspace_gib << 30},
            builder_optimization_level=options.optimization_level,
            profiling_verbosity=trt.ProfilingVerbosity.LAYER_NAMES_ONLY,  # TensorRT's default
            load_timing_cache=str(cache) if cache.is_file() else None,
            progress_monitor=_progress_monitor(step.name) if progress else None,
        )
        engine = EngineBytesFromNetwork(
            (builder, network, parser), config=config, save_timing_cache=str(cache)
        )
        try:
            SaveBytes(engine, path=str(plan_path))()
        except PolygraphyException as error:
            raise EngineBuildError(
                f"TensorRT failed to build {step.name} from {parsed}: {error} (see its log above)"
            ) from error

    metadata = plan_metadata(
        plan_path,
        source,
        machine,
        variant=variant,
        ensemble=ensemble,
        graph=step.name,
        precision=options.precision,
        profiles=profiles,
        axes=axis_values(options.axes),
        builder={
            "strongly_typed": True,
            "tf32": options.precision != "fp32" if has_tf32 else None,  # None: no such flag
            "parsed": str(parsed),
            "workspace_gib": options.workspace_gib,
            "optimization_level": options.optimization_level,
            "timing_cache": str(cache),
        },
        built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.perf_counter() - start, 1),
    )
    metadata.write(plan_path)
    return metadata


def source_graphs(variant: str, onnx_dir: Path, precision: str) -> dict[str, Path]:
    """The ONNX graph each engine of a variant is built from (FP16 ones made here when missing)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16":
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
            plan_path = plan_file(repository, name)
            if not force and plan_path.is_file():
                try:
                    metadata = check_plan(plan_path, onnx_path=sources[graph], onnx_dir=onnx_dir)
                    if (metadata.precision, metadata.axes) == (options.precision, axis_values(options.axes)):
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
        try:
            build_repository(Path(repository), onnx_dir=onnx_dir, runtime="tensorrt", variants=chosen)
        except FileNotFoundError as missing:  # --graphs built a subset and other plans are absent
            raise EngineBuildError(f"engines built, but the repository is incomplete: {missing}") from missing
    return built
