"""Every image form the client takes -> one RGB array: IMAGE uint8 [H, W, 3], C-contiguous.

* a path (str or os.PathLike) or encoded bytes (PNG, JPEG, ...): decoded by PIL, turned upright by
  its EXIF orientation, converted to RGB;
* a PIL image: converted to RGB;
* a numpy array: taken as it is, and only if it is already uint8 [H, W, 3].

RGB conversion: grey (L), palette (P) and alpha (RGBA, LA, PA) images become RGB the way PIL
converts them; alpha is dropped, the colour under it kept.
"""

from __future__ import annotations

import io
import os
from typing import TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput: TypeAlias = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


class ImageReadError(ValueError):
    """An image file or buffer that cannot be read or decoded."""


def load_image(image: ImageInput) -> np.ndarray:
    """Any :data:`ImageInput` -> uint8 [H, W, 3] RGB array (a new array, except for a valid numpy input).

    Raises ImageReadError for a file or buffer that cannot be read, ValueError for a numpy array of
    the wrong dtype or shape, TypeError for anything else.
    """
    if isinstance(image, np.ndarray):
        return check_array(image)
    if isinstance(image, Image.Image):
        return pil_to_array(image)
    if isinstance(image, str | os.PathLike):
        return pil_to_array(open_image(image))
    if isinstance(image, bytes | bytearray | memoryview):
        return pil_to_array(decode_image(bytes(image)))
    raise TypeError(
        "an image is a path, encoded bytes, a PIL image or a uint8 [H, W, 3] array; "
        f"got {type(image).__name__}"
    )


def check_array(array: np.ndarray) -> np.ndarray:
    """A uint8 [H, W, 3] array (made C-contiguous), or a ValueError saying what is wrong with it."""
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 [H, W, 3], got dtype {array.dtype}")
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image array must be uint8 [H, W, 3] (RGB), got shape {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"an image array must not be empty, got shape {list(array.shape)}")
    return np.ascontiguousarray(array)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and decode an image file, upright (EXIF orientation applied)."""
    try:
        with Image.open(path) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise ImageReadError(f"image {os.fspath(path)} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"image {os.fspath(path)} cannot be read: {_reason(error)}") from None


def decode_image(data: bytes) -> Image.Image:
    """Decode an encoded image (PNG, JPEG, ...) held in memory, upright (EXIF orientation applied)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"image bytes ({len(data)} bytes) cannot be decoded: {_reason(error)}") from None


def check_image_file(path: str | os.PathLike) -> None:
    """Cheap check that a file is an image PIL can read (header only); raises ImageReadError."""
    try:
        with Image.open(path):
            pass
    except FileNotFoundError:
        raise ImageReadError(f"image {os.fspath(path)} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"image {os.fspath(path)} cannot be read: {_reason(error)}") from None


def pil_to_array(image: Image.Image) -> np.ndarray:
    """PIL image of any mode -> uint8 [H, W, 3] RGB."""
    if image.mode != "RGB":
        # Palette images may carry transparency; going through RGBA keeps PIL from warning.
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert("RGB")
    return check_array(np.asarray(image, dtype=np.uint8))


def _reason(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not an image format PIL knows"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
