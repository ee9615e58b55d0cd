"""Client SDK and command line for the ESC-Net / CAT-Seg segmentation server on Triton.

    from escnet_client import SegmentationClient, render_overlay

    with SegmentationClient("127.0.0.1:8000") as client:
        result = client.segment("photo.jpg", "cat; sofa, couch; floor")  # ';' separates classes
        print(result.class_shares())
        render_overlay("photo.jpg", result).save("overlay.png")

Nothing here imports torch, onnxruntime or the model code.
"""

from escnet_client.async_sdk import AsyncSegmentationClient
from escnet_client.classes import CLASS_SEPARATOR, parse_classes, read_classes_file
from escnet_client.errors import BadRequest, RequestTimeout, SegmentationError, ServerUnavailable
from escnet_client.images import ImageInput, ImageReadError, load_image
from escnet_client.render import class_color, labels_image, palette, render_legend, render_overlay
from escnet_client.result import SegmentationResult, Timings
from escnet_client.sdk import SegmentationClient
from escnet_client.wire import DEFAULT_MODEL, DEFAULT_TIMEOUT_S, PROTOCOLS

__all__ = [
    "CLASS_SEPARATOR",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT_S",
    "PROTOCOLS",
    "AsyncSegmentationClient",
    "BadRequest",
    "ImageInput",
    "ImageReadError",
    "RequestTimeout",
    "SegmentationClient",
    "SegmentationError",
    "SegmentationResult",
    "ServerUnavailable",
    "Timings",
    "class_color",
    "labels_image",
    "load_image",
    "palette",
    "parse_classes",
    "read_classes_file",
    "render_legend",
    "render_overlay",
]
