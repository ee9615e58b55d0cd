"""Triton model configs generated from the contract: one per graph, per Python step, and the ensemble.

Each config is built as Triton's own ``ModelConfig`` protobuf message (tritonclient ships
``model_config_pb2``) and written as its text format, so a field Triton does not know, or a value
of the wrong type, fails here, at build time, not at the server's load.

A served model is named ``<ensemble>_<step>`` (``escnet_prep``); the ensemble itself is
``escnet`` or ``catseg``. The runtimes serve the same model names and tensors; they differ in what
runs a graph (RUNTIMES):

- ``onnxruntime``: a Python-backend model running onnxruntime on the CPU (step_models/onnx_graph.py),
  the one runtime of the pip tritonserver, which has only the Python backend;
- ``onnxruntime_onnx``: Triton's own onnxruntime backend (NVIDIA's container) on the accelerator
  ``GraphServing.accelerator`` names: ``tensorrt`` (TensorRT execution provider, FP16, engines
  cached in ``GraphServing.engine_cache``), ``cuda``, or ``cpu`` (the same configs for a CPU-only
  container);
- ``tensorrt``: ``tensorrt_plan`` models, the engines export/engines builds.

Where the graphs run on a GPU, the Python steps that read their outputs (pseudo_points,
postprocess) take them as they are (FORCE_CPU_ONLY_INPUT_TENSORS "no", read through DLPack:
step_models/base.py) and every GPU graph model is warmed up before it reports ready
(``model_warmup``: Triton runs it at load, so a ready model is a warm one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from escnet.config import InferenceProtocol, ModelConfig
from escnet_export.contract import (
    AXIS_PROFILES,
    REQUEST_INPUTS,
    REQUEST_LIMITS,
    REQUEST_OUTPUTS,
    StepSpec,
    TensorSpec,
    chain_steps,
    engine_profiles,
    request_output_sources,
    step_specs,
)
from escnet_export.runtime.memory_model import resolve_budget
from escnet_export.runtime.runners import DEFAULT_CHUNKS, RunChunks

RUNTIMES = ("onnxruntime", "onnxruntime_onnx", "tensorrt")
ACCELERATORS = ("tensorrt", "cuda", "cpu")  # what runs the graphs of the onnxruntime_onnx runtime
DEFAULT_ENGINE_CACHE = "/tmp/escnet_trt_cache"  # the TensorRT execution provider's engine cache

# Python steps and their implementation modules (each model's 1/model.py imports one).
PYTHON_STEP_MODULES = {
    "preprocess": "escnet_export.triton_serving.step_models.preprocess",
    "text_embedder": "escnet_export.triton_serving.step_models.text_embedder",
    "pseudo_points": "escnet_export.triton_serving.step_models.pseudo_points",
    "postprocess": "escnet_export.triton_serving.step_models.postprocess",
    "graph": "escnet_export.triton_serving.step_models.onnx_graph",
}
# The Python steps that read graph outputs: on a GPU runtime they take them on the GPU (DLPack).
DEVICE_TENSOR_STEPS = ("pseudo_points", "postprocess")
TEXT_CACHE_SIZE = 4096  # class names kept by each text embedder's LRU cache
# The steps that read the request, and the limits (RequestLimits fields) each one checks: each limit
# is a parameter of exactly one model config, where a deployment may change it.
EDGE_LIMITS = {
    "preprocess": ("min_side", "max_pixels", "max_classes", "max_name_bytes", "max_score_elements"),
    "text_embedder": ("max_classes", "max_name_bytes"),  # it decodes the names preprocess checked
}
# Warm-up shapes of a GPU graph: each view count the protocols give (single_view 1, catseg_eval 5)
# at the paper's smallest vocabulary; the other axes at their profile's optimum. CLASS_MASK is 1
# for a real class (all zeros would mask every class); POINT_LABELS 1 for a real point.
WARMUP_VIEW_COUNTS = (1, 5)
WARMUP_CLASSES = 19
WARMUP_ONES = ("CLASS_MASK", "POINT_LABELS")


def model_name(ensemble: str, step: str) -> str:
    return f"{ensemble}_{step}"


def protocol_parameters(protocol: InferenceProtocol) -> dict[str, str]:
    """The inference protocol as config parameters: every Python step and the ensemble carry it."""
    return {"protocol": protocol.name, "synonyms": protocol.synonyms}


@dataclass(frozen=True)
class GraphServing:
    """How the graph models serve: copies, onnxruntime threads, run slices, memory, accelerator.

    The default (one instance, threads = all cores) gives the lowest latency for one request at a
    time. Where several requests run at once, more instances with fewer threads each use the cores
    better (README, Performance: instances x threads), at the cost of a process (and its memory)
    per extra instance. The ESCNET_ORT_THREADS environment variable overrides ``threads``.
    """

    instances: int = 1
    threads: int | None = None  # None: onnxruntime's default, one per core
    # Slices of views, classes and texts per onnxruntime run (escnet_export.runtime.runners.RunChunks):
    # they bound each graph step's working memory (Python-backend graphs only; Triton's backends
    # run a request's tensors whole).
    chunks: RunChunks = DEFAULT_CHUNKS
    # One request's memory budget (GiB), or "auto": escnet_export.runtime.memory_model.resolve_budget.
    memory_budget_gib: str = "auto"
    accelerator: str = "tensorrt"  # onnxruntime_onnx only: ACCELERATORS
    engine_cache: str = DEFAULT_ENGINE_CACHE  # onnxruntime_onnx with TensorRT: one folder per model

    def __post_init__(self) -> None:
        if self.instances < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"instances and threads must be >= 1, got {self}")
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {self.accelerator!r}")
        resolve_budget(self.memory_budget_gib)  # "auto" or a positive number of GiB, else ValueError


DEFAULT_SERVING = GraphServing()


def graphs_on_gpu(runtime: str, serving: GraphServing) -> bool:
    """Whether the runtime puts the graphs on a GPU (and so the Python steps get GPU tensors)."""
    return runtime == "tensorrt" or (runtime == "onnxruntime_onnx" and serving.accelerator != "cpu")


def graph_run_chunks(runtime: str, serving: GraphServing) -> RunChunks:
    """The slices a graph model runs a request in: the configured ones for the Python-backend graphs;
    Triton's backends run every view and class at once (texts stay sliced: the text embedder sends
    them to the text encoder texts_per_run at a time)."""
    if runtime == "onnxruntime":
        return serving.chunks
    return RunChunks(
        views=AXIS_PROFILES["B"].maximum, classes=REQUEST_LIMITS.max_classes, texts=serving.chunks.texts
    )


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


def _data_type(spec: TensorSpec) -> int:
    return pb.DataType.Value("TYPE_STRING" if spec.dtype == "BYTES" else f"TYPE_{spec.dtype}")


def _dims(spec: TensorSpec) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in spec.shape]


def _inputs(specs: tuple[TensorSpec, ...]) -> list[pb.ModelInput]:
    return [pb.ModelInput(name=s.name, data_type=_data_type(s), dims=_dims(s)) for s in specs]


def _outputs(specs: tuple[TensorSpec, ...]) -> list[pb.ModelOutput]:
    return [pb.ModelOutput(name=s.name, data_type=_data_type(s), dims=_dims(s)) for s in specs]


def _set_parameters(message: pb.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        message.parameters[key].string_value = value


def _warmup_shape(spec: TensorSpec, views: int, texts: int) -> list[int]:
    named = {"B": views, "T": WARMUP_CLASSES, "N": texts}
    return [d if isinstance(d, int) else named.get(d, AXIS_PROFILES[d].optimum) for d in spec.shape]


def warmup_file_name(input_name: str, dims: list[int]) -> str:
    """One file per input and shape (the warm-ups of one model share a folder)."""
    return f"{input_name.lower()}_ones_{'x'.join(str(d) for d in dims)}"


def graph_warmup(step: StepSpec, texts: int) -> list[pb.ModelWarmup]:
    """One warm-up per view count (the text encoder, which has no views, once)."""
    counts = WARMUP_VIEW_COUNTS if any("B" in s.shape for s in step.inputs) else (1,)
    warmups = []
    for views in counts:
        warmup = pb.ModelWarmup(name=f"{views}_views_{WARMUP_CLASSES}_classes", batch_size=1, count=1)
        for spec in step.inputs:
            tensor = warmup.inputs[spec.name]
            tensor.data_type = _data_type(spec)
            tensor.dims.extend(_warmup_shape(spec, views, texts))
            if spec.name in WARMUP_ONES:
                tensor.input_data_file = warmup_file_name(spec.name, list(tensor.dims))
            else:
                tensor.zero_data = True
        warmups.append(warmup)
    return warmups


def warmup_files(model: pb.ModelConfig) -> dict[str, bytes]:
    """The data files a config's warm-ups read (``<model>/warmup/<file>``): raw little-endian ones."""
    files = {}
    for warmup in model.model_warmup:
        for tensor in warmup.inputs.values():
            if tensor.input_data_file:
                dtype = {pb.TYPE_FP32: "<f4", pb.TYPE_INT32: "<i4"}[tensor.data_type]
                files[tensor.input_data_file] = np.ones(list(tensor.dims), dtype=dtype).tobytes()
    return files


