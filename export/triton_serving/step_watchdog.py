"""Bring a dead step back: watch the server's step processes and reload a model whose process died.

Why it is needed: tritonserver 2.51's Python backend does not restart a stub process that died
(killed by the kernel's OOM killer, say): from then on every request to that model, and to the
ensembles that use it, fails with "Stub process ... is not healthy", while /v2/health/ready and
the model's own ready endpoint keep answering 200 (seen here; the stub restart of earlier releases
was removed, and model readiness reflects the stub's health only in later releases). Probes never
notice, so nothing restarts it.

What the watchdog does: every ``poll_s`` it reads /proc (server_processes.py, beside this
module). When a model that had live stub processes has lost one, and no new process replaced it (a reload by
someone else) within ``confirm_s``, it unloads the model and loads it again through the model
repository API (``POST /v2/repository/models/<model>/unload``, then ``.../load``; a load alone of
a model Triton still counts as loaded does nothing), which starts new processes for it and reloads
the ensembles that use it: 0.5 s for an aggregator on this machine. Between the two calls the
model, its ensembles and the server report not ready (strict readiness). If a model cannot be
brought back (``max_failures`` failed loads in a row), the watchdog stops trying: the model then
stays unavailable and the server not-ready, which is the signal for an orchestrator to restart it.

It also gives memory back: the Python backend grows each step's shared-memory region to the
largest tensors the step has exchanged and never shrinks it, so a request with many classes
leaves its tensors' worth of memory behind (README, Memory). When the server
has been idle (no process of it used CPU) for ``reclaim_after_s`` and a step's region exceeds
``reclaim_above_bytes``, the watchdog reloads that step in place: a load with the step's own
config and a new ``reload_token`` parameter, which Triton serves through (new instances first,
the old ones unloaded when their requests are done), and the new process starts with a fresh
region. When memory is short (less available than ``pressure_below_bytes``, by default half the
machine's: what one request may take under the auto budget), it does not wait for the whole
server to be idle: every step whose own process has been idle for ``pressure_idle_s`` gives its
region back at once, so a large request to one ensemble does not leave the next large request to
the other without room. ``reclaim_after_s = 0`` turns reclaiming off.

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
    from escnet_export.triton_serving import server_processes as proc
except ImportError:  # pragma: no cover - plain-script use
    import server_processes as proc  # type: ignore[no-redef]


@dataclass
class Recovery:
    """One reload by the watchdog: a dead step brought back, or an idle step's memory reclaimed."""

    model: str
    dead_pids: list[int]
    reloaded: bool
    seconds: float
    error: str = ""
    reason: str = "died"  # "died" or "reclaim"
    region_bytes: int = 0  # the shared-memory region given back (reclaim)


# Idle: all the server's processes together used less than this share of one core since the last
# pass. An idle server's threads (the stubs' health checks, the server's own) stay far below it;
# a request in flight keeps at least one core busy.
IDLE_CPU_SHARE = 0.1


def _log(message: str) -> None:
    print(f"step watchdog: {message}", file=sys.stderr, flush=True)


