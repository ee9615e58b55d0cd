"""Bring a dead step back: watch the server's step processes and reload a model whose process died.

Why it is needed: tritonserver 2.51's Python backend does not restart a stub process that died
(killed by the kernel's OOM killer, say): from then on every request to that model, and to the
ensembles that use it, fails with "Stub process ... is not healthy", while /v2/health/ready and
the model's own ready endpoint keep answering 200 (seen here; the stub restart of earlier releases
was removed, and model readiness reflects the stub's health only in later releases). Probes never
notice, so nothing restarts it.

What the watchdog does: every ``poll_s`` it reads /proc (escnet_export.server_processes). When a
model that had live stub processes has lost one, it asks the server to load that model again
through the model repository API (``POST /v2/repository/models/<model>/load``), which starts new
processes for it and reloads the ensembles that use it: in 0.6 s for an aggregator on this
machine. While the load runs the model is not ready, so /v2/health/ready answers 503 (strict
readiness). If a model cannot be brought back (``max_failures`` failed loads in a row), the
watchdog stops trying: the model then stays UNAVAILABLE and the server not-ready, which is the
signal for an orchestrator to restart the container.

The repository API needs ``--model-control-mode=explicit`` (with ``--load-model=*`` to load every
model at start), which the server launcher sets. Standard library only.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

try:  # as part of the package, or as a sibling module when triton_server.py runs as a plain script
    from escnet_export.server_processes import is_alive, step_pids
except ImportError:  # pragma: no cover - plain-script use
    from server_processes import is_alive, step_pids  # type: ignore[no-redef]


@dataclass
class Recovery:
    """One dead step and what the watchdog did about it."""

    model: str
    dead_pids: list[int]
    reloaded: bool
    seconds: float
    error: str = ""


def _log(message: str) -> None:
    print(f"step watchdog: {message}", file=sys.stderr, flush=True)


@dataclass
class StepWatchdog:
    """Watches the stub processes of a tritonserver (``server_pid``) reachable at ``http_url``."""

    server_pid: int
    http_url: str  # host:port of the HTTP endpoint
    poll_s: float = 0.5
    max_failures: int = 3
    log: Callable[[str], None] = _log
    recoveries: list[Recovery] = field(default_factory=list)
    _known: dict[str, set[int]] = field(default_factory=dict, repr=False)
    _failures: dict[str, int] = field(default_factory=dict, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def snapshot(self) -> None:
        """Learn the current stubs of every model (call once the server is ready)."""
        self._known = step_pids(self.server_pid)

    @property
    def watched(self) -> int:
        """How many step processes are watched."""
        return sum(len(pids) for pids in self._known.values())

    def check(self) -> list[Recovery]:
        """One pass: reload every model that lost a stub process since the last pass."""
        alive = step_pids(self.server_pid)
        done = []
        for model, pids in sorted(self._known.items()):
            if self._failures.get(model, 0) >= self.max_failures:
                continue  # given up: the model stays unavailable, the server not-ready
            dead = sorted(pids - alive.get(model, set()))
            if not dead:
                continue
            recovery = self.reload(model, dead)
            done.append(recovery)
        if done:
            self._known.update({m: p for m, p in step_pids(self.server_pid).items() if m in self._known})
        return done

    def reload(self, model: str, dead: list[int]) -> Recovery:
        self.log(f"{model}: process {', '.join(map(str, dead))} died; loading the model again")
        start = time.monotonic()
        request = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/models/{model}/load", data=b"{}", method="POST"
        )
        error = ""
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                response.read()
        except urllib.error.HTTPError as failure:
            error = f"HTTP {failure.code}: {failure.read().decode(errors='replace')[:300]}"
        except OSError as failure:
            error = str(failure)
        seconds = time.monotonic() - start
        recovery = Recovery(
            model=model, dead_pids=dead, reloaded=not error, seconds=round(seconds, 2), error=error
        )
        self.recoveries.append(recovery)
        if error:
            self._failures[model] = self._failures.get(model, 0) + 1
            given_up = self._failures[model] >= self.max_failures
            self.log(
                f"{model}: reload failed ({error})"
                + ("; giving up: the model stays unavailable and the server not ready" if given_up else "")
            )
        else:
            self._failures.pop(model, None)
            self.log(f"{model}: reloaded in {seconds:.1f} s")
        return recovery

    # -- in the background -----------------------------------------------------------------------

    def start(self) -> StepWatchdog:
        self.snapshot()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="step-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as error:  # the watchdog must outlive a bad /proc read
                self.log(f"check failed: {type(error).__name__}: {error}")


def model_ready(http_url: str, model: str) -> bool:
    """``GET /v2/models/<model>/ready`` answered 200."""
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def repository_index(http_url: str) -> list[dict]:
    """The server's model repository index (name, version, state) of every model."""
    request = urllib.request.Request(f"http://{http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main(argv: list[str] | None = None) -> int:
    """Run beside a tritonserver (scripts/serve.sh starts it): watch until the server exits."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-pid", type=int, required=True, help="the tritonserver process")
    parser.add_argument("--http-url", required=True, help="host:port of the server's HTTP endpoint")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between checks")
    parser.add_argument("--ready-timeout", type=float, default=3600, help="wait this long for readiness")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.ready_timeout
    while not _server_ready(args.http_url):
        if not is_alive(args.server_pid) or time.monotonic() > deadline:
            return 0  # the server never came up: nothing to watch (serve.sh reports why)
        time.sleep(0.5)
    watchdog = StepWatchdog(server_pid=args.server_pid, http_url=args.http_url, poll_s=args.poll)
    watchdog.snapshot()
    _log(f"watching {watchdog.watched} step processes of server {args.server_pid}")
    while is_alive(args.server_pid):
        watchdog.check()
        time.sleep(args.poll)
    return 0


def _server_ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
