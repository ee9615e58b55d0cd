"""Triton model configs generated from the contract: one per graph, per Python step, and the ensemble.

A served model is named ``<ensemble>_<step>`` (``escnet_prep``); the ensemble itself is
``escnet`` or ``catseg``. Engine steps are written either as Python models that run the ONNX graph
with onnxruntime or as ``tensorrt_plan`` models; both have the same names and tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from escnet.config import InferenceProtocol, ModelConfig
from escnet_export.contract import (
    REQUEST_INPUTS,
    REQUEST_LIMITS,
    REQUEST_OUTPUTS,
    StepSpec,
    TensorSpec,
    chain_steps,
    request_output_sources,
    step_specs,
)
from escnet_export.runtime.memory_model import resolve_budget
from escnet_export.runtime.runners import DEFAULT_CHUNKS, RunChunks

RUNTIMES = ("onnxruntime", "tensorrt")

# Python steps and their implementation modules (each model's 1/model.py imports one).
PYTHON_STEP_MODULES = {
    "preprocess": "escnet_export.triton_serving.step_models.preprocess",
    "text_embedder": "escnet_export.triton_serving.step_models.text_embedder",
    "pseudo_points": "escnet_export.triton_serving.step_models.pseudo_points",
    "postprocess": "escnet_export.triton_serving.step_models.postprocess",
    "graph": "escnet_export.triton_serving.step_models.onnx_graph",
}
TEXT_CACHE_SIZE = 4096  # class names kept by each text embedder's LRU cache
# The steps that read the request, and the limits (RequestLimits fields) each one checks: each limit
# is a parameter of exactly one model config, where a deployment may change it.
EDGE_LIMITS = {
    "preprocess": ("min_side", "max_pixels", "max_classes", "max_name_bytes", "max_score_elements"),
    "text_embedder": ("max_classes", "max_name_bytes"),  # it decodes the names preprocess checked
}


@dataclass(frozen=True)
class ServedModel:
    name: str  # Triton model name
    step: StepSpec
    config_text: str


def _dims(shape: tuple[int | str, ...]) -> str:
    return ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape)


def _tensor(spec: TensorSpec, optional: bool = False) -> str:
    extra = " optional: true" if optional else ""
    dtype = "STRING" if spec.dtype == "BYTES" else spec.dtype  # Triton's config calls BYTES "STRING"
    return f'  {{ name: "{spec.name}" data_type: TYPE_{dtype} dims: [ {_dims(spec.shape)} ]{extra} }}'


def _io(kind: str, specs: tuple[TensorSpec, ...]) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor(s) for s in specs) + "\n]\n"


def _parameters(values: dict[str, str]) -> str:
    return "".join(
        f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
        for key, value in values.items()
    )


def protocol_parameters(protocol: InferenceProtocol) -> dict[str, str]:
    """The inference protocol as config parameters: every Python step and the ensemble carry it."""
    return {"protocol": protocol.name, "synonyms": protocol.synonyms}


def model_name(ensemble: str, step: str) -> str:
    return f"{ensemble}_{step}"


@dataclass(frozen=True)
class GraphServing:
    """How many copies of each graph model serve at once, and onnxruntime's threads per copy.

    The default (one instance, threads = all cores) gives the lowest latency for one request at a
    time. Where several requests run at once, more instances with fewer threads each use the cores
    better (README, Performance: instances x threads), at the cost of a process (and its memory)
    per extra instance. The ESCNET_ORT_THREADS environment variable overrides ``threads``.
    """

    instances: int = 1
    threads: int | None = None  # None: onnxruntime's default, one per core
    # Slices of views, classes and texts per onnxruntime run (escnet_export.runtime.runners.RunChunks):
    # they bound each graph step's working memory.
    chunks: RunChunks = DEFAULT_CHUNKS
    # One request's memory budget (GiB), or "auto": escnet_export.runtime.memory_model.resolve_budget.
    memory_budget_gib: str = "auto"

    def __post_init__(self) -> None:
        if self.instances < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"instances and threads must be >= 1, got {self}")
        resolve_budget(self.memory_budget_gib)  # "auto" or a positive number of GiB, else ValueError


DEFAULT_SERVING = GraphServing()


def step_config(
    ensemble: str, config: ModelConfig, step: StepSpec, runtime: str, serving: GraphServing = DEFAULT_SERVING
) -> str:
    """config.pbtxt of one step (graph or Python step)."""
    name = model_name(ensemble, step.name)
    head = f'name: "{name}"\n'
    count = serving.instances if step.kind == "graph" else 1
    if step.kind == "graph" and runtime == "tensorrt":
        head += 'platform: "tensorrt_plan"\nmax_batch_size: 0\n'
        instances = f"instance_group [ {{ kind: KIND_GPU count: {count} }} ]\n"
        params: dict[str, str] = {}
    else:
        head += 'backend: "python"\nmax_batch_size: 0\n'
        instances = f"instance_group [ {{ kind: KIND_CPU count: {count} }} ]\n"
        params = {"variant": config.name, "step": step.name, **protocol_parameters(config.protocol)}
        if step.kind == "graph" and serving.threads is not None:
            params["threads"] = str(serving.threads)
        if step.kind == "graph":
            params.update({f"{name}_per_run": str(value) for name, value in asdict(serving.chunks).items()})
        if step.name == "text_embedder":
            params["text_encoder_model"] = model_name(ensemble, "clip_text_encoder")
            params["cache_size"] = str(TEXT_CACHE_SIZE)
            params["texts_per_run"] = str(serving.chunks.texts)
        limits = REQUEST_LIMITS.parameters()
        params.update({name: limits[name] for name in EDGE_LIMITS.get(step.name, ())})
        if step.name == "preprocess":
            # The memory admission estimates with the graphs' chunk sizes (memory_model.RequestShape).
            params["memory_budget_gib"] = serving.memory_budget_gib
            params.update({f"{name}_per_run": str(value) for name, value in asdict(serving.chunks).items()})
    return head + _io("input", step.inputs) + _io("output", step.outputs) + instances + _parameters(params)


def ensemble_config(ensemble: str, config: ModelConfig) -> str:
    """The ensemble: the contract's chain (chain_steps), one scheduling step per entry.

    A chain output ``<label>.<NAME>`` is the ensemble tensor of that name; the last step's LABELS
    and SCORES are the ensemble's outputs.
    """
    chain = chain_steps(config)
    answers = {source: name for name, source in request_output_sources(config).items()}
    # Triton refuses an ensemble tensor nobody reads: map only outputs that are used.
    used = {source for entry in chain for source in entry.sources.values()} | set(answers)
    steps: list[str] = []
    for entry in chain:
        lines = "".join(f'      input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in entry.sources.items())
        for name in entry.outputs:
            source = entry.output(name)
            if source in used:
                lines += f'      output_map {{ key: "{name}" value: "{answers.get(source, source)}" }}\n'
        head = f'    {{\n      model_name: "{model_name(ensemble, entry.step)}"\n      model_version: -1\n'
        steps.append(f"{head}{lines}    }}")
    return (
        f'name: "{ensemble}"\nplatform: "ensemble"\nmax_batch_size: 0\n'
        + _io("input", REQUEST_INPUTS)
        + _io("output", REQUEST_OUTPUTS)
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(steps)
        + "\n  ]\n}\n"
        + _parameters(protocol_parameters(config.protocol))
    )


def repository_models(
    ensemble: str, config: ModelConfig, runtime: str, serving: GraphServing = DEFAULT_SERVING
) -> dict[str, str]:
    """Every model of one ensemble: name -> config.pbtxt text."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    models = {
        model_name(ensemble, step.name): step_config(ensemble, config, step, runtime, serving)
        for step in step_specs(config).values()
    }
    models[ensemble] = ensemble_config(ensemble, config)
    return models


def model_module(step: StepSpec) -> str:
    """The Python module a Python-backend model's 1/model.py imports."""
    return PYTHON_STEP_MODULES["graph" if step.kind == "graph" else step.name]