def _onnxruntime_backend(message: pb.ModelConfig, step: StepSpec, serving: GraphServing) -> None:
    """Triton's onnxruntime backend on the chosen accelerator."""
    message.backend = "onnxruntime"
    message.platform = "onnxruntime_onnx"
    if serving.accelerator == "cpu":
        if serving.threads is not None:
            _set_parameters(message, {"intra_op_thread_count": str(serving.threads)})
        return
    accelerator = message.optimization.execution_accelerators.gpu_execution_accelerator.add()
    accelerator.name = serving.accelerator
    if serving.accelerator == "tensorrt":
        accelerator.parameters.update(
            {
                "precision_mode": "FP16",
                # LayerNorm in FP32: fp16.py keeps it there too (FP16 LayerNorm overflows).
                "trt_layer_norm_fp32_fallback": "1",
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": f"{serving.engine_cache}/{message.name}",
                "trt_timing_cache_enable": "1",
                "trt_timing_cache_path": serving.engine_cache,
                **tensorrt_profile_shapes(step, serving.chunks.texts),
            }
        )


def tensorrt_profile_shapes(step: StepSpec, texts: int) -> dict[str, str]:
    """The TensorRT execution provider's one explicit profile (trt_profile_*_shapes): each axis from
    1 to its request limit, tuned at one view and the warm-up vocabulary. Without it, the provider
    rebuilds an engine each time a request brings a shape outside the ones it has seen."""
    limit = {"B": AXIS_PROFILES["B"].maximum, "T": REQUEST_LIMITS.max_classes, "N": texts}
    shapes: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for spec in step.inputs:
        per_kind = {
            "min": [d if isinstance(d, int) else AXIS_PROFILES[d].minimum for d in spec.shape],
            "opt": _warmup_shape(spec, 1, texts),
            "max": [d if isinstance(d, int) else limit.get(d, AXIS_PROFILES[d].maximum) for d in spec.shape],
        }
        for kind, dims in per_kind.items():
            shapes[kind].append(f"{spec.name}:{'x'.join(str(d) for d in dims)}")
    return {f"trt_profile_{kind}_shapes": ",".join(values) for kind, values in shapes.items()}


