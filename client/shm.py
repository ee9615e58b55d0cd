"""System shared memory for one request: the IMAGE input and the LABELS (and SCORES) outputs.

The client and the server must share a host (the regions live in /dev/shm). A request's regions
get unique names (process id and a random part), are created and written before the request,
registered with the server, and always unregistered and destroyed afterwards, including when the
request fails: callers use :meth:`RequestRegions.create` / :meth:`RequestRegions.destroy` (and
register / unregister with the server) in try/finally.

Two rules of the server shape the cleanup (both seen with tritonserver 2.51):

* it refuses to unregister a region while a request still uses it ("currently in use"), e.g. after
  the client gave up waiting (a timeout): the client retries for up to UNREGISTER_WAIT_S, so a
  timed-out shared-memory call returns only once the server is done with its regions (or logs a
  warning and leaves the registration behind);
* an ensemble answers an error as soon as one step fails, while a step running beside it may not
  have read IMAGE yet (the text embedder refuses the classes while the preprocess step is still
  queued), and the region no longer counts as in use. Unregistering it then can crash the server
  (SIGSEGV in the Python backend). So after an error answer the client waits ERROR_GRACE_S before
  unregistering.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import types
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from escnet_export.contract import IMAGE, LABELS, SCORES

log = logging.getLogger(__name__)

REGION_PREFIX = "escnet_client"
ERROR_GRACE_S = 2.0  # wait after an error answer before unregistering (see the module docstring)
UNREGISTER_WAIT_S = 120.0  # longest retrying of an unregistration the server answers "in use"
UNREGISTER_POLL_S = 0.2
_IN_USE_MARK = "in use"


def is_in_use_error(error: BaseException) -> bool:
    """The server refused to unregister a region because a request still uses it."""
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    return _IN_USE_MARK in (text or "")


@cache
def shared_memory_module() -> types.ModuleType:
    """``tritonclient.utils.shared_memory``, imported even where ``pkg_resources`` is gone.

    tritonclient 2.51 finds its libcshm.so through ``pkg_resources.resource_filename``, which newer
    setuptools no longer ship; a stand-in answering that one call is put in place for the import.
    """
    try:
        import tritonclient.utils.shared_memory as shm
    except ModuleNotFoundError as error:
        if error.name != "pkg_resources":
            raise
        stand_in = types.ModuleType("pkg_resources")
        stand_in.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stand_in
        try:
            import tritonclient.utils.shared_memory as shm
        finally:
            if sys.modules.get("pkg_resources") is stand_in:
                del sys.modules["pkg_resources"]
    return shm


def _resource_filename(package: str, resource: str) -> str:
    module = sys.modules.get(package)
    spec = module.__spec__ if module is not None else importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no package {package}")
    return str(Path(spec.origin).parent / resource)


@dataclass
class Region:
    """One system shared memory region: Triton's name for it, its /dev/shm key and size in bytes."""

    name: str
    key: str
    byte_size: int
    handle: Any = field(default=None, repr=False)  # tritonclient's handle once created
    registered: bool = False  # registered with the server


@dataclass
class RequestRegions:
    """The regions of one request: IMAGE [H, W, 3] uint8 in, LABELS [H, W] int32 (and SCORES
    [T, H, W] float32) out. Nothing exists until :meth:`create`."""

    image: Region
    outputs: dict[str, Region]

    @classmethod
    def plan(cls, image_shape: tuple[int, ...], num_classes: int, scores: bool) -> RequestRegions:
        height, width = int(image_shape[0]), int(image_shape[1])
        tag = f"{REGION_PREFIX}_{os.getpid()}_{uuid.uuid4().hex[:16]}"

        def region(tensor: str, byte_size: int) -> Region:
            name = f"{tag}_{tensor.lower()}"
            return Region(name=name, key=f"/{name}", byte_size=max(byte_size, 1))

        outputs = {LABELS.name: region(LABELS.name, height * width * 4)}
        if scores:
            outputs[SCORES.name] = region(SCORES.name, num_classes * height * width * 4)
        return cls(image=region(IMAGE.name, height * width * 3), outputs=outputs)

    @property
    def all(self) -> list[Region]:
        return [self.image, *self.outputs.values()]

    def create(self, image: np.ndarray) -> None:
        """Create every region in /dev/shm and copy ``image`` [H, W, 3] uint8 into the input region."""
        shm = shared_memory_module()
        for region in self.all:
            region.handle = shm.create_shared_memory_region(region.name, region.key, region.byte_size)
        shm.set_shared_memory_region(self.image.handle, [np.ascontiguousarray(image)])

    def read(self, tensor: str, dtype: type, shape: list[int]) -> np.ndarray:
        """A copy of an output region's contents as ``dtype`` [shape] (the region goes away later)."""
        region = self.outputs[tensor]
        needed = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if needed > region.byte_size:
            raise ValueError(f"{tensor} of shape {shape} does not fit its {region.byte_size}-byte region")
        return np.array(shared_memory_module().get_contents_as_numpy(region.handle, dtype, shape), copy=True)

    def destroy(self) -> None:
        """Unmap and unlink every region created here; never raises (problems are logged)."""
        shm = shared_memory_module()
        for region in self.all:
            if region.handle is None:
                continue
            try:
                shm.destroy_shared_memory_region(region.handle)
            except Exception as error:  # cleanup goes on for the other regions
                log.warning("could not destroy shared memory region %s: %s", region.key, error)
                with contextlib.suppress(OSError):
                    os.unlink(f"/dev/shm{region.key}")
            region.handle = None
