"""Client pieces that need no server: class strings, image loading, palette, pictures, errors,
shared memory regions, and the command line's refusals (bad arguments, unreadable image, no server)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from client_kinds import EitherClient
from parity_support import assert_runs_without_torch
from PIL import Image
from tritonclient.utils import InferenceServerException

from escnet_client import (
    BadRequest,
    ImageReadError,
    RequestTimeout,
    SegmentationError,
    SegmentationResult,
    ServerUnavailable,
    class_color,
    labels_image,
    load_image,
    palette,
    parse_classes,
    read_classes_file,
    render_legend,
    render_overlay,
)
from escnet_client.errors import translate_error
from escnet_client.policy import ClientPolicy, run_sync
from escnet_client.shm import REGION_PREFIX, RequestRegions, is_in_use_error
from escnet_client.wire import VOCABULARY_HEADER, normalize_url, prepare_request, vocabulary_key
from escnet_export.contract import LABELS, SCORES
from escnet_export.triton_serving.server import free_port

CLI = [sys.executable, "-m", "escnet_client.cli"]


def rgb_image(height: int = 24, width: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def result_for(labels: np.ndarray, names: list[str]) -> SegmentationResult:
    return SegmentationResult(labels=labels.astype(np.int32), class_names=names)


# -- classes -----------------------------------------------------------------------------------------


def test_class_string_splits_at_semicolons_and_keeps_synonyms() -> None:
    assert parse_classes(" cat; sofa, couch ;traffic cone; ") == ["cat", "sofa, couch", "traffic cone"]
    assert parse_classes("sofa, couch") == ["sofa, couch"]  # commas never split classes


def test_class_list_is_stripped_and_kept_in_order() -> None:
    assert parse_classes(["  wall", "sofa, couch", "cat"]) == ["wall", "sofa, couch", "cat"]
    assert parse_classes(("cat",)) == ["cat"]


@pytest.mark.parametrize("classes", ["", " ; ;", [], ()])
def test_empty_class_list_is_refused(classes: object) -> None:
    with pytest.raises(ValueError, match="class list is empty"):
        parse_classes(classes)  # type: ignore[arg-type]


def test_non_string_class_is_refused() -> None:
    with pytest.raises(ValueError, match="not a string"):
        parse_classes(["cat", 3])  # type: ignore[list-item]


def test_classes_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("# furniture\nsofa, couch\n\ncat; dog\n  wall  \n")
    assert read_classes_file(path) == ["sofa, couch", "cat", "dog", "wall"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="names no class"):
        read_classes_file(tmp_path / "empty.txt")


# -- images ------------------------------------------------------------------------------------------


def test_every_image_form_gives_the_same_rgb_array(tmp_path: Path) -> None:
    pixels = rgb_image()
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    for form in (path, str(path), encoded.getvalue(), Image.fromarray(pixels), pixels):
        loaded = load_image(form)
        assert loaded.dtype == np.uint8 and loaded.shape == (24, 32, 3) and loaded.flags.c_contiguous
        np.testing.assert_array_equal(loaded, pixels)


def test_rgba_grey_and_palette_images_become_rgb(tmp_path: Path) -> None:
    pixels = rgb_image()
    alpha = np.full(pixels.shape[:2] + (1,), 77, dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([pixels, alpha], axis=2))
    rgba.save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), pixels)  # alpha dropped
    np.testing.assert_array_equal(load_image(rgba), pixels)

    grey = Image.fromarray(pixels[:, :, 0])  # mode L
    assert np.array_equal(load_image(grey), np.repeat(pixels[:, :, :1], 3, axis=2))

    paletted = Image.fromarray(pixels).convert("P")
    expected = np.asarray(paletted.convert("RGB"))
    np.testing.assert_array_equal(load_image(paletted), expected)


def test_non_contiguous_array_is_accepted() -> None:
    pixels = rgb_image(24, 64)[:, ::2]
    loaded = load_image(pixels)
    assert loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, pixels)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((8, 8, 3), dtype=np.float32), "dtype float32"),
        (np.zeros((8, 8), dtype=np.uint8), r"shape \[8, 8\]"),
        (np.zeros((8, 8, 4), dtype=np.uint8), r"shape \[8, 8, 4\]"),
        (np.zeros((0, 8, 3), dtype=np.uint8), "empty"),
    ],
)
def test_wrong_arrays_are_refused(array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_image(array)


def test_unreadable_images_are_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="cannot be read"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="cannot be decoded"):
        load_image(b"\x00\x01garbage")
    with pytest.raises(TypeError):
        load_image(42)  # type: ignore[arg-type]


def test_sdk_refuses_bad_input_before_sending(either_client: EitherClient) -> None:
    """Nothing listens on the port: a ValueError (not ServerUnavailable) proves nothing was sent."""
    with either_client.open(f"127.0.0.1:{free_port()}") as client:
        with pytest.raises(ValueError, match="uint8"):
            client.segment(np.zeros((8, 8, 3), dtype=np.float64), ["cat"])
        with pytest.raises(ValueError, match="class list is empty"):
            client.segment(rgb_image(), " ; ")
        with pytest.raises(ServerUnavailable, match="unreachable"):
            client.segment(rgb_image(), ["cat"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_with_shared_memory_leaves_no_region(
    either_client: EitherClient, protocol: str
) -> None:
    """Registering the regions fails (nobody listens): every attempt destroys its own regions."""
    mine = f"{REGION_PREFIX}_{os.getpid()}_"
    with (
        either_client.open(
            f"127.0.0.1:{free_port()}", protocol=protocol, retries=1, retry_backoff_s=0.01, timeout_s=5
        ) as client,
        pytest.raises(ServerUnavailable, match="unreachable|unavailable"),
    ):
        client.segment(rgb_image(), ["cat", "dog"], scores=True, use_shared_memory=True)
    assert [name for name in os.listdir("/dev/shm") if name.startswith(mine)] == []


def test_both_clients_are_one_policy(either_client: EitherClient) -> None:
    """Same settings, same names; the blocking client's policy coroutines never suspend."""
    assert issubclass(either_client.cls, ClientPolicy)
    client = either_client.cls("example", protocol="grpc", use_shared_memory=True)
    assert (client.url, client.protocol, client.use_shared_memory) == ("example:8001", "grpc", True)
    assert repr(client) == f"{either_client.cls.__name__}(url='example:8001', protocol='grpc')"


