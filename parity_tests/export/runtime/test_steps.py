"""The served Python steps (escnet_export.runtime.steps, numpy only) against the PyTorch reference they
stand in for: labels and prompts exactly, everything else within the tolerance table.

The views and pseudo points have their own detailed tests (test_numpy_views.py,
test_numpy_pseudo_points.py); here the steps as the chain calls them, on real photos, both
protocols, and the text fold on both synonym rules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity_support import assert_runs_without_torch

from escnet.config import PROTOCOLS
from escnet.image_views import make_views, merge_views
from escnet.pseudo_prompts import generate_pseudo_prompts
from escnet.registry import MODEL_CONFIGS
from escnet.text_prompts import class_text_embeddings
from escnet.view_plan import ViewPlan, resize_shortest_edge
from escnet_export.parity import TOLERANCES, compare_arrays
from escnet_export.runtime import steps
from escnet_export.runtime.numpy_views import class_labels

skimage_data = pytest.importorskip("skimage.data")
CONFIG = MODEL_CONFIGS["escnet_vitb16_384"]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("photo", ["chelsea", "astronaut", "hubble_deep_field"])
def test_preprocess_and_postprocess_match_the_reference(protocol: str, photo: str) -> None:
    config = CONFIG.with_protocol(PROTOCOLS[protocol])
    image = getattr(skimage_data, photo)()
    out = steps.preprocess(image, config)
    plan = ViewPlan.decode(out["VIEW_PLAN"])
    reference = make_views(
        torch.from_numpy(resize_shortest_edge(image, config.protocol)), plan, config
    ).numpy()
    assert out["IMAGES"].dtype == np.float32 and out["IMAGES"].shape == reference.shape
    views = compare_arrays("IMAGES", out["IMAGES"], reference, TOLERANCES["numpy_steps"])
    assert views, str(views)
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((plan.num_views, 7, 96, 96)) * 3).astype(np.float32)
    served = steps.postprocess(logits, out["VIEW_PLAN"])
    expected = merge_views(torch.from_numpy(logits), plan).numpy()
    scores = compare_arrays("SCORES", served["SCORES"], expected, TOLERANCES["numpy_steps"])
    assert scores, str(scores)
    assert served["LABELS"].dtype == np.int32 and served["LABELS"].shape == image.shape[:2]
    # Labels exactly: the step's labels are the first-class argmax of its own probabilities.
    np.testing.assert_array_equal(served["LABELS"], served["SCORES"].argmax(axis=0))


@pytest.mark.parametrize("classes", [1, 2, 150])
def test_class_labels_equal_argmax_over_classes(classes: int) -> None:
    probabilities = np.random.default_rng(classes).random((classes, 37, 53), dtype=np.float32)
    labels = class_labels(probabilities)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=0))


def test_class_labels_take_the_first_class_on_ties() -> None:
    # Quantised values make many exact ties between classes, as saturated sigmoids do.
    probabilities = np.round(np.random.default_rng(0).random((20, 64, 64), dtype=np.float32) * 4) / 4
    np.testing.assert_array_equal(class_labels(probabilities), probabilities.argmax(axis=0))
    np.testing.assert_array_equal(class_labels(np.ones((5, 3, 3), np.float32)), np.zeros((3, 3), np.int32))


def test_pseudo_points_step_is_the_reference_to_the_bit() -> None:
    score = (np.random.default_rng(3).standard_normal((2, 6, 24, 24)) * 2).astype(np.float32)
    out = steps.pseudo_points(score, CONFIG)
    prompts = generate_pseudo_prompts(torch.from_numpy(score).reshape(12, 24, 24), image_size=384)
    np.testing.assert_array_equal(out["POINTS"], prompts.points.reshape(2, 6, -1, 2).float().numpy())
    np.testing.assert_array_equal(out["POINT_LABELS"], prompts.labels.reshape(2, 6, -1).float().numpy())
    np.testing.assert_array_equal(out["PSEUDO_MASK"], prompts.mask.reshape(2, 6, 24, 24).float().numpy())


@pytest.mark.parametrize("rule", ["first", "average"])
def test_text_embeddings_fold_like_the_reference(rule: str) -> None:
    names = ["road, street", "tree", "sofa, couch, settee", "bag", "bag, handbag"]
    tokenizer = steps.clip_tokenizer(CONFIG)
    table = torch.nn.functional.normalize(
        torch.randn(64, 8, generator=torch.Generator().manual_seed(1)), dim=-1
    )

    def encode(tokens: np.ndarray) -> np.ndarray:  # a fixed, normalised "encoder" of the token ids
        return table[torch.from_numpy(tokens.astype(np.int64)).sum(dim=1) % 64].numpy()

    served = steps.text_embeddings(names, tokenizer, encode, ["A photo of a {} in the scene"], rule)
    expected = class_text_embeddings(
        names,
        lambda texts: torch.from_numpy(tokenizer(texts).astype(np.int64)),
        lambda tokens: torch.from_numpy(encode(tokens.numpy())),
        ["A photo of a {} in the scene"],
        rule,
    ).numpy()
    assert served.shape == (5, 1, 8)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)
    if rule == "first":  # one text per class: the encoder's vectors as they are, "bag" twice
        np.testing.assert_array_equal(served[3], served[4])


def test_the_served_steps_import_no_torch() -> None:
    """Every Python-backend model (with a stand-in for the backend's own utilities module)."""
    assert_runs_without_torch(
        "import sys, types\n"
        "sys.modules['triton_python_backend_utils'] = types.ModuleType('triton_python_backend_utils')\n"
        "import escnet_export.triton_serving.step_models.preprocess\n"
        "import escnet_export.triton_serving.step_models.text_embedder\n"
        "import escnet_export.triton_serving.step_models.pseudo_points\n"
        "import escnet_export.triton_serving.step_models.postprocess\n"
        "import escnet_export.triton_serving.step_models.onnx_graph, escnet_export.triton_serving.configs\n"
    )
