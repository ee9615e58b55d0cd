"""The served ensembles on a real tritonserver (started once per session), driven by tritonclient.

* parity: ``escnet`` and ``catseg`` against the PyTorch reference (``model.segment``) on real photos
  for T = 1, 5 and a large vocabulary (150 classes for escnet, 58 for catseg), with the project's
  one tolerance table (escnet_export.parity); the measured numbers are printed and written to
  artifacts/parity/served.json;
* 4 concurrent clients (2 HTTP, 2 gRPC) get the answers of serial calls;
* a repeated vocabulary is served from the text embedder's cache (the text encoder model's
  inference count, read from Triton's statistics API, does not move) with the identical answer;
* every kind of bad request gets an error naming the problem, and the next good request is answered
  right by a server that stays ready.

The server, the clients and the reference models come from parity_tests/triton_fixtures.py.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
skimage_data = pytest.importorskip("skimage.data")

from parity_support import ROOT  # noqa: E402
from triton_fixtures import CLIENT_TIMEOUT_S  # noqa: E402
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

from escnet.config import MODEL_CONFIGS  # noqa: E402
from escnet_export import parity  # noqa: E402
from escnet_export.contract import (  # noqa: E402
    CLASS_NAMES,
    DEFAULT_VARIANTS,  # noqa: E402
    IMAGE,
    LABELS,
    MAX_CLASSES,
    REQUEST_LIMITS,
    SCORES,
)
from escnet_export.triton_serving.configs import model_name  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("shared_memory_given_back")]


REPORT = ROOT / "artifacts" / "parity" / "served.json"
VOCABULARY_LINES = (ROOT / "parity_tests" / "data" / "vocabulary.txt").read_text().splitlines()
VOCABULARY = [name for name in map(str.strip, VOCABULARY_LINES) if name and not name.startswith("#")]
# (ensemble, T, photo): hubble_deep_field (872 x 1000) goes through the sliding window (5 views),
# astronaut is 512 x 512, chelsea (300 x 451) keeps the large-T scores small. The large vocabulary is
# T = 150 (ADE-150) for escnet and T = 58 for catseg: both ensembles run the same edge steps and text
# embedder, and the in-process chain is held to PyTorch at T = 150 and 300 for both variants
# (parity_tests/export/runtime/test_chain_parity.py), so catseg's served case spends a third of the
# CPU time on what only it has, its own graphs at a large T.
PARITY_CASES = [
    ("escnet", 1, "hubble_deep_field"),
    ("escnet", 5, "astronaut"),
    ("escnet", 150, "chelsea"),
    ("catseg", 1, "hubble_deep_field"),
    ("catseg", 5, "astronaut"),
    ("catseg", 58, "chelsea"),
]
SMALL_VOCABULARY = ["cat", "wall, brick wall", "floor", "person"]


def photo(name: str) -> np.ndarray:
    image = getattr(skimage_data, name)()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, (name, image.shape)
    return image


def encode_names(names: Sequence[str | bytes]) -> np.ndarray:
    return np.array([n.encode() if isinstance(n, str) else n for n in names], dtype=np.object_)


def infer(
    client: Any,
    ensemble: str,
    image: np.ndarray,
    names: Sequence[str | bytes],
    *,
    scores: bool = False,
) -> dict[str, np.ndarray | None]:
    """One request through ``client`` (HTTP or gRPC): LABELS, and SCORES when asked for (else None)."""
    grpc = isinstance(client, grpcclient.InferenceServerClient)
    module = grpcclient if grpc else httpclient
    class_names = encode_names(names)
    image_input = module.InferInput(IMAGE.name, list(image.shape), np_to_triton_dtype(image.dtype))
    image_input.set_data_from_numpy(image)
    names_input = module.InferInput(CLASS_NAMES.name, list(class_names.shape), "BYTES")
    names_input.set_data_from_numpy(class_names)
    wanted = [LABELS.name, SCORES.name] if scores else [LABELS.name]
    outputs = [module.InferRequestedOutput(name) for name in wanted]
    extra = {"client_timeout": CLIENT_TIMEOUT_S} if grpc else {}
    result = client.infer(ensemble, [image_input, names_input], outputs=outputs, **extra)
    return {LABELS.name: result.as_numpy(LABELS.name), SCORES.name: result.as_numpy(SCORES.name)}


def flips_outside_ties(served: dict, reference_probabilities: np.ndarray, max_abs: float) -> tuple[int, int]:
    """(pixels whose labels differ, those of them that are not near-ties of the reference).

    Served SCORES within ``max_abs`` of the reference can move the argmax only where the
    reference's two best classes are within ``2 * max_abs`` of each other; a label that differs
    anywhere else is a wrong label, not float noise. No tolerance of its own: the bound is the
    measured score error.
    """
    expected_labels = reference_probabilities.argmax(axis=0)
    flipped = served[LABELS.name] != expected_labels  # [H, W]
    if reference_probabilities.shape[0] < 2 or not flipped.any():
        return int(flipped.sum()), 0
    top2 = np.partition(reference_probabilities[:, flipped], -2, axis=0)[-2:]  # [2, F]
    return int(flipped.sum()), int(np.count_nonzero(top2[1] - top2[0] > 2 * max_abs))


def record(ensemble: str, key: str, entry: dict[str, Any]) -> None:
    """Merge one measurement into artifacts/parity/served.json."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    report.setdefault(ensemble, {})[key] = entry
    REPORT.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


