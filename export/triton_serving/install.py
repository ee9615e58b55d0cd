"""Where tritonserver and the project live, and the environment the server runs in.

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
(e.g. Debian's) than the one the venv's standard library belongs to. Standard library only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")


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
    ``madvise`` or ``always`` mode) those mappings fault in 2 MiB pages, faster at the same peak
    RSS (README, Performance: optimisations). Elsewhere the tunable is ignored.
    ``ESCNET_MALLOC_HUGEPAGES=0`` leaves it out (for before/after measurements); a GLIBC_TUNABLES
    that already names ``glibc.malloc.hugetlb`` wins.
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