def test_run_sync_refuses_a_coroutine_that_suspends() -> None:
    async def suspends() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="suspended"):
        run_sync(suspends())
    assert run_sync(_done(7)) == 7


async def _done(value: int) -> int:
    return value


# -- results and pictures ------------------------------------------------------------------------------


def test_class_shares_cover_every_class_and_sum_to_one() -> None:
    labels = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    result = result_for(labels, ["cat", "sofa, couch", "wall"])
    assert result.class_shares() == {"cat": 0.25, "sofa, couch": 0.75, "wall": 0.0}
    assert [name for _, name, _ in result.present_classes()] == ["sofa, couch", "cat"]
    assert result_for(labels, ["cat", "cat", "x"]).class_shares() == {"cat": 1.0, "x": 0.0}
    summary = result.to_dict()
    assert summary["height"] == 2 and summary["width"] == 4 and json.dumps(summary)


def test_palette_is_deterministic_and_distinct() -> None:
    assert np.array_equal(palette(12), palette(40)[:12])
    assert [class_color(i) for i in range(5)] == [class_color(i) for i in range(5)]
    colours = palette(64)
    assert colours.dtype == np.uint8 and colours.shape == (64, 3)
    assert len({tuple(c) for c in colours.tolist()}) == 64
    assert all(np.abs(colours[i].astype(int) - colours[i + 1]).sum() > 60 for i in range(63))