@dataclass
class StepWatchdog:
    """Watches the stub processes of a tritonserver (``server_pid``) reachable at ``http_url``."""

    server_pid: int
    http_url: str  # host:port of the HTTP endpoint
    poll_s: float = 0.5
    max_failures: int = 3
    reclaim_after_s: float = 30.0  # idle time before shared-memory regions are given back; 0: never
    reclaim_above_bytes: int = 64 << 20
    confirm_s: float = 1.0  # a lost process must stay unreplaced this long before the model is reloaded
    # Memory short (less available than this, default half the machine's: one request's auto
    # budget): a step idle for pressure_idle_s gives its region back even while others run.
    pressure_below_bytes: int = field(default_factory=lambda: proc.machine_memory_bytes() // 2)
    pressure_idle_s: float = 1.0
    log: Callable[[str], None] = _log
    recoveries: list[Recovery] = field(default_factory=list)
    _known: dict[str, set[int]] = field(default_factory=dict, repr=False)
    _failures: dict[str, int] = field(default_factory=dict, repr=False)
    _suspected: dict[str, float] = field(default_factory=dict, repr=False)  # model -> first seen lost
    _cpu: float = field(default=-1.0, repr=False)
    _step_cpu: dict[int, tuple[float, float]] = field(
        default_factory=dict, repr=False
    )  # pid -> (cpu, idle since)
    _idle_since: float = field(default_factory=time.monotonic, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # one pass at a time
    _thread: threading.Thread | None = field(default=None, repr=False)

    def snapshot(self) -> None:
        """Learn the current stubs of every model (call once the server is ready)."""
        self._known = proc.step_pids(self.server_pid)

    @property
    def watched(self) -> int:
        """How many step processes are watched."""
        return sum(len(pids) for pids in self._known.values())

    def check(self) -> list[Recovery]:
        """One pass: reload every model that lost a stub process since the last pass, then give
        back the shared memory of idle steps."""
        with self._lock:
            return self._check()

    def reclaim_now(self) -> list[Recovery]:
        """Give every grown region back at once, idle or not: for a caller that knows no request
        is in flight (a test between heavy requests)."""
        with self._lock:
            return self.reclaim(now=True)

    def _check(self) -> list[Recovery]:
        alive = proc.step_pids(self.server_pid)
        done = []
        for model, pids in sorted(self._known.items()):
            if self._failures.get(model, 0) >= self.max_failures:
                continue  # given up: the model stays unavailable, the server not-ready
            current = alive.get(model, set())
            dead = sorted(pids - current)
            if not dead:
                self._suspected.pop(model, None)
                continue
            if current - pids:  # new processes replaced it: someone reloaded the model
                self._known[model] = current
                self._suspected.pop(model, None)
                continue
            # A reload through the repository API can retire the old process a moment before the
            # new one appears: only a loss that lasts confirm_s is a death.
            first_seen = self._suspected.setdefault(model, time.monotonic())
            if time.monotonic() - first_seen < self.confirm_s:
                continue
            del self._suspected[model]
            done.append(self.reload(model, dead))
        return done + self.reclaim()

    def reclaim(self, now: bool = False) -> list[Recovery]:
        """Reload, in place, every step whose shared-memory region outgrew reclaim_above_bytes,
        once the server has been idle (under IDLE_CPU_SHARE of a core in all its processes) for
        reclaim_after_s, or at once with ``now`` (a caller that knows no request is in flight);
        largest region first."""
        if self.reclaim_after_s <= 0 and not now:
            return []
        processes = proc.server_processes(self.server_pid)
        moment = time.monotonic()
        cpu = {p.pid: proc.cpu_seconds(p.pid) for p in processes}  # read once per pass
        idle_steps = self._idle_steps(processes[1:], cpu, moment)
        if not now:
            total = sum(cpu.values())
            if self._cpu < 0 or total - self._cpu > IDLE_CPU_SHARE * self.poll_s:
                self._idle_since = moment  # something ran since the last pass
            self._cpu = total
        steps = processes[1:]
        if not now and moment - self._idle_since < self.reclaim_after_s:
            if proc.available_memory_bytes() >= self.pressure_below_bytes:
                return []
            # Memory is short while the server works: give back the regions of the steps that have
            # been idle a moment (a large request's leftovers), not those of the busy ones.
            steps = [p for p in steps if idle_steps[p.pid] >= self.pressure_idle_s]
        # The model's current processes only: one replaced by a reload still holds its old region
        # until Triton retires it, and is no reason to reload the model again.
        regions = {
            p.model: proc.shm_region_bytes(p.pid) for p in steps if p.pid in self._known.get(p.model, ())
        }
        grown = sorted(
            ((size, model) for model, size in regions.items() if size > self.reclaim_above_bytes),
            reverse=True,
        )
        done = [self.reload(model, [], reason="reclaim", region_bytes=size) for size, model in grown]
        if done:
            self._cpu = -1.0  # the reloads used CPU: measure idleness afresh
        return done

    def _idle_steps(self, steps: list, cpu: dict[int, float], moment: float) -> dict[int, float]:
        """pid -> seconds the step's process has used (almost) no CPU, from the passes so far."""
        seen = {}
        for step in steps:
            last_cpu, since = self._step_cpu.get(step.pid, (-1.0, moment))
            if last_cpu < 0 or cpu[step.pid] - last_cpu > IDLE_CPU_SHARE * self.poll_s:
                since = moment
            seen[step.pid] = (cpu[step.pid], since)
        self._step_cpu = seen
        return {pid: moment - since for pid, (_, since) in seen.items()}

    def _call(self, model: str, action: str, body: dict | None = None) -> str:
        """POST /v2/repository/models/<model>/<action>; the error text, or "" when it worked."""
        request = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/models/{model}/{action}",
            data=json.dumps(body or {}).encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                response.read()
        except urllib.error.HTTPError as failure:
            return f"{action}: HTTP {failure.code}: {failure.read().decode(errors='replace')[:300]}"
        except OSError as failure:
            return f"{action}: {failure}"
        return ""

    def _load_in_place(self, model: str) -> str:
        """Reload a live model without a gap: a load with its own config plus a new ``reload_token``
        parameter is a change to Triton, which loads the new instances, moves traffic to them and
        unloads the old ones after their requests finish (seen here: a request in flight across such
        a reload was answered)."""
        try:
            with urllib.request.urlopen(
                f"http://{self.http_url}/v2/models/{model}/config", timeout=30
            ) as response:
                config = json.loads(response.read())
        except (OSError, ValueError) as failure:
            return f"config: {failure}"
        config.setdefault("parameters", {})["reload_token"] = {"string_value": f"{time.time():.3f}"}
        return self._call(model, "load", {"parameters": {"config": json.dumps(config)}})

    def reload(self, model: str, dead: list[int], reason: str = "died", region_bytes: int = 0) -> Recovery:
        """Unload the model, load it again, and learn its new processes."""
        if reason == "died":
            self.log(f"{model}: process {', '.join(map(str, dead))} died; loading the model again")
        else:
            self.log(f"{model}: idle with {region_bytes / 2**20:.0f} MiB of shared memory; reloading it")
        before = proc.step_pids(self.server_pid).get(model, set())
        start = time.monotonic()
        if reason == "died":
            # Unload, then load: a load alone of a model Triton still counts as loaded does nothing.
            error = self._call(model, "unload") or self._call(model, "load")
        else:
            error = self._load_in_place(model)
        seconds = time.monotonic() - start
        self._known[model] = proc.step_pids(self.server_pid).get(model, set()) - before
        recovery = Recovery(
            model=model,
            dead_pids=dead,
            reloaded=not error,
            seconds=round(seconds, 2),
            error=error,
            reason=reason,
            region_bytes=region_bytes,
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
    parser.add_argument(
        "--reclaim-after",
        type=float,
        default=30.0,
        help="idle seconds before memory is given back (0: never)",
    )
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.ready_timeout
    while not _server_ready(args.http_url):
        if not proc.is_alive(args.server_pid) or time.monotonic() > deadline:
            return 0  # the server never came up: nothing to watch (serve.sh reports why)
        time.sleep(0.5)
    watchdog = StepWatchdog(
        server_pid=args.server_pid,
        http_url=args.http_url,
        poll_s=args.poll,
        reclaim_after_s=args.reclaim_after,
    )
    watchdog.snapshot()
    _log(f"watching {watchdog.watched} step processes of server {args.server_pid}")
    while proc.is_alive(args.server_pid):
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
