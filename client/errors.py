"""The client's errors, and the translation of every transport failure into one of them.

A caller catches :class:`SegmentationError` (or one of its subclasses) whatever the protocol; the
server's own message is kept word for word in ``message``.
"""

from __future__ import annotations

import asyncio
import socket

from tritonclient.utils import InferenceServerException

# Statuses (HTTP code, or str(grpc.StatusCode)) under which the server refuses the request itself.
_REFUSED = {"400", "404", "413", "StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"}
_UNAVAILABLE = {"503", "StatusCode.UNAVAILABLE"}
_TIMED_OUT = {"504", "StatusCode.DEADLINE_EXCEEDED"}
# What a Python step of the ensemble writes before the reason of a refused request.
_BAD_REQUEST_MARK = ": bad request: "


class SegmentationError(Exception):
    """The server answered with an error, or could not be asked.

    ``message`` is the server's message as it came (or the reason the server could not be reached);
    ``status`` is the HTTP status code or gRPC status name, None when no answer came.
    """

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ServerUnavailable(SegmentationError):
    """The server is down, unreachable, not ready, or did not answer in time."""


class RequestTimeout(ServerUnavailable):
    """The server did not answer within the client's timeout."""


class BadRequest(SegmentationError):
    """The server refused the request itself (e.g. an empty class name, too many classes)."""


def translate_error(error: BaseException, *, url: str) -> SegmentationError:
    """Map an exception raised by tritonclient (HTTP, gRPC, sync or asyncio) to a SegmentationError."""
    if isinstance(error, SegmentationError):
        return error
    if isinstance(error, InferenceServerException):
        status = error.status()
        message = error.message() or str(error)
        if status in _TIMED_OUT:
            return RequestTimeout(f"no answer from {url} in time: {message}", status=status)
        if status in _UNAVAILABLE:
            return ServerUnavailable(f"server at {url} is unavailable: {message}", status=status)
        if status in _REFUSED or _BAD_REQUEST_MARK in message:
            return BadRequest(message, status=status)
        return SegmentationError(message, status=status)
    if isinstance(error, TimeoutError | asyncio.TimeoutError | socket.timeout):
        return RequestTimeout(f"no answer from {url} in time ({type(error).__name__})")
    if isinstance(error, (OSError, *_aiohttp_connection_errors())):
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return ServerUnavailable(f"server at {url} is unreachable: {reason}")
    return SegmentationError(f"request to {url} failed: {type(error).__name__}: {error}")


def _aiohttp_connection_errors() -> tuple[type[BaseException], ...]:
    try:
        import aiohttp
    except ImportError:  # tritonclient[grpc] only
        return ()
    return (aiohttp.ClientConnectionError,)
