"""The checked-in model_repository/ does not drift from what the contract generates.

For the default build (onnxruntime runtime, the default variants) every checked-in
``<model>/config.pbtxt`` and ``<model>/1/model.py`` must equal, byte for byte, what
``build_repository(configs_only=True)`` writes; a model checked in but no longer generated, or
generated but not checked in, fails too. No server and no graphs are needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from parity_support import ROOT, parse_model_config
from tritonclient.grpc import model_config_pb2

from escnet.config import MODEL_CONFIGS
from escnet_export.contract import DEFAULT_VARIANTS, engine_profiles, step_specs
from escnet_export.triton_serving.configs import GraphServing, repository_models
from escnet_export.triton_serving.repository import build_repository

CHECKED_IN = ROOT / "model_repository"
REBUILD = "python -m escnet_export.triton_serving.repository --runtime onnxruntime --configs-only"
CODE_FILES = ("config.pbtxt", "1/model.py")


def _code_files(repository: Path) -> dict[str, str]:
    """relative path -> text of every config.pbtxt and 1/model.py of a repository."""
    files = {}
    for model in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for name in CODE_FILES:
            path = model / name
            if path.is_file():
                files[f"{model.name}/{name}"] = path.read_text()
    return files


def _models(repository: Path) -> set[str]:
    return {p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("generated") / "model_repository"
    build_repository(repository, runtime="onnxruntime", variants=DEFAULT_VARIANTS, configs_only=True)
    return repository


def test_every_generated_model_is_checked_in_and_no_other(generated: Path) -> None:
    stray_dirs = sorted(
        p.name
        for p in CHECKED_IN.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name != "__pycache__"
    )
    checked_in, expected = _models(CHECKED_IN), _models(generated)
    assert checked_in == expected, (
        f"not generated but checked in: {sorted(checked_in - expected)}; "
        f"generated but not checked in: {sorted(expected - checked_in)}. Rebuild with: {REBUILD}"
    )
    assert set(stray_dirs) == expected, f"folders without config.pbtxt: {sorted(set(stray_dirs) - expected)}"


def test_checked_in_files_equal_the_generated_ones(generated: Path) -> None:
    checked_in, expected = _code_files(CHECKED_IN), _code_files(generated)
    assert sorted(checked_in) == sorted(expected), (
        f"files differ: only checked in {sorted(set(checked_in) - set(expected))}, "
        f"only generated {sorted(set(expected) - set(checked_in))}. Rebuild with: {REBUILD}"
    )
    drifted = [path for path in expected if checked_in[path] != expected[path]]
    assert not drifted, (
        f"checked-in files drifted from the generated ones: {drifted}. Rebuild with: {REBUILD}"
    )


def test_generated_configs_name_their_models(generated: Path) -> None:
    """Each config names its own folder (Triton refuses a mismatch only at load time)."""
    for model in _models(generated):
        assert parse_model_config((generated / model / "config.pbtxt").read_text()).name == model


def test_graph_serving_sets_graph_instances_and_threads_only() -> None:
    config = MODEL_CONFIGS[DEFAULT_VARIANTS["catseg"]]
    models = repository_models("catseg", config, "onnxruntime", GraphServing(instances=2, threads=1))
    specs = step_specs(config)
    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    for name, parsed in models.items():
        instances = [(group.kind, group.count) for group in parsed.instance_group]
        step = specs.get(name.removeprefix("catseg_"))
        if step is None:  # the ensemble
            assert not instances
        elif step.kind == "graph":
            assert (cpu, 2) in instances, name
            assert "threads" in parsed.parameters, name
            assert parsed.parameters["threads"].string_value == "1", name
        else:
            assert (cpu, 1) in instances and "threads" not in parsed.parameters, name
    with pytest.raises(ValueError, match="instances and threads"):
        GraphServing(instances=0)


RUNTIME_SERVINGS = [
    ("onnxruntime", GraphServing()),
    ("onnxruntime_onnx", GraphServing(accelerator="tensorrt")),
    ("onnxruntime_onnx", GraphServing(accelerator="cuda")),
    ("onnxruntime_onnx", GraphServing(accelerator="cpu", threads=2)),
    ("tensorrt", GraphServing(instances=2)),
]
RUNTIME_IDS = ["onnxruntime", "ort-tensorrt", "ort-cuda", "ort-cpu", "tensorrt"]


@pytest.mark.parametrize(("runtime", "serving"), RUNTIME_SERVINGS, ids=RUNTIME_IDS)
@pytest.mark.parametrize("ensemble", list(DEFAULT_VARIANTS))
def test_every_config_of_every_runtime_parses_as_model_config(
    tmp_path: Path, ensemble: str, runtime: str, serving: GraphServing
) -> None:
    """What build_repository writes, read back as Triton's ModelConfig: same message, right files."""
    repository = tmp_path / "model_repository"
    build_repository(
        repository,
        runtime=runtime,
        variants={ensemble: DEFAULT_VARIANTS[ensemble]},
        configs_only=True,
        serving=serving,
    )
    config = MODEL_CONFIGS[DEFAULT_VARIANTS[ensemble]]
    expected = repository_models(ensemble, config, runtime, serving)
    specs = step_specs(config)
    assert _models(repository) == set(expected)
    for name, message in expected.items():
        parsed = parse_model_config((repository / name / "config.pbtxt").read_text())
        assert parsed == message, name
        step = specs.get(name.removeprefix(f"{ensemble}_"))
        if step is None:
            assert parsed.platform == "ensemble"
            continue
        python = parsed.backend == "python"
        assert (repository / name / "1" / "model.py").is_file() == python, name
        if step.kind == "graph":
            assert python == (runtime == "onnxruntime"), name
            if runtime == "tensorrt":
                assert parsed.platform == "tensorrt_plan"
                strategy = parsed.parameters["execution_context_allocation_strategy"].string_value
                assert strategy == "ON_PROFILE_CHANGE"
                # every profile listed (Triton uses only the first of a plan otherwise)
                profiles = [str(i) for i in range(len(engine_profiles(step)))]
                assert [list(g.profile) for g in parsed.instance_group] == [profiles], name
            if runtime == "onnxruntime_onnx":
                assert (parsed.backend, parsed.platform) == ("onnxruntime", "onnxruntime_onnx")
                accelerators = parsed.optimization.execution_accelerators.gpu_execution_accelerator
                assert [a.name for a in accelerators] == (
                    [] if serving.accelerator == "cpu" else [serving.accelerator]
                )


