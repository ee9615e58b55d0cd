"""Start and stop a Triton Inference Server for a model repository (DESIGN.md section 4).

Which ``tritonserver`` runs:

* a ``tritonserver`` on PATH (NVIDIA's container), used as it is with its own backends;
* otherwise the binary inside the nvidia-pytriton wheel of the running interpreter. That build has
  the Python backend only. Its shared libraries come from the wheel's ``nvidia_pytriton.libs``
  (LD_LIBRARY_PATH), and ``--backend-directory`` points at ``build/triton_backends/<tag>/``,
  whose ``python/`` holds symlinks to the wheel's ``libtriton_python.so``,
  ``triton_python_backend_utils.py`` and the stub built for this Python
  (``python_backend_stubs/3.X/triton_python_backend_stub``).

With the wheel the Python models run inside the running interpreter's environment (a venv
included): the stub embeds libpython and finds its prefix through the first ``python3`` on PATH,
so the interpreter's bin folder goes first on PATH, and the interpreter's own libpython folder
goes on LD_LIBRARY_PATH so the stub does not pick up another patch release of libpython
(e.g. Debian's) than the one the venv's standard library belongs to.

All of this lives here once: :class:`TritonServer` (tests, benchmarks) and ``scripts/serve.sh``
(which runs this file with ``--shell``) build the same command line and environment.

This module imports only the standard library at import time, so ``serve.sh`` can run it as a
plain script (``python export/triton_serving/server.py``) where the project is not installed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILD_REPOSITORY_COMMAND = "python -m escnet_export.triton_serving.repository"
BUILD_ENGINES_COMMAND = "python -m escnet_export.engines.build"
ONNX_FIRST_BYTE = 0x08  # protobuf tag of ModelProto field 1 (ir_version), varint

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

_SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")


class ModelRepositoryNotBuilt(RuntimeError):
    """The model repository does not exist or holds no ``<model>/config.pbtxt``."""


class BrokenModelFile(ModelRepositoryNotBuilt):
    """A graph file of the repository is empty, corrupt, or a plan built for another machine."""


# --------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------


def project_root() -> Path | None:
    """The source checkout holding this file (export/ next to pyproject.toml), if there is one."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def default_build_dir() -> Path:
    root = project_root()
    return (root if root is not None else Path.cwd()) / "build"


def default_model_repository() -> Path:
    env = os.environ.get("MODEL_REPOSITORY")
    if env:
        return Path(env)
    root = project_root()
    return (root if root is not None else Path.cwd()) / "model_repository"


def check_model_repository(model_repository: Path) -> list[str]:
    """Return the names of the models in the repository; raise ModelRepositoryNotBuilt if none."""
    repo = Path(model_repository)
    if not repo.is_dir():
        reason = "does not exist" if not repo.exists() else "is not a directory"
        raise ModelRepositoryNotBuilt(
            f"Model repository {repo} {reason}: it is not built. Build it with: {BUILD_REPOSITORY_COMMAND}"
        )
    models = sorted(d.name for d in repo.iterdir() if (d / "config.pbtxt").is_file())
    if not models:
        raise ModelRepositoryNotBuilt(
            f"Model repository {repo} is not built: no <model>/config.pbtxt in it. "
            f"Build it with: {BUILD_REPOSITORY_COMMAND}"
        )
    unbuilt = [name for name in models if _missing_graph(repo / name)]
    if unbuilt:
        listed = ", ".join(unbuilt[:4]) + (" ..." if len(unbuilt) > 4 else "")
        raise ModelRepositoryNotBuilt(
            f"Model repository {repo} is not built: no graph (1/model.onnx or 1/model.plan) for {listed}. "
            f"Build it with: {BUILD_REPOSITORY_COMMAND}"
        )
    for name in models:
        problem = _broken_graph(repo / name)
        if problem is not None:
            raise BrokenModelFile(problem)
    return models


def _graph_kind(model_dir: Path) -> str | None:
    """ "plan" (tensorrt_plan), "onnx" (an ONNX graph run by a Python model) or None (no graph)."""
    config = (model_dir / "config.pbtxt").read_text()
    if 'platform: "tensorrt_plan"' in config:
        return "plan"
    model_py = model_dir / "1" / "model.py"
    if model_py.is_file() and "onnx_graph" in model_py.read_text():
        return "onnx"
    return None


def _missing_graph(model_dir: Path) -> bool:
    """A graph model (ONNX run by a Python model, or a TensorRT plan) whose graph file is absent."""
    kind = _graph_kind(model_dir)
    if kind == "plan":
        return not (model_dir / "1" / "model.plan").is_file()
    if kind == "onnx":
        return not (model_dir / "1" / "model.onnx").exists()
    return False