def step_model_config(
    ensemble: str, config: ModelConfig, step: StepSpec, runtime: str, serving: GraphServing = DEFAULT_SERVING
) -> pb.ModelConfig:
    """The ModelConfig of one step (graph or Python step) on ``runtime``."""
    name = model_name(ensemble, step.name)
    message = pb.ModelConfig(
        name=name, max_batch_size=0, input=_inputs(step.inputs), output=_outputs(step.outputs)
    )
    gpu = graphs_on_gpu(runtime, serving)
    kind = pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    if step.kind == "graph" and runtime != "onnxruntime":
        group = message.instance_group.add(kind=kind, count=serving.instances)
        if runtime == "tensorrt":
            message.platform = "tensorrt_plan"
            # Every profile, for Triton to pick the tightest per request (listing none uses only
            # the first); repository.py takes the count from a built plan's metadata.
            group.profile.extend(str(i) for i in range(len(engine_profiles(step))))
            # Each optimisation profile's context memory is allocated when a request selects it,
            # not the largest of all profiles up front (TensorRT's default, STATIC).
            _set_parameters(message, {"execution_context_allocation_strategy": "ON_PROFILE_CHANGE"})
        else:
            _onnxruntime_backend(message, step, serving)
        if gpu:
            message.model_warmup.extend(graph_warmup(step, serving.chunks.texts))
        return message
    message.backend = "python"
    on_device = gpu and step.name in DEVICE_TENSOR_STEPS
    message.instance_group.add(
        kind=pb.ModelInstanceGroup.KIND_GPU if on_device else pb.ModelInstanceGroup.KIND_CPU,
        count=serving.instances if step.kind == "graph" else 1,
    )
    params = {"variant": config.name, "step": step.name, **protocol_parameters(config.protocol)}
    if on_device:
        params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"  # the graphs' GPU outputs stay on the GPU
    chunks = graph_run_chunks(runtime, serving)
    if step.kind == "graph":
        if serving.threads is not None:
            params["threads"] = str(serving.threads)
        params.update({f"{key}_per_run": str(value) for key, value in asdict(chunks).items()})
    if step.name == "text_embedder":
        params["text_encoder_model"] = model_name(ensemble, "clip_text_encoder")
        params["cache_size"] = str(TEXT_CACHE_SIZE)
        params["texts_per_run"] = str(chunks.texts)
    limits = REQUEST_LIMITS.parameters()
    params.update({key: limits[key] for key in EDGE_LIMITS.get(step.name, ())})
    if step.name == "preprocess":
        # The memory admission estimates with the graphs' run sizes (memory_model.RequestShape).
        params["memory_budget_gib"] = serving.memory_budget_gib
        params.update({f"{key}_per_run": str(value) for key, value in asdict(chunks).items()})
    _set_parameters(message, params)
    return message


