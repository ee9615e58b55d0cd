"""Start and stop a Triton Inference Server for a model repository (DESIGN.md section 4).

The launcher's jobs live in three modules: where tritonserver and its environment come from
(install.py), whether the repository's files are built and sound (model_files.py), and here the
command line, the process and its health. :class:`TritonServer` (tests, benchmarks) and
``scripts/serve.sh`` (which runs this file with ``--shell``) build the same command line and
environment. Standard library only at import time, so ``serve.sh`` can run this file as a plain
script (``python export/triton_serving/server.py``) where the project is not installed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # as part of the package, or as sibling modules when this file runs as a plain script
    from escnet_export.triton_serving.install import (
        TritonInstall,
        default_model_repository,
        locate_tritonserver,
        prepare_backend_directory,
        triton_environment,
    )
    from escnet_export.triton_serving.model_files import ModelRepositoryNotBuilt, check_model_repository
    from escnet_export.triton_serving.step_watchdog import StepWatchdog
except ImportError:  # pragma: no cover - plain-script use
    from install import (  # type: ignore[no-redef]
        TritonInstall,
        default_model_repository,
        locate_tritonserver,
        prepare_backend_directory,
        triton_environment,
    )
    from model_files import ModelRepositoryNotBuilt, check_model_repository  # type: ignore[no-redef]
    from step_watchdog import StepWatchdog  # type: ignore[no-redef]


# Flags every server gets (before any extra arguments, which may override them). Explicit model
# control (every model loaded at start) lets the step watchdog reload a model whose process died.
SERVER_FLAGS: tuple[str, ...] = (
    "--model-control-mode=explicit",
    "--load-model=*",
    "--strict-readiness=true",
    "--exit-on-error=true",
    "--disable-auto-complete-config",
    "--log-verbose=0",
)

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002


# --------------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def connect_host(host: str) -> str:
    """Address a client on this machine uses to reach a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def tritonserver_command(
    model_repository: Path,
    *,
    host: str = "127.0.0.1",
    http_port: int = DEFAULT_HTTP_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
    metrics_port: int = DEFAULT_METRICS_PORT,
    install: TritonInstall | None = None,
    build_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``tritonserver`` command line; checks the repository and prepares the backend folder."""
    check_model_repository(model_repository)
    install = install or locate_tritonserver()
    command = [
        str(install.binary),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        *SERVER_FLAGS,
    ]
    if install.from_wheel:
        command.append(f"--backend-directory={prepare_backend_directory(install, build_dir)}")
        command.append(f"--cache-directory={install.caches_dir}")
    command.extend(extra_args)
    return command


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_tree_rss_bytes(pid: int) -> int:
    """Sum of VmRSS of ``pid`` and its descendants (shared pages count once per process)."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue  # exited meanwhile
    return total


def _set_parent_death_signal() -> None:
    """preexec_fn: the server gets SIGTERM when the thread that started it dies (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


_ERROR_LINE = re.compile(r"^E\d{4} |UNAVAILABLE|^error:")


def log_excerpt(path: Path | None, lines: int = 40) -> str:
    """The log's error lines (model load failures are not in its last lines) and its last lines."""
    if path is None:
        return "(no log)"
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    errors = [line[:2000] for line in text if _ERROR_LINE.search(line)][-20:]
    parts = [f"Error lines of {path}:", *errors, ""] if errors else []
    return "\n".join([*parts, f"Last {lines} lines of {path}:", *text[-lines:]])


@dataclass
class TritonServer:
    """A tritonserver subprocess for tests and benchmarks; a context manager.

    Ports left at 0 get free ports at :meth:`start` (the fields then hold the ports used). Without
    ``log_path`` the server logs to a new temporary file (kept; ``log_path`` then names it).
    ``exit_timeout_s`` becomes ``--exit-timeout-secs``: on SIGTERM Triton waits that long (default
    30 s) for in-flight requests *and open HTTP client connections* (an unclosed
    tritonclient.http client keeps one) before it unloads its models and exits.
    ``kill_with_parent`` asks Linux to SIGTERM the server when the thread that started it ends, so
    that a killed test run leaves no server behind; turn it off when starting from a short-lived
    thread.
    """

    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] | None = None  # extra environment variables for the server
    build_dir: Path | None = None
    exit_timeout_s: int | None = None
    kill_with_parent: bool = True
    watchdog: bool = (
        True  # reload a model whose step process died (escnet_export.triton_serving.step_watchdog)
    )
    reclaim_after_s: float = 30.0  # the watchdog gives idle steps' shared memory back; 0: never
    startup_s: float | None = field(default=None, init=False)
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _watchdog: Any = field(default=None, init=False, repr=False)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout_s: float = 600) -> TritonServer:
        if self.running:
            raise RuntimeError(f"tritonserver already running (pid {self.pid})")
        check_model_repository(self.model_repository)  # its own message before any other problem
        install = locate_tritonserver()
        self.http_port = self.http_port or free_port(self.host or "127.0.0.1")
        self.grpc_port = self.grpc_port or free_port(self.host or "127.0.0.1")
        self.metrics_port = self.metrics_port or free_port(self.host or "127.0.0.1")
        command = tritonserver_command(
            self.model_repository,
            host=self.host,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            install=install,
            build_dir=self.build_dir,
            extra_args=[
                *([f"--exit-timeout-secs={self.exit_timeout_s}"] if self.exit_timeout_s is not None else []),
                *self.extra_args,
            ],
        )
        env = triton_environment(install)
        env.update(self.env or {})
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path = Path(self.log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_set_parent_death_signal if self.kill_with_parent else None,
            )
        atexit.register(self.stop)
        deadline = started + timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                self._forget()
                raise RuntimeError(
                    f"tritonserver exited with code {code} before it was ready.\n"
                    f"Command: {shlex.join(command)}\n{log_excerpt(self.log_path)}"
                )
            if self.is_ready():
                self.startup_s = time.monotonic() - started
                if self.watchdog:
                    self._watchdog = StepWatchdog(
                        server_pid=self._process.pid,
                        http_url=self.http_url,
                        reclaim_after_s=self.reclaim_after_s,
                    ).start()
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"tritonserver was not ready after {timeout_s:.0f} s (stopped it).\n"
                    f"Command: {shlex.join(command)}\n{log_excerpt(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM (graceful: Triton finishes in-flight requests), then SIGKILL after ``timeout_s``.

        The default waits 10 s longer than the server's own exit timeout, so that a graceful
        shutdown is not cut short.
        """
        process = self._process
        if process is None:
            return
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if timeout_s is None:
            timeout_s = (30 if self.exit_timeout_s is None else self.exit_timeout_s) + 10
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._forget()

    def _forget(self) -> None:
        self._process = None
        atexit.unregister(self.stop)

    def __enter__(self) -> TritonServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def step_watchdog(self) -> Any:
        """The running StepWatchdog (its ``recoveries``), or None."""
        return self._watchdog

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def http_url(self) -> str:
        """``host:port`` as tritonclient.http.InferenceServerClient(url=...) takes it."""
        return f"{connect_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` as tritonclient.grpc.InferenceServerClient(url=...) takes it."""
        return f"{connect_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.metrics_port}/metrics"

    def is_ready(self) -> bool:
        """Server ready (with --strict-readiness: all models ready) over HTTP; False if unreachable."""
        if not self.running:
            return False
        try:
            import tritonclient.http as httpclient
        except ImportError:  # no client library: ask the endpoint directly
            import urllib.request

            try:
                url = f"http://{self.http_url}/v2/health/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        try:
            client = httpclient.InferenceServerClient(url=self.http_url, connection_timeout=2.0)
            try:
                return bool(client.is_server_ready())
            finally:
                client.close()
        except Exception:
            return False

    def server_rss_bytes(self) -> int:
        """Resident memory (VmRSS) of the server and its child processes (Python backend stubs)."""
        if not self.running:
            raise RuntimeError("tritonserver is not running")
        return process_tree_rss_bytes(self._process.pid)

    def log_text(self) -> str:
        return "" if self.log_path is None else Path(self.log_path).read_text(errors="replace")