@pytest.mark.parametrize(("runtime", "serving"), RUNTIME_SERVINGS, ids=RUNTIME_IDS)
def test_gpu_runtimes_warm_every_graph_and_keep_step_tensors_on_the_gpu(
    tmp_path: Path, runtime: str, serving: GraphServing
) -> None:
    """On a GPU: every graph model has a warm-up per view count (its files written, shaped as the
    warm-up says), and the steps after the graphs read GPU tensors; on a CPU neither."""
    repository = tmp_path / "model_repository"
    build_repository(
        repository,
        runtime=runtime,
        variants={"escnet": DEFAULT_VARIANTS["escnet"]},
        configs_only=True,
        serving=serving,
    )
    config = MODEL_CONFIGS[DEFAULT_VARIANTS["escnet"]]
    gpu = runtime == "tensorrt" or serving.accelerator != "cpu" and runtime == "onnxruntime_onnx"
    gpu_kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
    for name, step in ((f"escnet_{s.name}", s) for s in step_specs(config).values()):
        parsed = parse_model_config((repository / name / "config.pbtxt").read_text())
        kinds = {group.kind for group in parsed.instance_group}
        device_tensors = (
            parsed.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
            if ("FORCE_CPU_ONLY_INPUT_TENSORS" in parsed.parameters)
            else False
        )
        if step.kind == "graph":
            assert (kinds == {gpu_kind}) == gpu, name
            assert len(parsed.model_warmup) == (
                0 if not gpu else 1 if step.name == "clip_text_encoder" else 2
            ), name
            for warmup in parsed.model_warmup:
                assert set(warmup.inputs) == {s.name for s in step.inputs}, name
                for tensor in warmup.inputs.values():
                    if tensor.input_data_file:
                        data = (repository / name / "warmup" / tensor.input_data_file).read_bytes()
                        assert len(data) == 4 * int(np.prod(tensor.dims)), name
                    else:
                        assert tensor.zero_data, name
        else:
            assert not parsed.model_warmup, name
            assert device_tensors == (gpu and step.name in ("pseudo_points", "postprocess")), name
            assert (kinds == {gpu_kind}) == device_tensors, name