# -- parity with the PyTorch reference ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ensemble", "classes", "image_name"), PARITY_CASES, ids=[f"{e}-T{t}" for e, t, _ in PARITY_CASES]
)
def test_served_ensemble_matches_the_reference(
    ensemble: str, classes: int, image_name: str, http_client: Any, reference_models: Any
) -> None:
    variant = DEFAULT_VARIANTS[ensemble]
    image, names = photo(image_name), VOCABULARY[:classes]
    start = time.perf_counter()
    served = infer(http_client, ensemble, image, names, scores=True)
    served_s = time.perf_counter() - start
    model = reference_models[variant]
    start = time.perf_counter()
    expected = model.segment(image, names)
    reference_s = time.perf_counter() - start

    labels = parity.compare_labels(
        served[LABELS.name], expected.labels.numpy(), parity.TOLERANCES["labels"], name=f"{ensemble}.LABELS"
    )
    scores = parity.compare_arrays(
        f"{ensemble}.SCORES",
        served[SCORES.name],
        expected.probabilities.numpy(),
        parity.TOLERANCES["served_scores"],
    )
    flipped, untied = flips_outside_ties(served, expected.probabilities.numpy(), scores.max_abs)
    entry = {
        "variant": variant,
        "image": f"{image_name} {image.shape[0]}x{image.shape[1]}",
        "classes": classes,
        "label_agreement": labels.agreement,
        "min_label_agreement": parity.TOLERANCES["labels"].min_label_agreement,
        "scores_max_abs": scores.max_abs,
        "scores_max_of_scale": scores.max_of_scale,
        "scores_mean_abs": scores.mean_abs,
        "scores_p99_abs": scores.p99_abs,
        "scores_max_abs_of_scale_allowed": parity.TOLERANCES["served_scores"].max_abs_of_scale,
        "labels_differing": flipped,
        "labels_differing_outside_ties": untied,
        "passed": bool(labels) and bool(scores) and untied == 0,
        "served_s": round(served_s, 2),
        "reference_s": round(reference_s, 2),
    }
    record(ensemble, f"T={classes}", entry)
    print(
        f"\n{ensemble} T={classes} {entry['image']}: {labels}; {scores}; served {served_s:.1f} s, "
        f"reference {reference_s:.1f} s"
    )
    assert served[LABELS.name].dtype == np.int32 and served[LABELS.name].shape == image.shape[:2]
    assert served[SCORES.name].dtype == np.float32 and served[SCORES.name].shape == (
        classes,
        *image.shape[:2],
    )
    assert labels, str(labels)
    assert scores, str(scores)
    assert untied == 0, f"{untied} of {flipped} differing labels are not near-ties of the reference"


# -- concurrency --------------------------------------------------------------------------------------

CONCURRENT_REQUESTS = [
    ("escnet", "chelsea", SMALL_VOCABULARY[:3]),
    ("escnet", "astronaut", SMALL_VOCABULARY[1:]),
    ("catseg", "chelsea", SMALL_VOCABULARY[1:]),
    ("catseg", "coffee", SMALL_VOCABULARY[:3]),
]
CLIENTS = len(CONCURRENT_REQUESTS)  # one of each request at once; 2 cores gain nothing from more