def test_render_overlay_blends_and_adds_a_legend() -> None:
    pixels = rgb_image(40, 60)
    labels = np.zeros((40, 60), dtype=np.int32)
    labels[:, 30:] = 2
    result = result_for(labels, ["cat", "dog", "wall"])

    picture = render_overlay(pixels, result, alpha=0.5)
    legend = render_legend(result)
    assert picture.mode == "RGB"
    assert picture.size == (60 + legend.width, max(40, legend.height))

    plain = np.asarray(render_overlay(pixels, result, alpha=0.0))
    np.testing.assert_array_equal(plain[:40, :60], pixels)
    colours = np.asarray(render_overlay(pixels, result, alpha=1.0))[:40, :60]
    np.testing.assert_array_equal(colours, palette(3)[labels])

    one_class = render_legend(result_for(np.zeros((4, 4)), ["cat", "dog", "wall"]))
    assert legend.height > one_class.height  # only the classes present are listed


def test_render_overlay_refuses_a_mismatched_image() -> None:
    with pytest.raises(ValueError, match="does not match"):
        render_overlay(rgb_image(10, 10), result_for(np.zeros((12, 10)), ["cat"]))


@pytest.mark.parametrize("num_classes", [3, 300])
def test_labels_png_keeps_the_indices(num_classes: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, num_classes, size=(20, 30)).astype(np.int32)
    path = tmp_path / "labels.png"
    labels_image(labels, num_classes).save(path)
    with Image.open(path) as reread:
        assert reread.mode == ("P" if num_classes <= 256 else "I;16")
        np.testing.assert_array_equal(np.asarray(reread).astype(np.int32), labels)


# -- transport ---------------------------------------------------------------------------------------


def test_urls_are_normalised() -> None:
    assert normalize_url(None, "http") == "127.0.0.1:8000"
    assert normalize_url(None, "grpc") == "127.0.0.1:8001"
    assert normalize_url("http://example:9000/", "http") == "example:9000"
    assert normalize_url("example", "grpc") == "example:8001"
    assert normalize_url("[::1]", "http") == "[::1]:8000"
    assert normalize_url("[::1]:9000", "http") == "[::1]:9000"
    with pytest.raises(ValueError, match="protocol"):
        normalize_url(None, "websocket")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InferenceServerException("unexpected shape for input 'IMAGE'", status="400"), BadRequest),
        (InferenceServerException("x", status="StatusCode.INVALID_ARGUMENT"), BadRequest),
        (
            InferenceServerException("in ensemble 'escnet', t: bad request: class name ',,' is empty", "500"),
            BadRequest,
        ),
        (InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE"), ServerUnavailable),
        (
            InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"),
            RequestTimeout,
        ),
        (ConnectionRefusedError(111, "Connection refused"), ServerUnavailable),
        (TimeoutError("timed out"), RequestTimeout),
        (InferenceServerException("onnxruntime failed", status="500"), SegmentationError),
    ],
)
def test_transport_errors_become_segmentation_errors(error: Exception, kind: type) -> None:
    translated = translate_error(error, url="host:1")
    assert type(translated) is kind
    if isinstance(error, InferenceServerException) and kind is not ServerUnavailable:
        assert error.message() in translated.message  # the server's own words are kept


def test_in_use_refusal_is_recognised() -> None:
    refusal = InferenceServerException("Cannot unregister shared memory region 'r', it is currently in use.")
    assert is_in_use_error(refusal)
    assert not is_in_use_error(InferenceServerException("Unable to find shared memory region: 'r'"))


def test_shared_memory_regions_are_created_and_destroyed() -> None:
    image = rgb_image(16, 20)
    regions = RequestRegions.plan(image.shape, num_classes=3, scores=True)
    assert {r.name for r in regions.all} == {regions.image.name, *(r.name for r in regions.outputs.values())}
    assert regions.image.byte_size == 16 * 20 * 3
    assert regions.outputs[LABELS.name].byte_size == 16 * 20 * 4
    assert regions.outputs[SCORES.name].byte_size == 3 * 16 * 20 * 4
    try:
        regions.create(image)
        for region in regions.all:
            assert region.name.startswith(f"{REGION_PREFIX}_{os.getpid()}_")
            assert os.path.exists(f"/dev/shm{region.key}")
        assert regions.read(LABELS.name, np.int32, [16, 20]).shape == (16, 20)
        with pytest.raises(ValueError, match="does not fit"):
            regions.read(LABELS.name, np.int32, [17, 20])
    finally:
        regions.destroy()
    assert not any(os.path.exists(f"/dev/shm{region.key}") for region in regions.all)
    assert RequestRegions.plan(image.shape, 3, False).image.name != regions.image.name  # unique names


