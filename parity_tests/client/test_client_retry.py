"""The SDK retries a segment call the server could not take, a bounded number of times, with backoff:
the blocking and the asyncio client alike (one policy, escnet_client.policy; ``either_client``).

A restarting server is played by a TCP forwarder in front of the session's tritonserver: closed
(connection refused) until a timer opens it, then closed again with its live connections cut (the
client's kept-alive HTTP connection dies as it does when the server restarts) and reopened. Nothing
is mocked: the answers come from the real server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

import numpy as np
import pytest
from client_kinds import EitherClient

from escnet_client import (
    BadRequest,
    RequestTimeout,
    SegmentationClient,
    SegmentationError,
    ServerUnavailable,
)
from escnet_client.policy import DEFAULT_RETRIES, DEFAULT_RETRY_BACKOFF_S, is_retried
from escnet_client.sdk import MAX_RETRY_WAIT_S, retry_waits
from escnet_export.triton_serving.server import TritonServer, free_port

MODEL = "catseg"  # the cheaper ensemble


class Forwarder:
    """127.0.0.1:<port> -> 127.0.0.1:<target_port>, opened and closed at will (one thread per pipe)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """Stop listening and cut every live connection."""
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone leaves the port listening
            with_suppressed_close(self._listener)
            self._listener = None
        with self._lock:
            for connection in self._connections:
                with_suppressed_close(connection)
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with_suppressed_close(sink)


def with_suppressed_close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()


def test_retry_waits_double_and_are_capped() -> None:
    assert retry_waits(3, 0.5) == [0.5, 1.0, 2.0]
    assert retry_waits(0, 0.5) == []
    assert max(retry_waits(10, 1.0)) == MAX_RETRY_WAIT_S
    with pytest.raises(ValueError, match="retries"):
        SegmentationClient("127.0.0.1:1", retries=-1)


def test_both_clients_take_the_same_retry_settings(either_client: EitherClient) -> None:
    client = either_client.cls("127.0.0.1:1")
    assert (client.retries, client.retry_backoff_s) == (DEFAULT_RETRIES, DEFAULT_RETRY_BACKOFF_S)
    tuned = either_client.cls("127.0.0.1:1", retries=5, retry_backoff_s=0.1)
    assert (tuned.retries, tuned.retry_backoff_s) == (5, 0.1)
    for bad in ({"retries": -1}, {"retry_backoff_s": -0.5}):
        with pytest.raises(ValueError, match="retries"):
            either_client.cls("127.0.0.1:1", **bad)
    with pytest.raises(ValueError, match="timeout_s"):
        either_client.cls("127.0.0.1:1", timeout_s=0)


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ServerUnavailable("server at h:1 is unreachable: Connection refused"), True),
        (ServerUnavailable("server at h:1 is unavailable: busy", status="503"), True),
        (RequestTimeout("no answer from h:1 in time", status="504"), False),  # may still be working
        (BadRequest("class name ',,' is empty", status="400"), False),
        (SegmentationError("onnxruntime failed", status="500"), False),
    ],
)
def test_only_an_unreachable_or_unavailable_server_is_retried(
    error: SegmentationError, retried: bool
) -> None:
    assert is_retried(error) is retried


def test_no_server_fails_after_the_bounded_retries(
    either_client: EitherClient, caplog: pytest.LogCaptureFixture
) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    port = free_port()  # nothing listens there
    with either_client.open(f"127.0.0.1:{port}", retries=2, retry_backoff_s=0.05, timeout_s=5) as client:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger=either_client.logger), pytest.raises(ServerUnavailable):
            client.segment(image, ["cat"])
    assert time.monotonic() - started >= 0.15 - 0.01  # 0.05 + 0.1
    assert [r.getMessage().count("retry") for r in caplog.records] == [1, 1]
    assert {r.name for r in caplog.records} == {either_client.logger}


def test_no_retry_when_retries_is_zero(either_client: EitherClient, caplog: pytest.LogCaptureFixture) -> None:
    with (
        either_client.open(f"127.0.0.1:{free_port()}", retries=0, timeout_s=5) as client,
        caplog.at_level(logging.WARNING, logger=either_client.logger),
        pytest.raises(ServerUnavailable),
    ):
        client.segment(np.zeros((16, 16, 3), np.uint8), ["cat"])
    assert caplog.records == []


@pytest.mark.triton
def test_segment_is_retried_across_a_server_restart(
    either_client: EitherClient,
    triton_server: TritonServer,
    test_image: np.ndarray,
    classes: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    forwarder = Forwarder(triton_server.http_port)
    opener = threading.Timer(1.0, forwarder.open)
    try:
        with either_client.open(
            f"127.0.0.1:{forwarder.port}", protocol="http", retries=5, retry_backoff_s=0.25
        ) as client:
            opener.start()  # refused until then
            with caplog.at_level(logging.WARNING, logger=either_client.logger):
                first = client.segment(test_image, classes, model=MODEL)
            refused = len(caplog.records)
            assert refused >= 1, "the first call never met a closed port"

            forwarder.close()  # the server "restarts": the kept-alive connection dies
            opener = threading.Timer(0.6, forwarder.open)
            opener.start()
            with caplog.at_level(logging.WARNING, logger=either_client.logger):
                again = client.segment(test_image, classes, model=MODEL)
            print(
                f"\n{either_client.kind} retries: {refused} before the first answer, "
                f"{len(caplog.records) - refused} after the cut"
            )
            assert len(caplog.records) > refused, "the call after the restart needed no retry"
    finally:
        opener.cancel()
        forwarder.close()
    np.testing.assert_array_equal(again.labels, first.labels)
