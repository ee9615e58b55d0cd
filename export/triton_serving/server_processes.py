"""The processes of a running tritonserver, read from /proc: which step each one serves, whether it
is alive, and how much memory it holds.

Each Python-backend model instance is its own ``triton_python_backend_stub`` process, a child of
tritonserver, started as ``stub <repository>/<model>/1/model.py <shm region> ... <instance name>
...``; the model's name is the folder above its version folder. Standard library only (Linux), so
the server launcher and the step watchdog run it without the project's dependencies.

Memory figures:

- RSS counts every page a process maps, shared library pages included, once per process;
- PSS (proportional set size, /proc/<pid>/smaps_rollup) divides each shared page among the
  processes that map it, so the PSS of all the server's processes adds up to what they hold;
- the peak RSS (VmHWM) can be reset (``echo 5 > /proc/<pid>/clear_refs``), which is how a benchmark
  measures one request's peak per step.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
PROC = Path("/proc")


@dataclass(frozen=True)
class StepProcess:
    """One process of the server: tritonserver itself (model ``""``) or a Python step's stub."""

    pid: int
    model: str  # Triton model name, "" for tritonserver itself
    instance: str  # model instance name (``catseg_prep_0_0``), "" for tritonserver

    @property
    def label(self) -> str:
        return self.instance or "tritonserver"


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...


def is_alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie, not yet reaped by its parent, is dead)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _step_of(pid: int) -> StepProcess | None:
    """The stub's model and instance from its command line, or None for another process."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not argv or not argv[0].endswith(STUB_NAME.encode()) or len(argv) < 9:
        return None
    model_py = Path(argv[1].decode(errors="replace"))  # <repository>/<model>/<version>/model.py
    return StepProcess(pid=pid, model=model_py.parent.parent.name, instance=argv[8].decode(errors="replace"))


def server_processes(server_pid: int, *, include_dead: bool = False) -> list[StepProcess]:
    """tritonserver and the stubs of its Python steps (alive ones unless ``include_dead``)."""
    processes = [StepProcess(pid=server_pid, model="", instance="")]
    for child in _children(server_pid):
        step = _step_of(child)
        if step is not None and (include_dead or is_alive(child)):
            processes.append(step)
    return processes


def step_pids(server_pid: int) -> dict[str, set[int]]:
    """Model name -> pids of its live stub processes (one per instance)."""
    models: dict[str, set[int]] = {}
    for process in server_processes(server_pid)[1:]:
        models.setdefault(process.model, set()).add(process.pid)
    return models


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (0 when it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def shm_region_bytes(pid: int) -> int:
    """Size of a stub's shared-memory region (/dev/shm/<name>, the stub's second argument).

    The Python backend grows a stub's region to fit the largest tensors it has exchanged and
    never shrinks it (tritonserver 2.51), so after a request with many classes it holds that
    request's inputs and outputs; PSS counts it half in the stub, half in tritonserver."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        return (Path("/dev/shm") / argv[2].decode()).stat().st_size
    except (OSError, IndexError, UnicodeDecodeError):
        return 0


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the highest RSS since the process started or since :func:`reset_peak_rss`."""
    return _status_kib(pid, "VmHWM") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Set the process's VmHWM back to its current RSS (Linux >= 4.0; needs write access)."""
    with contextlib.suppress(OSError):
        (PROC / str(pid) / "clear_refs").write_text("5")
        return True
    return False


def pss_bytes(pid: int) -> int:
    """Proportional set size: private pages plus each shared page divided by its sharers."""
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# The memory cgroup's limit and usage files (v2, then v1); a limit of "max" or ~2^63 is no limit.
CGROUP_MEMORY = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _cgroup_memory() -> tuple[int, int] | None:
    """(limit, usage) in bytes of the process's memory cgroup, or None where it has no limit."""
    for limit_path, usage_path in CGROUP_MEMORY:
        with contextlib.suppress(OSError, ValueError):
            limit = Path(limit_path).read_text().strip()
            if limit.isdigit() and 0 < int(limit) < (1 << 60):
                return int(limit), int(Path(usage_path).read_text().strip())
    return None


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup's limit when the process runs under a smaller one."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroup = _cgroup_memory()
    return min(total, cgroup[0]) if cgroup else total


def available_memory_bytes() -> int:
    """Memory a new allocation can still get now: the kernel's MemAvailable, or less where the
    process runs under a cgroup limit (the limit minus the cgroup's usage). Shared-memory regions
    held by the steps count as used."""
    available = 0
    with contextlib.suppress(OSError, ValueError):
        for line in (PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    cgroup = _cgroup_memory()
    return min(available, max(0, cgroup[0] - cgroup[1])) if cgroup else available