def test_concurrent_clients_get_the_serial_answers(triton_server: Any, http_client: Any) -> None:
    serial = [infer(http_client, e, photo(i), n, scores=True) for e, i, n in CONCURRENT_REQUESTS]
    answers: dict[int, dict[str, np.ndarray | None] | BaseException] = {}
    barrier = threading.Barrier(CLIENTS)

    def client_thread(index: int) -> None:
        ensemble, image_name, names = CONCURRENT_REQUESTS[index % len(CONCURRENT_REQUESTS)]
        image = photo(image_name)
        if index % 2:  # half the clients speak gRPC, half HTTP; each its own client
            client = grpcclient.InferenceServerClient(url=triton_server.grpc_url)
        else:
            client = httpclient.InferenceServerClient(
                url=triton_server.http_url, network_timeout=CLIENT_TIMEOUT_S
            )
        try:
            barrier.wait(timeout=60)
            answers[index] = infer(client, ensemble, image, names, scores=True)
        except BaseException as error:  # reported by the main thread
            answers[index] = error
        finally:
            client.close()

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=CLIENT_TIMEOUT_S)
    print(f"\n{CLIENTS} concurrent clients answered in {time.perf_counter() - start:.1f} s")
    assert sorted(answers) == list(range(CLIENTS)), "a client thread did not finish"
    for index, answer in answers.items():
        if isinstance(answer, BaseException):
            raise AssertionError(f"client {index} failed: {answer!r}") from answer
        expected = serial[index % len(CONCURRENT_REQUESTS)]
        np.testing.assert_array_equal(answer[LABELS.name], expected[LABELS.name], err_msg=f"client {index}")
        np.testing.assert_array_equal(answer[SCORES.name], expected[SCORES.name], err_msg=f"client {index}")


# -- the text embedder's cache ------------------------------------------------------------------------


def text_encoder_runs(client: Any, ensemble: str) -> int:
    """Inference count of the ensemble's text encoder model, from Triton's statistics API."""
    stats = client.get_inference_statistics(model_name(ensemble, "clip_text_encoder"))
    return sum(int(model.get("inference_count", 0)) for model in stats["model_stats"])


def test_repeated_vocabulary_hits_the_cache(http_client: Any) -> None:
    ensemble, image = "escnet", photo("chelsea")
    vocabulary = [f"cache probe {uuid.uuid4().hex[:8]}", "cat", "sofa, couch"]  # the first is new

    before = text_encoder_runs(http_client, ensemble)
    first = infer(http_client, ensemble, image, vocabulary, scores=True)
    after_first = text_encoder_runs(http_client, ensemble)
    assert after_first > before, "a new class name did not reach the text encoder model"

    again = infer(http_client, ensemble, image, vocabulary, scores=True)
    assert text_encoder_runs(http_client, ensemble) == after_first, (
        "a repeated vocabulary re-ran the text encoder"
    )
    np.testing.assert_array_equal(again[LABELS.name], first[LABELS.name])
    np.testing.assert_array_equal(again[SCORES.name], first[SCORES.name])

    labels_only = infer(http_client, ensemble, image, vocabulary, scores=False)
    assert labels_only[SCORES.name] is None, "SCORES came back although the client did not ask for them"
    np.testing.assert_array_equal(labels_only[LABELS.name], first[LABELS.name])
    assert text_encoder_runs(http_client, ensemble) == after_first

    extended = [*vocabulary, f"cache probe {uuid.uuid4().hex[:8]}"]
    infer(http_client, ensemble, image, extended)
    assert text_encoder_runs(http_client, ensemble) > after_first, "a new class name was not encoded"


# -- bad requests ------------------------------------------------------------------------------------


CONTEXT_LENGTH = MODEL_CONFIGS[DEFAULT_VARIANTS["escnet"]].clip.context_length  # CLIP's 77 tokens


def _image() -> np.ndarray:
    return photo("chelsea")


