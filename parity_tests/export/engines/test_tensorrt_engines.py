"""TensorRT engines (export/engines/builder.py, plans.py, trt_runner.py, build.py).

Two tiers:

- Everywhere: the optimisation profiles generated from the contract, the axis options, and the plan
  checker's refusals (another TensorRT version, another GPU compute capability, a changed ONNX graph,
  a replaced plan, missing metadata), each with the exact rebuild command; the builder refusing to
  run without TensorRT, saying so.
- Where ``import tensorrt`` gives TensorRT and a GPU answers (marker ``gpu``): build every engine of
  both variants, FP16 (the deployed precision) and FP32, check each plan against this machine, and
  hold each engine's outputs to the PyTorch graph wrapper's through the tolerance table
  (TOLERANCES["fp16_graph"] / ["fp32_graph"]), printing latency. Here they skip, printing why.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from parity_support import ROOT, medsam_checkpoint, parse_model_config

from escnet.config import MODEL_CONFIGS
from escnet_export.artifacts import file_sha256, metadata_path
from escnet_export.contract import (
    AXIS_PROFILES,
    CLASS_BUCKETS,
    AxisProfile,
    engine_profiles,
    graph_names,
    input_profiles,
    step_specs,
)
from escnet_export.engines.builder import BuildOptions, build_engines, parse_axis
from escnet_export.engines.plans import (
    MachineInfo,
    PlanMetadata,
    PlanMismatch,
    TensorRTUnavailable,
    check_plan,
    plan_metadata,
    probe_machine,
    tensorrt_unavailable,
)
from escnet_export.parity import TOLERANCES, compare_arrays

VARIANTS = {"escnet": "escnet_vitb16_384", "catseg": "catseg_vitb16_384"}
ONNX_DIR = Path("artifacts/onnx")
HERE = MachineInfo(tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")


# --- everywhere --------------------------------------------------------------------------------


def test_profiles_come_from_the_contract() -> None:
    specs = step_specs(MODEL_CONFIGS["escnet_vitb16_384"])
    image = input_profiles(specs["clip_image_encoder"], AXIS_PROFILES)["IMAGES"]
    assert image == {"min": [1, 3, 384, 384], "opt": [1, 3, 384, 384], "max": [8, 3, 384, 384]}
    embedding = input_profiles(specs["aggregator_1"], AXIS_PROFILES)["EMBEDDING"]
    assert embedding == {
        "min": [1, 128, 1, 24, 24],
        "opt": [1, 128, 150, 24, 24],
        "max": [8, 128, 1024, 24, 24],
    }
    points = input_profiles(specs["sam_prompt_decoder_1"], AXIS_PROFILES)["POINTS"]
    assert points["opt"] == [1, 150, 5, 2]
    tokens = input_profiles(specs["clip_text_encoder"], AXIS_PROFILES)["TOKENS"]
    assert tokens["max"] == [1024, 77]
    for variant in VARIANTS.values():  # every input of every graph has a profile
        for step in step_specs(MODEL_CONFIGS[variant]).values():
            if step.kind == "graph":
                assert set(input_profiles(step, AXIS_PROFILES)) == set(step.input_names)


def test_engine_profiles_follow_the_call_shapes() -> None:
    """One profile per view count (1, 5) and class bucket; the buckets cover 1..max_classes."""
    specs = step_specs(MODEL_CONFIGS["escnet_vitb16_384"])
    profiles = engine_profiles(specs["aggregator_1"])
    embedding = [p["EMBEDDING"] for p in profiles]
    assert [(e["min"][0], e["max"][0]) for e in embedding] == [(1, 1)] * 4 + [(5, 5)] * 4
    assert [(e["min"][2], e["opt"][2], e["max"][2]) for e in embedding[:4]] == [
        (1, 19, 32),
        (33, 58, 96),
        (97, 150, 256),
        (257, 512, 1024),
    ]
    assert CLASS_BUCKETS[0].minimum == 1 and CLASS_BUCKETS[-1].maximum == AXIS_PROFILES["T"].maximum
    assert all(a.maximum + 1 == b.minimum for a, b in zip(CLASS_BUCKETS[:-1], CLASS_BUCKETS[1:], strict=True))
    assert len(engine_profiles(specs["clip_image_encoder"])) == 2  # views only
    assert len(engine_profiles(specs["clip_text_encoder"])) == 1  # texts only
    custom = engine_profiles(specs["decoder"], {**AXIS_PROFILES, "T": AxisProfile(2, 20, 200)})
    assert [p["CLASS_MASK"] for p in custom] == [
        {"min": [1, 2], "opt": [1, 20], "max": [1, 200]},
        {"min": [5, 2], "opt": [5, 20], "max": [5, 200]},
    ]


def test_axis_options() -> None:
    assert parse_axis("T=1,300,2048") == ("T", AxisProfile(1, 300, 2048))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        parse_axis("T=10,5,20")
    with pytest.raises(ValueError, match="NAME=min,opt,max"):
        parse_axis("T=1,2")
    step = step_specs(MODEL_CONFIGS["catseg_vitb16_384"])["decoder"]
    custom = input_profiles(step, {**AXIS_PROFILES, "T": AxisProfile(2, 20, 200)})
    assert custom["CLASS_MASK"] == {"min": [1, 2], "opt": [1, 20], "max": [8, 200]}


def _fake_plan(tmp_path: Path, machine: MachineInfo = HERE) -> tuple[Path, Path, PlanMetadata]:
    onnx_path = tmp_path / "onnx" / "prep.onnx"
    onnx_path.parent.mkdir(parents=True)
    onnx_path.write_bytes(b"graph bytes")
    plan = tmp_path / "model_repository" / "escnet_prep" / "1" / "model.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"engine bytes")
    metadata = plan_metadata(
        plan,
        onnx_path,
        machine,
        variant="escnet_vitb16_384",
        ensemble="escnet",
        graph="prep",
        precision="fp16",
        profiles=[],
        axes={},
        builder={},
        built_at="2026-01-01T00:00:00+00:00",
        build_seconds=1.0,
    )
    metadata.write(plan)
    return plan, onnx_path, metadata


def test_check_plan_accepts_its_own_machine(tmp_path: Path) -> None:
    plan, onnx_path, metadata = _fake_plan(tmp_path)
    assert (metadata.onnx_sha256, metadata.plan_sha256) == (file_sha256(onnx_path), file_sha256(plan))
    assert (metadata.tensorrt_version, metadata.onnx_path) == (HERE.tensorrt_version, str(onnx_path))
    assert check_plan(plan, machine=HERE) == metadata
    assert PlanMetadata.from_json(metadata_path(plan).read_text()) == metadata


@pytest.mark.parametrize(
    ("machine", "says"),
    [
        (
            MachineInfo("10.3.0.26", HERE.gpu_name, HERE.compute_capability),
            "built with TensorRT 10.13.0.35, this machine runs TensorRT 10.3.0.26",
        ),
        (
            MachineInfo(HERE.tensorrt_version, "NVIDIA A100-SXM4-80GB", "8.0"),
            "built for compute capability 9.0 (NVIDIA H100 80GB HBM3), this GPU is 8.0",
        ),
    ],
    ids=["tensorrt-version", "compute-capability"],
)
def test_check_plan_refuses_another_machine(tmp_path: Path, machine: MachineInfo, says: str) -> None:
    plan, _, _ = _fake_plan(tmp_path)
    with pytest.raises(PlanMismatch) as refused:
        check_plan(plan, machine=machine)
    message = str(refused.value)
    print(f"\n{message}")
    assert says in message
    repository = plan.parent.parent.parent
    command = (
        "python -m escnet_export.engines.build --ensembles escnet --escnet-variant escnet_vitb16_384 "
        f"--graphs prep --precision fp16 --repository {repository} --onnx-dir artifacts/onnx --force"
    )
    assert message.endswith(f"Rebuild it on this machine: {command}")


def test_rebuild_command_keeps_custom_profiles(tmp_path: Path) -> None:
    plan, _, metadata = _fake_plan(tmp_path)
    metadata.axes = {"B": [1, 1, 8], "T": [1, 300, 2048]}
    with pytest.raises(PlanMismatch) as refused:
        check_plan(plan, metadata, machine=MachineInfo("11.0.0.1", HERE.gpu_name, HERE.compute_capability))
    assert str(refused.value).endswith("--axis=T=1,300,2048 --force")


def test_check_plan_refuses_a_changed_graph_or_plan(tmp_path: Path) -> None:
    plan, onnx_path, _ = _fake_plan(tmp_path)
    onnx_path.write_bytes(b"re-exported graph")
    with pytest.raises(PlanMismatch, match="has changed since the plan was built"):
        check_plan(plan, machine=HERE)
    plan, _, _ = _fake_plan(tmp_path / "second")
    plan.write_bytes(b"another engine")
    with pytest.raises(PlanMismatch, match="does not match its metadata"):
        check_plan(plan, machine=HERE)


def test_check_plan_refuses_missing_metadata_and_unverifiable_graphs(tmp_path: Path) -> None:
    plan, onnx_path, _ = _fake_plan(tmp_path)
    onnx_path.unlink()
    check_plan(plan, machine=HERE)  # a serving machine without the ONNX files: allowed by default
    with pytest.raises(PlanMismatch, match="not on disk"):
        check_plan(plan, machine=HERE, require_onnx=True)
    metadata_path(plan).unlink()
    with pytest.raises(
        PlanMismatch, match="metadata .* is missing; build the engines: python -m escnet_export"
    ):
        check_plan(plan, machine=HERE)


def test_check_plan_only_warns_for_another_gpu_model(tmp_path: Path) -> None:
    plan, _, _ = _fake_plan(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_plan(plan, machine=MachineInfo(HERE.tensorrt_version, "NVIDIA H200", "9.0"))
    assert any("running on NVIDIA H200" in str(w.message) for w in caught)


def test_without_tensorrt_the_builder_says_so(tmp_path: Path) -> None:
    reason = tensorrt_unavailable()
    if reason is None:
        pytest.skip("TensorRT is available here: the engine tests below run instead")
    print(f"\n{reason}")
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not available here"):
        build_engines(tmp_path / "repo", onnx_dir=ONNX_DIR)
    cli = subprocess.run(
        [sys.executable, "-m", "escnet_export.engines.build", "--repository", str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert cli.returncode != 0 and "TensorRT is not available here" in cli.stderr
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "escnet_export.engines.build",
            "--check",
            "--repository",
            str(tmp_path / "repo"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert check.returncode == 1 and "plan or its metadata (model.plan.json) is missing" in check.stderr


# --- where TensorRT and a GPU are --------------------------------------------------------------


@pytest.fixture(scope="module")
def machine() -> MachineInfo:
    reason = tensorrt_unavailable()
    if reason is not None:
        pytest.skip(f"engine tests need TensorRT and a GPU: {reason}")
    try:
        return probe_machine()
    except PlanMismatch as error:
        pytest.skip(f"engine tests need a GPU: {error}")


_BUILT: dict[str, Path] = {}


def repository(precision: str, tmp_factory: pytest.TempPathFactory) -> Path:
    """Every engine of both ensembles, built once per precision per session."""
    if precision not in _BUILT:
        from escnet_export.onnx_graphs.export import run_export

        for variant in VARIANTS.values():
            sam = medsam_checkpoint() if MODEL_CONFIGS[variant].use_sam_blocks else None
            run_export(variant, ONNX_DIR, sam_checkpoint=sam, progress=False)
        repo = tmp_factory.mktemp(f"repository_{precision}")
        options = BuildOptions(precision=precision, timing_cache=repo.parent / "timing.cache")
        start = time.perf_counter()
        built = build_engines(repo, onnx_dir=ONNX_DIR, variants=VARIANTS, options=options)
        print(f"\nbuilt {len(built)} {precision} engines in {time.perf_counter() - start:.0f} s")
        for name, metadata in built.items():
            print(f"  {name}: {metadata.build_seconds} s")
        _BUILT[precision] = repo
    return _BUILT[precision]


def _cases() -> list[tuple[str, str, str]]:
    return [
        (precision, ensemble, graph)
        for precision in ("fp16", "fp32")
        for ensemble, variant in VARIANTS.items()
        for graph in graph_names(MODEL_CONFIGS[variant])
    ]


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "ensemble", "graph"), _cases(), ids=lambda x: str(x))
def test_engine_matches_pytorch(
    precision: str,
    ensemble: str,
    graph: str,
    machine: MachineInfo,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from escnet.registry import build_model
    from escnet_export.engines.trt_runner import TrtRunner
    from escnet_export.onnx_graphs.wrappers import graph_wrapper, sample_inputs
    from escnet_export.runtime.runners import TorchRunner

    variant = VARIANTS[ensemble]
    repo = repository(precision, tmp_path_factory)
    plan = repo / f"{ensemble}_{graph}" / "1" / "model.plan"
    metadata = check_plan(plan, machine=machine, require_onnx=True)
    assert (metadata.precision, metadata.tensorrt_version) == (precision, machine.tensorrt_version)
    assert (
        parse_model_config((repo / f"{ensemble}_{graph}" / "config.pbtxt").read_text()).platform
        == "tensorrt_plan"
    )

    sam = medsam_checkpoint() if MODEL_CONFIGS[variant].use_sam_blocks else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(variant, sam_checkpoint=sam)
    step = step_specs(MODEL_CONFIGS[variant])[graph]
    reference = TorchRunner(step, graph_wrapper(model, graph))
    engine = TrtRunner(step, plan, machine=machine)
    tolerance = TOLERANCES["fp16_graph" if precision == "fp16" else "fp32_graph"]
    try:
        for axes in ({"B": 1, "T": 1, "N": 1}, {"B": 2, "T": 150, "N": 150}):
            feeds = {k: v.numpy() for k, v in sample_inputs(step, seed=1, axes=axes).items()}
            expected = reference.infer(feeds)
            actual = engine.infer(feeds)
            start = time.perf_counter()
            for _ in range(10):
                engine.infer(feeds)
            latency = (time.perf_counter() - start) / 10
            results = [compare_arrays(n, actual[n], expected[n], tolerance) for n in step.output_names]
            per_call = f"{latency * 1e3:.2f} ms per call (host copies included)"
            print(f"\n{precision} {ensemble}_{graph} {axes}: {per_call}")
            for result in results:
                print(f"  {result}")
            failed = [str(r) for r in results if not r]
            assert not failed, "\n".join(failed)
    finally:
        engine.close()
    assert np.isfinite(latency)
