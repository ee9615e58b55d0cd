"""Build the Triton model repository: ``python -m escnet_export.triton_serving.repository``.

Writes every model's config.pbtxt (generated from the contract as Triton's ModelConfig), the
warm-up data files its warm-ups read, and 1/model.py (a one-line import of its implementation) for
the Python-backend models, then puts each graph in place: ``1/model.onnx`` (a link to the exported
graph) for the onnxruntime runtimes, ``1/model.plan`` for TensorRT. The runtime is chosen here
(configs.RUNTIMES): ``auto`` takes TensorRT where ``import tensorrt`` works, else onnxruntime.

The configs of the default build (onnxruntime, the default variants) are checked in; a test fails
when they drift from what this module generates.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from escnet.config import DEFAULT_PROTOCOL, MODEL_CONFIGS, PROTOCOLS, SYNONYM_RULES, InferenceProtocol
from escnet.config import resolve_protocol as named_protocol
from escnet_export.artifacts import DEFAULT_ONNX_DIR, DEFAULT_REPOSITORY, PLAN_NAME, metadata_path, plan_file
from escnet_export.contract import DEFAULT_VARIANTS, graph_names, step_specs
from escnet_export.engines.plans import tensorrt_unavailable
from escnet_export.runtime.runners import DEFAULT_CHUNKS, RunChunks
from escnet_export.triton_serving.configs import (
    ACCELERATORS,
    DEFAULT_ENGINE_CACHE,
    DEFAULT_SERVING,
    RUNTIMES,
    GraphServing,
    config_text,
    has_model_py,
    model_module,
    model_name,
    repository_models,
    warmup_files,
)


@dataclass(frozen=True)
class RepositoryPlan:
    ensemble: str
    variant: str
    runtime: str
    serving: GraphServing = DEFAULT_SERVING
    protocol: InferenceProtocol = DEFAULT_PROTOCOL

    def __post_init__(self) -> None:
        exported = MODEL_CONFIGS[self.variant].protocol  # the graphs are exported under the default
        if self.protocol.pooling_size != exported.pooling_size:
            raise ValueError(
                f"protocol {self.protocol.name} pools {self.protocol.pooling_size}, but the graphs of "
                f"{self.variant} are exported with pooling {exported.pooling_size}"
            )


def resolve_runtime(runtime: str) -> str:
    if runtime == "auto":
        return "onnxruntime" if tensorrt_unavailable() is not None else "tensorrt"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be auto or one of {RUNTIMES}, got {runtime!r}")
    return runtime


def model_py_text(module: str) -> str:
    return f'"""Served by {module}."""\n\nfrom {module} import TritonPythonModel  # noqa: F401\n'


def write_configs(repository: Path, plan: RepositoryPlan) -> list[str]:
    """Write config.pbtxt, warm-up data and 1/model.py of every model of one ensemble; returns the
    model names."""
    config = MODEL_CONFIGS[plan.variant].with_protocol(plan.protocol)
    specs = step_specs(config)
    models = repository_models(plan.ensemble, config, plan.runtime, plan.serving)
    for name, message in models.items():
        directory = repository / name
        if plan.runtime == "tensorrt" and message.platform == "tensorrt_plan":
            use_plan_profiles(message, plan_file(repository, name))
        (directory / "1").mkdir(parents=True, exist_ok=True)
        (directory / "config.pbtxt").write_text(config_text(message))
        shutil.rmtree(directory / "warmup", ignore_errors=True)
        for file_name, data in warmup_files(message).items():
            (directory / "warmup").mkdir(exist_ok=True)
            (directory / "warmup" / file_name).write_bytes(data)
        step = specs.get(name.removeprefix(f"{plan.ensemble}_"))
        model_py = directory / "1" / "model.py"
        if step is None:  # the ensemble has no code
            continue
        if has_model_py(step, plan.runtime):
            model_py.write_text(model_py_text(model_module(step)))
        else:
            model_py.unlink(missing_ok=True)
    return list(models)


def use_plan_profiles(message: pb.ModelConfig, plan: Path) -> None:
    """A built plan's own profile count (engines.build --axis may have made fewer) in its config."""
    meta = metadata_path(plan)
    if meta.is_file():
        count = len(json.loads(meta.read_text()).get("profiles") or [None])
        del message.instance_group[0].profile[:]
        message.instance_group[0].profile.extend(str(i) for i in range(count))


def place_graphs(repository: Path, plan: RepositoryPlan, onnx_dir: Path) -> None:
    """Link each exported graph into its model's version folder (onnxruntime runtimes); check the
    plans are there (tensorrt)."""
    config = MODEL_CONFIGS[plan.variant]
    missing = [g for g in graph_names(config) if not (onnx_dir / plan.variant / f"{g}.onnx").is_file()]
    if missing:
        raise FileNotFoundError(
            f"graphs of {plan.variant} not exported: {missing} in {onnx_dir / plan.variant}. "
            f"Run: python -m escnet_export.onnx_graphs.export --variant {plan.variant} --out {onnx_dir}"
        )
    for graph in graph_names(config):
        version = repository / model_name(plan.ensemble, graph) / "1"
        target = (onnx_dir / plan.variant / f"{graph}.onnx").resolve()
        link = version / "model.onnx"
        if link.is_symlink() or link.exists():
            link.unlink()
        if plan.runtime in ("onnxruntime", "onnxruntime_onnx"):
            link.symlink_to(target)
            (version / PLAN_NAME).unlink(missing_ok=True)
        elif not (version / PLAN_NAME).is_file():
            plan_file = version / PLAN_NAME
            raise FileNotFoundError(
                f"{plan_file} is missing: build the engines first (python -m escnet_export.engines.build)"
            )