LIMITS = REQUEST_LIMITS
TRITON_SHAPE = r"(?i)shape.*IMAGE|IMAGE.*shape"  # Triton's own refusal of a wrong rank or channel count
# Over max_score_elements with few classes: an image within max_pixels, T x H x W beyond the budget.
BUDGET_SIDE = int((LIMITS.max_score_elements // 20) ** 0.5) + 1
# (image, class names, what the refusal must say). Wrong dtype, rank and channel count are refused
# by Triton itself (the config declares UINT8 [-1, -1, 3]); everything else by the edge steps.
BAD_REQUESTS = {
    "empty class list": (_image, [], r"class list is empty"),
    "empty image": (lambda: np.zeros((0, 451, 3), np.uint8), ["cat"], r"image is empty"),
    "tiny image": (
        lambda: _image()[: LIMITS.min_side - 1],
        ["cat"],
        rf"too small: each side must be at least {LIMITS.min_side}",
    ),
    "image over the pixel budget": (
        lambda: np.zeros((4097, LIMITS.max_pixels // 4096, 3), np.uint8),
        ["cat"],
        rf"pixels exceeds the limit of {LIMITS.max_pixels}",
    ),
    "classes x pixels over the score budget": (
        lambda: np.zeros((BUDGET_SIDE, BUDGET_SIDE, 3), np.uint8),
        [f"budget {i}" for i in range(20)],
        rf"20 classes on a .* more than the limit of {LIMITS.max_score_elements}",
    ),
    "float32 image": (lambda: _image().astype(np.float32), ["cat"], r"IMAGE.*FP32.*UINT8|UINT8.*FP32"),
    "grey image (rank 2)": (lambda: np.ascontiguousarray(_image()[..., 0]), ["cat"], TRITON_SHAPE),
    "batch of images (rank 4)": (lambda: _image()[None], ["cat"], TRITON_SHAPE),
    "four channels": (lambda: np.concatenate([_image(), _image()[..., :1]], axis=2), ["cat"], TRITON_SHAPE),
    "too many classes": (
        _image,
        [f"class {i}" for i in range(MAX_CLASSES + 1)],
        rf"{MAX_CLASSES + 1} classes requested, more than the maximum of {MAX_CLASSES}",
    ),
    "empty class name": (_image, ["cat", ""], r"class name 1 .* is empty or blank"),
    "whitespace-only class name": (_image, ["cat", " \t  "], r"class name 1 .* is empty or blank"),
    "commas-only class name": (_image, ["cat", " , ,  "], r"class name 1 .* is empty or blank"),
    "duplicate class names": (_image, ["cat", "wall", "Cat "], r"class names 0 and 2 .* are the same class"),
    "non-UTF-8 class name": (_image, ["cat", b"\xff\xfe caf\xe9"], r"class name 1 is not valid UTF-8"),
    "class name over the byte limit": (
        _image,
        ["cat", "x" * (LIMITS.max_name_bytes + 1)],
        rf"{LIMITS.max_name_bytes + 1} bytes long, more than the limit of {LIMITS.max_name_bytes} bytes",
    ),
    "class name over CLIP's 77 tokens": (
        _image,
        ["cat", " ".join(["q"] * 100)],
        rf"makes a prompt of \d+ tokens; CLIP reads at most {CONTEXT_LENGTH}",
    ),
}
# Refused by Triton before any step runs: the follow-up good request (10 s of CPU each) is left out
# for them, since no step of ours saw the request; readiness is still checked.
REFUSED_BY_TRITON = {"float32 image", "grey image (rank 2)", "batch of images (rank 4)", "four channels"}
assert set(BAD_REQUESTS) >= REFUSED_BY_TRITON, REFUSED_BY_TRITON
# The follow-up good request goes to catseg, the cheaper ensemble (both share the edge step's code;
# escnet's readiness is checked after each refusal).
GOOD_REQUEST = ("catseg", "chelsea", ["cat", "wall"])


@pytest.fixture(scope="module")
def good_answer(triton_server: Any) -> dict[str, np.ndarray | None]:
    client = httpclient.InferenceServerClient(url=triton_server.http_url, network_timeout=CLIENT_TIMEOUT_S)
    try:
        ensemble, image_name, names = GOOD_REQUEST
        return infer(client, ensemble, photo(image_name), names)
    finally:
        client.close()


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_refused_and_the_server_carries_on(
    case: str, triton_server: Any, http_client: Any, grpc_client: Any, good_answer: dict
) -> None:
    make_image, names, message = BAD_REQUESTS[case]
    for client, ensemble in itertools.product((http_client, grpc_client), DEFAULT_VARIANTS):
        with pytest.raises(InferenceServerException, match=message) as error:
            infer(client, ensemble, make_image(), names)
        message_text = error.value.message()
        status = str(error.value.status())
        print(f"\n{case} ({ensemble}, {type(client).__module__}, {status}): {message_text[:300]}")
        assert len(message_text) < 1000, "the refusal echoes the request"
        # The client's fault, in the status a client acts on: never INTERNAL / 500.
        grpc = isinstance(client, grpcclient.InferenceServerClient)
        assert status == ("StatusCode.INVALID_ARGUMENT" if grpc else "400"), status
    assert http_client.is_server_ready()
    assert all(http_client.is_model_ready(ensemble) for ensemble in DEFAULT_VARIANTS)
    if case in REFUSED_BY_TRITON:
        return
    ensemble, image_name, good_names = GOOD_REQUEST
    answer = infer(http_client, ensemble, photo(image_name), good_names)
    np.testing.assert_array_equal(answer[LABELS.name], good_answer[LABELS.name])
    assert triton_server.running
