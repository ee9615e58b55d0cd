"""Both clients behind one blocking interface, so that one test body checks the policy they share
(escnet_client.policy): the ``either_client`` fixture of conftest.py gives an :class:`EitherClient`
per kind. Tests import it from here (helpers never come from a conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

from escnet_client import AsyncSegmentationClient, SegmentationClient
from escnet_client.policy import ClientPolicy

CLIENT_KINDS = ("sync", "async")


class EitherClient:
    """One of the two clients, driven through the blocking client's calls so that one test body
    checks both: ``open`` gives the client itself ("sync") or a view of the asyncio one ("async")
    whose every call runs in one event loop kept for the client's life (its aio connections belong
    to that loop)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.cls: type[ClientPolicy] = SegmentationClient if kind == "sync" else AsyncSegmentationClient
        self.logger = self.cls.__module__  # each client logs its retries under its module's name

    @contextlib.contextmanager
    def open(self, url: str | None = None, **settings: Any) -> Iterator[Any]:
        if self.kind == "sync":
            with SegmentationClient(url, **settings) as client:
                yield client
            return
        loop = asyncio.new_event_loop()
        client = AsyncSegmentationClient(url, **settings)
        try:
            yield _BlockingView(client, loop)
        finally:
            try:
                loop.run_until_complete(client.close())
            finally:
                loop.close()


class _BlockingView:
    """The asyncio client's coroutine methods as blocking calls; its attributes as they are."""

    def __init__(self, client: AsyncSegmentationClient, loop: asyncio.AbstractEventLoop) -> None:
        self._target = client
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return lambda *args, **kwargs: self._loop.run_until_complete(attribute(*args, **kwargs))