def build_repository(
    repository: Path = DEFAULT_REPOSITORY,
    *,
    onnx_dir: Path = DEFAULT_ONNX_DIR,
    runtime: str = "auto",
    variants: dict[str, str] | None = None,
    configs_only: bool = False,
    serving: GraphServing = DEFAULT_SERVING,
    protocol: InferenceProtocol = DEFAULT_PROTOCOL,
) -> list[RepositoryPlan]:
    """Write configs and place graphs for each ensemble; returns what was built."""
    chosen = resolve_runtime(runtime)
    plans = [
        RepositoryPlan(e, v, chosen, serving, protocol) for e, v in (variants or DEFAULT_VARIANTS).items()
    ]
    repository.mkdir(parents=True, exist_ok=True)
    for plan in plans:
        write_configs(repository, plan)
        if not configs_only:
            place_graphs(repository, plan, onnx_dir)
    return plans


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--onnx-dir", type=Path, default=DEFAULT_ONNX_DIR)
    parser.add_argument("--runtime", choices=["auto", *RUNTIMES], default="auto")
    parser.add_argument("--escnet-variant", choices=[v for v in MODEL_CONFIGS if v.startswith("escnet")])
    parser.add_argument("--catseg-variant", choices=[v for v in MODEL_CONFIGS if v.startswith("catseg")])
    parser.add_argument(
        "--ensembles", nargs="*", choices=list(DEFAULT_VARIANTS), default=list(DEFAULT_VARIANTS)
    )
    parser.add_argument("--configs-only", action="store_true", help="write configs, place no graphs")
    parser.add_argument(
        "--graph-instances", type=int, default=1, help="copies of each graph model (more requests at once)"
    )
    parser.add_argument(
        "--graph-threads", type=int, help="onnxruntime threads per copy (default: one per core)"
    )
    parser.add_argument(
        "--views-per-run", type=int, default=DEFAULT_CHUNKS.views, help="views per graph run (memory)"
    )
    parser.add_argument(
        "--classes-per-run", type=int, default=DEFAULT_CHUNKS.classes, help="classes per SAM/decoder run"
    )
    parser.add_argument(
        "--texts-per-run", type=int, default=DEFAULT_CHUNKS.texts, help="texts per text-encoder run"
    )
    parser.add_argument(
        "--memory-budget",
        default="auto",
        metavar="GIB",
        help="one request's memory budget in GiB, or auto (half the machine's memory); see README, Memory",
    )
    parser.add_argument(
        "--accelerator",
        choices=ACCELERATORS,
        default=DEFAULT_SERVING.accelerator,
        help="onnxruntime_onnx runtime: what runs the graphs (tensorrt: FP16 engines, cached; cuda; cpu)",
    )
    parser.add_argument(
        "--engine-cache",
        default=DEFAULT_ENGINE_CACHE,
        help="onnxruntime_onnx with tensorrt: the engine cache folder (a volume, to survive restarts)",
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default=DEFAULT_PROTOCOL.name,
        help="inference protocol: catseg_eval (CAT-Seg's official evaluation, 5 views) or "
        "single_view (CAT-Seg's non-sliding path, 1 view); see escnet/config.py",
    )
    parser.add_argument(
        "--synonyms",
        choices=SYNONYM_RULES,
        help="what of a name with ', ' is encoded: first (CAT-Seg's, the default) or average",
    )
    args = parser.parse_args(argv)
    chosen = {"escnet": args.escnet_variant, "catseg": args.catseg_variant}
    variants = {e: chosen[e] or DEFAULT_VARIANTS[e] for e in args.ensembles}
    plans = build_repository(
        args.repository,
        onnx_dir=args.onnx_dir,
        runtime=args.runtime,
        variants=variants,
        configs_only=args.configs_only,
        serving=GraphServing(
            instances=args.graph_instances,
            threads=args.graph_threads,
            chunks=RunChunks(
                views=args.views_per_run, classes=args.classes_per_run, texts=args.texts_per_run
            ),
            memory_budget_gib=str(args.memory_budget),
            accelerator=args.accelerator,
            engine_cache=args.engine_cache,
        ),
        protocol=named_protocol(args.protocol, args.synonyms),
    )
    for plan in plans:
        print(
            f"{plan.ensemble}: {plan.variant} on {plan.runtime}, {plan.serving}, protocol "
            f"{plan.protocol.name} (synonyms: {plan.protocol.synonyms}) -> {args.repository}"
        )
    shutil.rmtree(args.repository / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