# --------------------------------------------------------------------------------------------------
# Command line (used by scripts/serve.sh)
# --------------------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m escnet_export.triton_serving.server",
        description="Build the tritonserver command line and environment, then run the server "
        "(default), or print them. Arguments after -- go to tritonserver.",
    )
    parser.add_argument("--model-repository", type=Path, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT, help="0: a free port")
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help="0: a free port")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="0: a free port")
    parser.add_argument("--build-dir", type=Path, default=None, help="default: <project>/build")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-command", action="store_true", help="print the command line")
    mode.add_argument("--print-env", action="store_true", help="print export lines for the environment")
    mode.add_argument(
        "--shell", action="store_true", help="print bash for eval: exports, TRITON_COMMAND=(...), ports"
    )
    return parser.parse_args(argv), extra


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = _parse_args(sys.argv[1:] if argv is None else argv)
    repo = args.model_repository or default_model_repository()
    try:
        check_model_repository(repo)  # first, so that an unbuilt repository gets its own message
        install = locate_tritonserver()
        ports = {
            name: getattr(args, name) or free_port(args.host or "127.0.0.1")
            for name in ("http_port", "grpc_port", "metrics_port")
        }
        command = tritonserver_command(
            repo, host=args.host, install=install, build_dir=args.build_dir, extra_args=extra, **ports
        )
        env = triton_environment(install)
    except ModelRepositoryNotBuilt as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    exports = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items()) if os.environ.get(k) != v]
    if args.print_command:
        print(shlex.join(command))
    elif args.print_env:
        print("\n".join(exports))
    elif args.shell:
        lines = [
            *exports,
            f"TRITON_COMMAND=({' '.join(shlex.quote(c) for c in command)})",
            f"TRITON_CONNECT_HOST={shlex.quote(connect_host(args.host))}",
            f"TRITON_HTTP_PORT={ports['http_port']}",
            f"TRITON_GRPC_PORT={ports['grpc_port']}",
            f"TRITON_METRICS_PORT={ports['metrics_port']}",
        ]
        print("\n".join(lines))
    else:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(command[0], command, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
