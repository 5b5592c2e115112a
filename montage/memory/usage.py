"""What is used against the ceiling, and how much of it is ours?

Used memory excludes reclaimable page cache, as the kernel counts it: reading a 50 GB video fills
the page cache, and counting that as "used" (Ray #35989) would make every long job look like an
emergency. So: cgroup v2 ``memory.current - inactive_file``, v1 ``usage_in_bytes -
total_inactive_file``, host ``MemTotal - MemAvailable``.

Usage is measured in the scope of the machine ceiling: the cgroup whose limit is tightest (it
counts every process under it, siblings included), else the host. A configured budget is *not*
a scope: other programs' memory must not count against the user's budget, so the monitor compares
our own process tree (``process_tree_memory``) with the budget, and ``MemoryUsage`` with the
machine ceiling (``MemoryUsage.ceiling_bytes``).

The monitor samples ten times a second, so ``UsageReader`` keeps its files open and re-reads them
with ``pread`` at offset 0: one system call per file, no open/close, no Python file objects.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from montage.memory.limits import MemoryLimit

__all__ = [
    "MemoryUsage",
    "TreeMemory",
    "UsageReader",
    "process_tree_memory",
    "read_usage",
    "rss_bytes",
]

logger = logging.getLogger("montage.memory")

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_page_size_bytes = 0


@dataclass(frozen=True)
class MemoryUsage:
    """One sample of the machine (or cgroup) we live in."""

    used_bytes: int
    available_bytes: int
    scope: str
    swap_used_bytes: int
    psi_some_avg10: float | None
    psi_full_avg10: float | None
    ceiling_bytes: int = 0
    """The machine ceiling ``used_bytes`` is measured against (cgroup limit or MemTotal)."""
    host_available_bytes: int = 0
    """MemAvailable of the host, the hard cap on ``available_bytes``."""


@dataclass(frozen=True)
class TreeMemory:
    """Resident memory of a process and all its descendants (ffmpeg children included)."""

    process_rss_bytes: int
    tree_rss_bytes: int
    children: tuple[tuple[int, int], ...]


# --- kept-open files --------------------------------------------------------------------


class _KeptFile:
    """A small kernel file opened once and re-read from offset 0 on every sample."""

    __slots__ = ("fd", "path", "size")

    def __init__(self, path: Path, size: int = 4096) -> None:
        self.path = path
        self.size = size
        self.fd = os.open(path, _READ_FLAGS)

    def read(self) -> bytes:
        data = os.pread(self.fd, self.size, 0)
        while len(data) >= self.size:  # did not fit: grow and read again
            self.size *= 4
            data = os.pread(self.fd, self.size, 0)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_optional(path: Path) -> _KeptFile | None:
    try:
        kept = _KeptFile(path)
        kept.read()  # PSI files can exist yet refuse reads (psi=0 on the kernel command line)
    except OSError:
        return None
    return kept


def _field(data: bytes, key: bytes) -> int | None:
    """The first number after ``key`` (which must start a line) in ``data``."""
    index = data.find(b"\n" + key)
    if index >= 0:
        index += 1
    elif data.startswith(key):
        index = 0
    else:
        return None
    start = index + len(key)
    end = data.find(b"\n", start)
    words = data[start : end if end >= 0 else len(data)].split()
    try:
        return int(words[0])
    except (IndexError, ValueError):
        return None


def _first_int(data: bytes) -> int | None:
    """A single-number file (memory.current, memory.swap.current)."""
    try:
        return int(data)
    except ValueError:
        return None


def _psi_avg10(data: bytes, kind: bytes) -> float | None:
    """``avg10`` of the ``some`` or ``full`` line of a PSI file (percent)."""
    key = kind + b" avg10="
    index = data.find(key)
    if index < 0:
        return None
    start = index + len(key)
    end = data.find(b" ", start)
    try:
        return float(data[start : end if end >= 0 else len(data)])
    except ValueError:
        return None


# --- the reader -------------------------------------------------------------------------


class UsageReader:
    """Samples usage in the ceiling's scope with kept-open files (the monitor's fast path).

    Raises ``OSError`` if ``<root>/proc/meminfo`` cannot be opened (not Linux). Cgroup files
    that vanish later (cgroup removed) are logged once and the reader falls back to the host.
    """

    def __init__(self, limit: MemoryLimit, root: str | Path = "/") -> None:
        self._root = Path(root)
        self._limit = limit
        self._meminfo = _KeptFile(self._root / "proc" / "meminfo")
        self._current: _KeptFile | None = None
        self._stat: _KeptFile | None = None
        self._swap: _KeptFile | None = None
        self._psi: _KeptFile | None = None
        self._version = 0
        self._ceiling_bytes = limit.host_total_bytes
        self._open_cgroup_files()
        self._open_psi()

    @property
    def scope(self) -> str:
        return f"cgroup-v{self._version}" if self._version else "host"

    def _open_cgroup_files(self) -> None:
        limit = self._limit
        directory = limit.cgroup_limit_dir
        if limit.cgroup is None or directory is None or limit.cgroup_limit_bytes is None:
            return
        if limit.cgroup_limit_bytes >= limit.host_total_bytes:
            return  # a cgroup limit above RAM limits nothing: the host is the scope
        version = limit.cgroup.version
        current_name = "memory.current" if version == 2 else "memory.usage_in_bytes"
        try:
            self._current = _KeptFile(directory / current_name)
            self._stat = _KeptFile(directory / "memory.stat", size=8192)
        except OSError as error:
            logger.warning(
                "cannot read cgroup usage in %s (%s); measuring the host", directory, error
            )
            self._close_cgroup_files()
            return
        if version == 2:
            self._swap = _open_optional(directory / "memory.swap.current")
        self._version = version
        self._ceiling_bytes = limit.cgroup_limit_bytes

    def _open_psi(self) -> None:
        candidates: list[Path] = []
        limit = self._limit
        if self._version == 2 and limit.cgroup_limit_dir is not None and limit.cgroup is not None:
            candidates += [
                limit.cgroup_limit_dir / "memory.pressure",
                limit.cgroup.path / "memory.pressure",
            ]
        candidates.append(self._root / "proc" / "pressure" / "memory")
        for path in candidates:
            self._psi = _open_optional(path)
            if self._psi is not None:
                return

    def _close_cgroup_files(self) -> None:
        for kept in (self._current, self._stat, self._swap):
            if kept is not None:
                kept.close()
        self._current = self._stat = self._swap = None
        self._version = 0
        self._ceiling_bytes = self._limit.host_total_bytes

    def _cgroup_used(self) -> int | None:
        """Cgroup usage minus inactive page cache; None (after one warning) if unreadable."""
        assert self._current is not None and self._stat is not None
        try:
            current = _first_int(self._current.read())
            stat = self._stat.read()
        except OSError as error:
            logger.warning("cgroup usage unreadable (%s); measuring the host from now on", error)
            self._close_cgroup_files()
            return None
        key = b"inactive_file " if self._version == 2 else b"total_inactive_file "
        inactive = _field(stat, key) or 0
        return max(0, (current or 0) - inactive)

    def _psi_values(self) -> tuple[float | None, float | None]:
        if self._psi is None:
            return None, None
        try:
            data = self._psi.read()
        except OSError:
            self._psi.close()
            self._psi = None
            return None, None
        return _psi_avg10(data, b"some"), _psi_avg10(data, b"full")

    def _swap_used(self, meminfo: bytes) -> int:
        if self._swap is not None:
            try:
                return _first_int(self._swap.read()) or 0
            except OSError:
                self._swap.close()
                self._swap = None
        swap_total = _field(meminfo, b"SwapTotal:") or 0
        swap_free = _field(meminfo, b"SwapFree:") or 0
        return max(0, swap_total - swap_free) * 1024

    def read(self) -> MemoryUsage:
        """One sample; cheap enough to call every 100 ms (see benchmarks/bench_sampling.py)."""
        meminfo = self._meminfo.read()
        total_bytes = (_field(meminfo, b"MemTotal:") or 0) * 1024 or self._limit.host_total_bytes
        host_available = _field(meminfo, b"MemAvailable:")
        host_available_bytes = total_bytes if host_available is None else host_available * 1024
        used = self._cgroup_used() if self._current is not None else None
        if used is None:
            used = max(0, total_bytes - host_available_bytes)
        available = min(max(0, self._ceiling_bytes - used), host_available_bytes)
        psi_some, psi_full = self._psi_values()
        return MemoryUsage(
            used_bytes=used,
            available_bytes=available,
            scope=self.scope,
            swap_used_bytes=self._swap_used(meminfo),
            psi_some_avg10=psi_some,
            psi_full_avg10=psi_full,
            ceiling_bytes=self._ceiling_bytes,
            host_available_bytes=host_available_bytes,
        )

    def close(self) -> None:
        """Close every kept file (idempotent)."""
        self._close_cgroup_files()
        for kept in (self._meminfo, self._psi):
            if kept is not None:
                kept.close()
        self._psi = None

    def __enter__(self) -> UsageReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown nothing is left to do
            self.close()


def read_usage(limit: MemoryLimit, root: str | Path = "/") -> MemoryUsage:
    """One sample without keeping files open (for one-off status reports)."""
    with UsageReader(limit, root) as reader:
        return reader.read()


# --- the process tree -------------------------------------------------------------------


def _page_size() -> int:
    global _page_size_bytes
    if not _page_size_bytes:
        _page_size_bytes = os.sysconf("SC_PAGE_SIZE")
    return _page_size_bytes


def _read_small(path: str) -> bytes:
    fd = os.open(path, _READ_FLAGS)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def rss_bytes(pid: int, root: str | Path = "/") -> int | None:
    """Resident set size of one process from ``/proc/<pid>/statm``; None if it is gone."""
    try:
        data = _read_small(f"{os.fspath(root).rstrip('/')}/proc/{pid}/statm")
        return int(data.split(None, 2)[1]) * _page_size()
    except (OSError, IndexError, ValueError):
        return None


class _NoChildrenFile(Exception):
    """The kernel lacks CONFIG_PROC_CHILDREN: walk the tree with psutil instead."""


def _child_pids(proc: str, pid: int) -> list[int]:
    """Direct children of ``pid`` (of every thread); empty if the process vanished."""
    task_dir = f"{proc}/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return []
    pids: list[int] = []
    for tid in tids:
        try:
            data = _read_small(f"{task_dir}/{tid}/children")
        except FileNotFoundError:
            if os.path.isdir(f"{task_dir}/{tid}"):
                raise _NoChildrenFile from None
            continue  # the thread ended mid-walk
        except OSError:
            continue
        pids.extend(int(word) for word in data.split())
    return pids


def _descendants_psutil(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _walk_descendants(proc: str, pid: int) -> list[int]:
    """Every descendant pid, parents before children; cycles (pid reuse mid-walk) are cut."""
    seen = {pid}
    order: list[int] = []
    stack = [pid]
    while stack:
        for child in _child_pids(proc, stack.pop()):
            if child not in seen:
                seen.add(child)
                order.append(child)
                stack.append(child)
    return order


def process_tree_memory(pid: int | None = None, root: str | Path = "/") -> TreeMemory:
    """RSS of ``pid`` (default: this process) plus every descendant, read from /proc.

    Processes that exit mid-walk are skipped, not errors: ffmpeg children come and go.
    """
    target = os.getpid() if pid is None else pid
    proc = f"{os.fspath(root).rstrip('/')}/proc"
    own = rss_bytes(target, root) or 0
    try:
        descendants = _walk_descendants(proc, target)
    except _NoChildrenFile:
        descendants = _descendants_psutil(target)
    children: list[tuple[int, int]] = []
    for child in descendants:
        child_rss = rss_bytes(child, root)
        if child_rss is not None:
            children.append((child, child_rss))
    return TreeMemory(
        process_rss_bytes=own,
        tree_rss_bytes=own + sum(rss for _, rss in children),
        children=tuple(children),
    )