def ensemble_model_config(ensemble: str, config: ModelConfig) -> pb.ModelConfig:
    """The ensemble: the contract's chain (chain_steps), one scheduling step per entry.

    A chain output ``<label>.<NAME>`` is the ensemble tensor of that name; the last step's LABELS
    and SCORES are the ensemble's outputs.
    """
    chain = chain_steps(config)
    answers = {source: name for name, source in request_output_sources(config).items()}
    # Triton refuses an ensemble tensor nobody reads: map only outputs that are used.
    used = {source for entry in chain for source in entry.sources.values()} | set(answers)
    message = pb.ModelConfig(
        name=ensemble,
        platform="ensemble",
        max_batch_size=0,
        input=_inputs(REQUEST_INPUTS),
        output=_outputs(REQUEST_OUTPUTS),
    )
    for entry in chain:
        step = message.ensemble_scheduling.step.add(
            model_name=model_name(ensemble, entry.step), model_version=-1
        )
        step.input_map.update(entry.sources)
        for name in entry.outputs:
            source = entry.output(name)
            if source in used:
                step.output_map[name] = answers.get(source, source)
    _set_parameters(message, protocol_parameters(config.protocol))
    return message


def config_text(message: pb.ModelConfig) -> str:
    """A config.pbtxt: the message in protobuf text format."""
    return text_format.MessageToString(message)


def step_config(
    ensemble: str, config: ModelConfig, step: StepSpec, runtime: str, serving: GraphServing = DEFAULT_SERVING
) -> str:
    """config.pbtxt text of one step."""
    return config_text(step_model_config(ensemble, config, step, runtime, serving))


def repository_models(
    ensemble: str, config: ModelConfig, runtime: str, serving: GraphServing = DEFAULT_SERVING
) -> dict[str, pb.ModelConfig]:
    """Every model of one ensemble: name -> ModelConfig."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    models = {
        model_name(ensemble, step.name): step_model_config(ensemble, config, step, runtime, serving)
        for step in step_specs(config).values()
    }
    models[ensemble] = ensemble_model_config(ensemble, config)
    return models


def model_module(step: StepSpec) -> str:
    """The Python module a Python-backend model's 1/model.py imports."""
    return PYTHON_STEP_MODULES["graph" if step.kind == "graph" else step.name]


def has_model_py(step: StepSpec, runtime: str) -> bool:
    """Whether the step is a Python-backend model (and so has a 1/model.py)."""
    return step.kind != "graph" or runtime == "onnxruntime"