@pytest.mark.parametrize("modules", ["escnet_client, escnet_client.cli", "escnet_client.evaluate_cli"])
def test_client_imports_no_model_code(modules: str) -> None:
    """The SDK, the segment CLI and escnet-evaluate load no torch, onnxruntime or model code (the
    evaluation's reference backend imports them only when it is built)."""
    code = (
        f"import sys, {modules}\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'open_clip') if m in sys.modules]\n"
        "heavy += [m for m in sys.modules if m.startswith('escnet.') and m != 'escnet.config']\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# Modules the client's lean install (pip install '.[client]') lacks: importing one fails here.
_BLOCK_MODEL_PACKAGES = """
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {"torch", "torchvision", "open_clip", "segment_anything", "onnx", "onnxruntime"}
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the client install)", name=name)
        return None
sys.meta_path.insert(0, Blocked())
"""


def test_every_client_module_imports_with_torch_unimportable() -> None:
    """What ``pip install '.[client]'`` gives is enough: every escnet_client module (the SDK, the
    policy, both command lines) imports while torch, onnx and the model packages cannot be."""
    assert_runs_without_torch(
        _BLOCK_MODEL_PACKAGES
        + "import escnet_client, escnet_client.sdk, escnet_client.async_sdk, escnet_client.policy\n"
        + "for module in pkgutil.iter_modules(escnet_client.__path__):\n"
        + "    importlib.import_module(f'escnet_client.{module.name}')\n"
        + "print(sorted(m.name for m in pkgutil.iter_modules(escnet_client.__path__)))\n"
    )


# -- command line without a server ---------------------------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("segment: ")
    return lines[0]


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "image.png"
    Image.fromarray(rgb_image()).save(path)
    return path


def test_cli_empty_classes_exit_2(image_file: Path) -> None:
    port = free_port()  # never reached: the classes are refused first
    for args in (["--classes", " ; "], [], ["--classes", ""]):
        done = run_cli(image_file, *args, "--url", f"127.0.0.1:{port}")
        assert done.returncode == 2, done.stderr
        assert "class" in one_line_error(done)


def test_cli_bad_arguments_exit_2(image_file: Path) -> None:
    done = run_cli(image_file, "--classes", "cat", "--protocol", "smtp")
    assert done.returncode == 2
    assert "invalid choice" in one_line_error(done)
    done = run_cli(image_file, "--classes-file", image_file.parent / "missing.txt")
    assert done.returncode == 2
    assert "cannot read classes file" in one_line_error(done)


def test_cli_unreadable_image_exit_3(image_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    for path in (broken, tmp_path / "missing.png"):
        done = run_cli(image_file, path, "--classes", "cat", "--url", f"127.0.0.1:{free_port()}")
        assert done.returncode == 3, done.stderr
        assert str(path) in one_line_error(done)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cli_server_down_exit_4(image_file: Path, protocol: str) -> None:
    url = f"127.0.0.1:{free_port()}"
    done = run_cli(
        image_file, "--classes", "cat; dog", "--url", url, "--protocol", protocol, "--timeout", "10"
    )
    assert done.returncode == 4, done.stderr
    line = one_line_error(done)
    assert url in line and ("unreachable" in line or "unavailable" in line)
    assert done.stdout == ""


def test_every_request_names_its_vocabulary_for_routing() -> None:
    """The escnet-vocabulary header: the same names in any order, the same key; other names, another."""
    image = np.zeros((32, 32, 3), np.uint8)
    request = prepare_request(image, "cat; sofa, couch; wall", scores=False, model="escnet")
    key = request.headers[VOCABULARY_HEADER]
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == vocabulary_key(["wall", "cat", "sofa, couch"])
    assert key != vocabulary_key(["wall", "cat", "sofa"])
    assert key != vocabulary_key(["wall", "cat"])