def _broken_graph(model_dir: Path) -> str | None:
    """Why a present graph file cannot be served (corrupt, or a plan for another machine), or None."""
    kind = _graph_kind(model_dir)
    if kind == "onnx":
        return _onnx_problem(model_dir / "1" / "model.onnx")
    if kind == "plan":
        return _plan_problem(model_dir / "1" / "model.plan")
    return None


def _onnx_problem(path: Path) -> str | None:
    """A cheap look at an ONNX file: not empty, and a protobuf ModelProto opening with ir_version.

    onnx writes fields in number order, so every graph it serialises starts with field 1
    (ir_version, a varint: byte 0x08). A full parse happens when onnxruntime loads the graph.
    """
    fix = (
        "re-export the graph (python -m escnet_export.onnx_graphs.export), "
        f"then rebuild: {BUILD_REPOSITORY_COMMAND}"
    )
    with open(path, "rb") as handle:
        head = handle.read(2)
    if not head:
        return f"{path} (-> {path.resolve()}) is empty: {fix}"
    if head[0] != ONNX_FIRST_BYTE:
        return f"{path} (-> {path.resolve()}) is not an ONNX model (corrupt or another file): {fix}"
    return None


def _plan_problem(path: Path) -> str | None:
    """A plan against its metadata sidecar (model.plan.json, written by build_engines).

    Where this project and TensorRT are importable, ``tensorrt_engines.check_plan`` also checks the
    TensorRT version and the GPU; without TensorRT only the sidecar and the plan's sha256 are checked.
    """
    fix = f"build the engines on this machine: {BUILD_ENGINES_COMMAND} --repository {path.parents[2]}"
    sidecar = path.with_name(path.name + ".json")
    if path.stat().st_size == 0:
        return f"{path} is empty: {fix}"
    if not sidecar.is_file():
        return f"{path} has no metadata ({sidecar.name}): it was not built by this project; {fix}"
    try:
        expected = json.loads(sidecar.read_text())["plan_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{sidecar} is unreadable ({type(error).__name__}: {error}); {fix}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        return f"{path} does not match its metadata {sidecar.name} (replaced or corrupted): {fix}"
    try:
        from escnet_export.engines.plans import PlanMismatch, check_plan, tensorrt_unavailable
    except ImportError:  # serve.sh on a machine where the project is not installed
        return None
    if tensorrt_unavailable() is not None:
        return None
    try:
        check_plan(path)
    except PlanMismatch as error:
        return str(error)
    return None


@dataclass(frozen=True)
class TritonInstall:
    """Where a tritonserver binary and what it needs live.

    ``wheel_dir`` is the nvidia-pytriton package folder (site-packages/pytriton) when the binary is
    the wheel's, None for a ``tritonserver`` found on PATH (NVIDIA's container).
    """

    binary: Path
    wheel_dir: Path | None = None

    @property
    def from_wheel(self) -> bool:
        return self.wheel_dir is not None

    @property
    def libs_dir(self) -> Path | None:
        return None if self.wheel_dir is None else self.wheel_dir.parent / "nvidia_pytriton.libs"

    @property
    def python_backend_dir(self) -> Path | None:
        return None if self.wheel_dir is None else self.wheel_dir / "tritonserver" / "backends" / "python"

    @property
    def caches_dir(self) -> Path | None:
        return None if self.wheel_dir is None else self.wheel_dir / "tritonserver" / "caches"

    def stub(self, python_version: str | None = None) -> Path | None:
        if self.wheel_dir is None:
            return None
        version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        return (
            self.wheel_dir / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
        )


def find_wheel_install() -> TritonInstall:
    """The tritonserver inside the nvidia-pytriton wheel of the running interpreter."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"No tritonserver on PATH and nvidia-pytriton is not installed for {sys.executable}. "
            "Install the serving extras (pip install -e '.[serve]') or run inside NVIDIA's Triton container."
        )
    wheel_dir = Path(next(iter(spec.submodule_search_locations)))
    install = TritonInstall(binary=wheel_dir / "tritonserver" / "bin" / "tritonserver", wheel_dir=wheel_dir)
    needed = [
        install.binary,
        install.libs_dir,
        install.python_backend_dir / "libtriton_python.so",
        install.stub(),
    ]
    missing = [str(p) for p in needed if p is None or not p.exists()]
    if missing:
        raise RuntimeError(
            f"The nvidia-pytriton wheel at {wheel_dir} lacks files the server needs "
            f"(no stub for Python {sys.version_info.major}.{sys.version_info.minor}?): {', '.join(missing)}"
        )
    return install


def locate_tritonserver() -> TritonInstall:
    """A ``tritonserver`` on PATH if there is one, else the nvidia-pytriton wheel's."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(binary=Path(on_path))
    return find_wheel_install()


def _pytriton_version() -> str:
    try:
        return importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def prepare_backend_directory(install: TritonInstall, build_dir: Path | None = None) -> Path:
    """Make (idempotently) the folder given to ``--backend-directory`` for the wheel's server.

    ``<build_dir>/triton_backends/pytriton-<version>-py3X/python/`` gets symlinks to the wheel's
    Python backend and to the stub for the running Python. Returns the folder above ``python/``.
    """
    if not install.from_wheel:
        raise ValueError("only the nvidia-pytriton wheel's server needs a prepared backend directory")
    tag = f"pytriton-{_pytriton_version()}-py{sys.version_info.major}{sys.version_info.minor}"
    backend_dir = Path(build_dir or default_build_dir()).resolve() / "triton_backends" / tag
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = {
        "libtriton_python.so": install.python_backend_dir / "libtriton_python.so",
        "triton_python_backend_utils.py": install.python_backend_dir / "triton_python_backend_utils.py",
        "triton_python_backend_stub": install.stub(),
    }
    for name, source in sources.items():
        link = python_dir / name
        if link.is_symlink() and os.readlink(link) == str(source):
            continue
        # Replace atomically so that servers starting at the same time never see a missing file.
        tmp = python_dir / f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(source)
        os.replace(tmp, link)
    return backend_dir


def _python_library_dir() -> str | None:
    """The folder of this interpreter's libpython, when it is a shared library outside system dirs."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not soname or not (Path(libdir) / soname).exists():
        return None
    if any(libdir == d or libdir.startswith(d + "/") for d in _SYSTEM_LIB_DIRS):
        return None  # found there anyway; do not put system folders ahead of the caller's entries
    return libdir


def _extend_path_list(value: str | None, *, first: str | None = None, last: str | None = None) -> str:
    """Put ``first`` at the front and ``last`` at the end of a colon list, keeping its entries as is."""
    entries = [e for e in (value or "").split(os.pathsep) if e]
    if first and (not entries or entries[0] != first):
        entries.insert(0, first)
    if last and last not in entries:
        entries.append(last)
    return os.pathsep.join(entries)


MALLOC_HUGEPAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def with_malloc_hugepages(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with glibc's malloc asked to back its large blocks with transparent huge pages.

    Why: the graphs run without an onnxruntime memory arena (runners.py: an arena keeps every
    step's peak for the server's lifetime), so each run maps its large intermediate tensors afresh
    and pays one page fault per 4 KiB page. With ``glibc.malloc.hugetlb=1`` (glibc >= 2.35; THP in
    ``madvise`` or ``always`` mode) those mappings fault in 2 MiB pages: escnet's aggregator at
    T=150 ran in 1.86-2.17 s instead of 2.36-2.86 s per call on the 2-core CI machine, with the same
    peak RSS. Elsewhere the tunable is ignored. ``ESCNET_MALLOC_HUGEPAGES=0`` leaves it out (for
    before/after measurements); a GLIBC_TUNABLES that already names ``glibc.malloc.hugetlb`` wins.
    """
    env = dict(env)
    tunables = env.get("GLIBC_TUNABLES", "")
    if env.get("ESCNET_MALLOC_HUGEPAGES", "1") == "0" or "glibc.malloc.hugetlb" in tunables:
        return env
    env["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, MALLOC_HUGEPAGES_TUNABLE) if t)
    return env


def triton_environment(install: TritonInstall | None = None, base: Mapping[str, str] | None = None) -> dict:
    """Environment for the server process: ``base`` (default os.environ) plus what the wheel needs,
    and glibc's huge-page tunable for the steps' processes (``with_malloc_hugepages``)."""
    install = install or locate_tritonserver()
    env = with_malloc_hugepages(os.environ if base is None else base)
    if not install.from_wheel:
        return env  # NVIDIA's container: its server, backends and Python are set up already
    # The wheel's libraries go first; this interpreter's libpython folder goes last, which still
    # puts it ahead of the system folders (where e.g. Debian's libpython3.11 lives).
    env["LD_LIBRARY_PATH"] = _extend_path_list(
        env.get("LD_LIBRARY_PATH"), first=str(install.libs_dir), last=_python_library_dir()
    )
    # The stub's embedded Python takes its prefix (venv included) from the first python3 on PATH.
    # Not resolved: a venv's bin/python3 is a symlink to the base interpreter.
    env["PATH"] = _extend_path_list(env.get("PATH"), first=str(Path(sys.executable).parent))
    return env


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
                    from escnet_export.triton_serving.step_watchdog import StepWatchdog

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
