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
import time
from dataclasses import dataclass
from pathlib import Path

from montage.memory.limits import MemoryLimit

__all__ = [
    "MemoryUsage",
    "ProcessTreeReader",
    "TreeMemory",
    "UsageReader",
    "UsageSample",
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


_MEMINFO_KEYS = (b"MemTotal:", b"\nMemAvailable:", b"\nSwapTotal:", b"\nSwapFree:")


def _meminfo_kb(data: bytes) -> tuple[int | None, int | None, int, int]:
    """MemTotal, MemAvailable, SwapTotal and SwapFree (kB) of a meminfo text.

    Why not ``_field`` four times: the sampler parses meminfo ten times a second and with
    cold caches every call and split counts; this is one ``find`` and one ``int`` per key.
    ``int`` ignores the padding before the number; anything unexpected (a missing line, no
    " kB" unit, a fake file) takes the ``_field`` path, which gives the same results.
    """
    values: list[int] = []
    for key in _MEMINFO_KEYS:
        start = data.find(key)
        end = data.find(b" kB\n", start)
        if start < 0 or end < 0:
            break
        try:
            values.append(int(data[start + len(key) : end]))
        except ValueError:
            break
    if len(values) == 4 and data.startswith(b"MemTotal:"):
        return values[0], values[1], values[2], values[3]
    return (
        _field(data, b"MemTotal:"),
        _field(data, b"MemAvailable:"),
        _field(data, b"SwapTotal:") or 0,
        _field(data, b"SwapFree:") or 0,
    )


def _psi_both(data: bytes) -> tuple[float | None, float | None]:
    """``some`` and ``full`` avg10 of a PSI file; the kernel's fixed layout read directly.

    ``some avg10=X avg60=...\nfull avg10=Y ...``: X starts at byte 11 and Y 11 bytes after
    the newline. Any other layout takes ``_psi_avg10``.
    """
    newline = data.find(b"\n")
    if data.startswith(b"some avg10=") and data.startswith(b"full avg10=", newline + 1):
        try:
            return (
                float(data[11 : data.find(b" ", 11)]),
                float(data[newline + 12 : data.find(b" ", newline + 12)]),
            )
        except ValueError:
            pass
    return _psi_avg10(data, b"some"), _psi_avg10(data, b"full")


UsageSample = tuple[int, int, int, float | None, float | None, int, int]
"""``UsageReader.sample()``: used, available, swap used (bytes), PSI some / full avg10 (%),
ceiling, host available (bytes); the fields of ``MemoryUsage`` in its order, without ``scope``."""


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
        return _psi_both(data)

    def _swap_used(self, swap_total_kb: int, swap_free_kb: int) -> int:
        if self._swap is not None:
            try:
                return _first_int(self._swap.read()) or 0
            except OSError:
                self._swap.close()
                self._swap = None
        return max(0, swap_total_kb - swap_free_kb) * 1024

    def sample(self) -> UsageSample:
        """``read()`` as a plain tuple: what the sampler needs, ten times a second.

        Why a tuple: building the frozen ``MemoryUsage`` costs the sampler more CPU than
        the two ``pread`` calls of a host sample; the monitor only unpacks the numbers.
        """
        total_kb, available_kb, swap_total_kb, swap_free_kb = _meminfo_kb(self._meminfo.read())
        total_bytes = (total_kb or 0) * 1024 or self._limit.host_total_bytes
        host_available_bytes = total_bytes if available_kb is None else available_kb * 1024
        used = self._cgroup_used() if self._current is not None else None
        if used is None:
            used = max(0, total_bytes - host_available_bytes)
        available = min(max(0, self._ceiling_bytes - used), host_available_bytes)
        psi_some, psi_full = self._psi_values()
        swap_used = self._swap_used(swap_total_kb, swap_free_kb)
        return (
            used,
            available,
            swap_used,
            psi_some,
            psi_full,
            self._ceiling_bytes,
            host_available_bytes,
        )

    def read(self) -> MemoryUsage:
        """One sample; cheap enough to call every 100 ms (see benchmarks/bench_sampling.py)."""
        used, available, swap_used, psi_some, psi_full, ceiling, host_available = self.sample()
        return MemoryUsage(
            used_bytes=used,
            available_bytes=available,
            scope=self.scope,
            swap_used_bytes=swap_used,
            psi_some_avg10=psi_some,
            psi_full_avg10=psi_full,
            ceiling_bytes=ceiling,
            host_available_bytes=host_available,
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


# --- the process tree, kept open (the monitor's fast path) ------------------------------------

_TASKS_REFRESH_S = 1.0
"""How long a multi-threaded process's thread list is trusted while its thread count is steady."""

_MAX_KEPT_FDS = 64
"""Files the tree reader keeps open at most; beyond that it opens, reads and closes."""

_STAT_SIZE = 2048


class _Proc:
    """Kept-open ``/proc`` files of one process of the tree, and what its last read said.

    The fds are bound to the process, not to the number: once it is reaped, reads fail with
    ESRCH even if the pid was reused meanwhile, so a cached entry never describes another
    process. (A thread's ``children`` file is the exception, it reads empty once the thread
    has gone: that is why thread lists are listed again when the thread count changes.)
    An fd of -1 means "not kept" (over the budget): that file is opened for each read.
    """

    __slots__ = (
        "children_fds",
        "has_stat",
        "leaf",
        "listed_at",
        "listed_threads",
        "rss",
        "start",
        "statm_fd",
        "task_fd",
        "threads",
        "tids",
        "zombie",
    )

    def __init__(self, statm_fd: int, task_fd: int, has_stat: bool) -> None:
        self.statm_fd = statm_fd
        self.task_fd = task_fd
        self.has_stat = has_stat
        self.children_fds: dict[int, int] = {}
        self.tids: tuple[int, ...] = ()
        self.listed_threads = -1
        self.listed_at = 0.0
        self.rss = 0
        self.start: int | None = None
        self.threads = 0
        self.zombie = False
        self.leaf = True


class ProcessTreeReader:
    """``process_tree_memory`` for a sampler: one walk per call, files kept open between calls.

    Why: the monitor walks our tree ten times a second, and on a small busy VM every
    ``/proc`` open/read/close, every ``task`` directory listing and every extra Python call
    costs µs of CPU with cold caches; together they were most of the sampler's cost. Here
    each process's ``statm`` (RSS, exactly as ``rss_bytes`` reads it) and ``task`` directory
    (its link count is the thread count, via ``fstat``) and each thread's ``children`` file
    stay open and are re-read with ``pread``. A single-threaded process needs no listing; a
    multi-threaded one is listed again when its thread count changes, and at least every
    ``_TASKS_REFRESH_S`` (a thread that ended while another started, same count, is caught
    within that time). ``stat`` (start time, zombie state) is read on first sight and when
    ``statm`` shows no address space (a zombie, or a process on its way out): a kept
    ``statm`` fails with ESRCH once its process is reaped, so the start time cannot change
    behind it. At most ``max_kept_fds`` files stay open, so a job with many threaded ffmpeg
    children cannot run out of descriptors because of us; the rest are read the one-off way.
    Files of processes that left the tree are closed at the end of each walk.

    The last walk also answers ``walked(pid)``: the start time and subtree RSS of any
    descendant in it, so the monitor follows tracked children (ffmpeg is our descendant)
    without walking again. Not thread-safe: the monitor calls it under its lock.
    """

    def __init__(self, root: str | Path = "/", *, max_kept_fds: int = _MAX_KEPT_FDS) -> None:
        self._root = root
        self._proc = f"{os.fspath(root).rstrip('/')}/proc"
        self._max_kept = max_kept_fds
        self._kept = 0
        self._page = _page_size()
        self._procs: dict[int, _Proc] = {}
        self._psutil = False
        self._psutil_tree: TreeMemory | None = None
        self._parents: dict[int, int] = {}
        self._order: list[int] = []
        self._subtrees: dict[int, int] | None = None
        self._cursor_fd = -1  # /proc/loadavg; -2: unavailable or not to be trusted
        self._cursor: bytes | None = None
        self._target = 0
        self._full_at = 0.0

    # --- files ---

    def _open(self, path: str, flags: int = 0) -> int:
        """A kept fd for ``path`` if the budget allows, else -1 (read it the one-off way)."""
        if self._kept >= self._max_kept:
            return -1
        fd = os.open(path, _READ_FLAGS | flags)
        self._kept += 1
        return fd

    def _close(self, fd: int) -> None:
        if fd >= 0:
            os.close(fd)
            self._kept -= 1

    def _drop(self, pid: int) -> None:
        entry = self._procs.pop(pid, None)
        if entry is not None:
            self._close(entry.statm_fd)
            self._close(entry.task_fd)
            for fd in entry.children_fds.values():
                self._close(fd)

    # --- one process ---

    def _open_proc(self, pid: int) -> _Proc | None:
        """First sight of ``pid`` (or its pid was reused): open its files, read it; None if gone."""
        self._drop(pid)
        base = f"{self._proc}/{pid}"
        try:
            statm_fd = self._open(f"{base}/statm")
            task_fd = self._open(f"{base}/task", os.O_DIRECTORY)
        except OSError:
            return None
        entry = self._procs[pid] = _Proc(statm_fd, task_fd, True)
        try:
            self._read_stat(pid, entry)
        except FileNotFoundError:  # a fake /proc tree without stat: threads are listed each time
            entry.has_stat = False
        except OSError:
            self._drop(pid)
            return None
        return entry if self._refresh(pid, entry) else None

    def _read_stat(self, pid: int, entry: _Proc) -> None:
        """Start time and zombie state from ``/proc/<pid>/stat`` (opened for this read only)."""
        stat = _read_small(f"{self._proc}/{pid}/stat")
        try:
            fields = stat[stat.rindex(b")") + 2 :].split(None, 20)  # the name may hold ")"
            entry.zombie = fields[0] in (b"Z", b"X")
            entry.start = None if entry.zombie else int(fields[19])
        except (ValueError, IndexError):
            entry.zombie, entry.start = False, None

    def _refresh(self, pid: int, entry: _Proc) -> bool:
        """Re-read RSS and thread count; False (entry dropped) if the process was reaped."""
        try:
            fd = entry.statm_fd
            statm = os.pread(fd, 4096, 0) if fd >= 0 else _read_small(f"{self._proc}/{pid}/statm")
            size, resident, _ = statm.split(None, 2)
            if entry.has_stat:
                if size == b"0" or entry.zombie:  # no address space: a zombie, or exiting
                    self._read_stat(pid, entry)
                fd = entry.task_fd
                st = os.fstat(fd) if fd >= 0 else os.stat(f"{self._proc}/{pid}/task")
                entry.threads = st.st_nlink - 2  # "." and ".." plus one link per thread
            entry.rss = int(resident) * self._page
        except (OSError, ValueError):  # reaped (ESRCH), or a malformed fake statm
            self._drop(pid)
            return False
        return True

    def _list_tids(self, pid: int, entry: _Proc, now: float) -> tuple[int, ...]:
        try:
            tids = tuple(int(name) for name in os.listdir(f"{self._proc}/{pid}/task"))
        except (OSError, ValueError):
            tids = ()
        fds = entry.children_fds
        for tid in [tid for tid in fds if tid not in tids]:
            self._close(fds.pop(tid))
        entry.tids, entry.listed_threads, entry.listed_at = tids, entry.threads, now
        return tids

    def _children(self, pid: int, entry: _Proc, now: float) -> list[int]:
        """Direct children of every thread of ``pid``."""
        threads = entry.threads
        if threads == 1 and not entry.zombie:  # a zombie leader may still have live threads
            tids: tuple[int, ...] = (pid,)
        elif threads == entry.listed_threads > 1 and now - entry.listed_at < _TASKS_REFRESH_S:
            tids = entry.tids
        else:
            tids = self._list_tids(pid, entry, now)
        pids: list[int] = []
        fds = entry.children_fds
        for tid in tids:
            fd = fds.get(tid)
            try:
                if fd is None:
                    fd = self._open(f"{self._proc}/{pid}/task/{tid}/children")
                    if fd >= 0:
                        fds[tid] = fd
                if fd >= 0:
                    data = os.pread(fd, 4096, 0)
                    if len(data) >= 4096:  # hundreds of children: read up to 64 KiB
                        data = os.pread(fd, 65536, 0)
                else:
                    data = _read_small(f"{self._proc}/{pid}/task/{tid}/children")
            except FileNotFoundError:
                if os.path.isdir(f"{self._proc}/{pid}/task/{tid}"):
                    raise _NoChildrenFile from None
                continue  # the thread ended mid-walk
            except OSError:
                continue
            if data:
                pids.extend(map(int, data.split()))
        return pids

    # --- the walk ---

    def read(self, pid: int | None = None) -> TreeMemory:
        """RSS of ``pid`` (default: this process) and its descendants (``process_tree_memory``)."""
        own, tree = self.read_totals(pid)
        if self._psutil_tree is not None:
            return self._psutil_tree
        procs = self._procs
        children = tuple((child, procs[child].rss) for child in self._order)
        return TreeMemory(process_rss_bytes=own, tree_rss_bytes=tree, children=children)

    def read_totals(self, pid: int | None = None) -> tuple[int, int]:
        """``(process RSS, tree RSS)`` of ``read``, without building the per-child tuple."""
        target = os.getpid() if pid is None else pid
        self._subtrees = None
        if not self._psutil:
            try:
                return self._walk(target)
            except _NoChildrenFile:
                self._psutil = True
                self.close()
        tree = process_tree_memory(target, self._root)  # it walks with psutil on such kernels
        self._parents, self._order, self._psutil_tree = {}, [], tree
        return tree.process_rss_bytes, tree.tree_rss_bytes

    def _pid_cursor(self) -> bytes | None:
        """The last pid allocated in our pid namespace (``/proc/loadavg``'s last field)."""
        fd = self._cursor_fd
        if fd == -1:
            try:
                fd = self._cursor_fd = self._open(f"{self._proc}/loadavg")
            except OSError:
                fd = self._cursor_fd = -2
        if fd < 0:
            return None
        try:
            data = os.pread(fd, 256, 0)
        except OSError:
            return None
        return data[data.rfind(b" ") :]

    def _walk(self, target: int) -> tuple[int, int]:
        """Re-read the members' RSS if the tree cannot have changed, else walk it afresh.

        Every new process or thread takes a pid, and the kernel reports the last pid it
        allocated in our namespace in ``/proc/loadavg``. If that has not moved since the last
        full walk, nothing can have joined our tree (a process only becomes our descendant by
        being forked by one), so the children files and thread counts need no reading: one
        ``statm`` read per member is the whole walk. A member that exited shows up as a
        failed or empty ``statm`` read, and any surprise falls back to the full walk, which
        also runs at least every ``_TASKS_REFRESH_S``; if one of those finds a new member
        although the cursor stood still (a virtualised ``/proc/loadavg``), the shortcut is
        switched off for good.
        """
        now = time.monotonic()
        cursor = self._pid_cursor()
        if cursor is not None and cursor == self._cursor and target == self._target:
            if now - self._full_at < _TASKS_REFRESH_S:
                totals = self._reread_members(target)
                if totals is not None:
                    return totals
            before = set(self._parents)
            totals = self._full_walk(target, now)
            if any(pid not in before for pid in self._parents):
                self._close(self._cursor_fd)  # the cursor missed a fork: never trust it again
                self._cursor_fd = -2
        else:
            totals = self._full_walk(target, now)
        self._cursor, self._target, self._full_at = cursor, target, now
        return totals

    def _reread_members(self, target: int) -> tuple[int, int] | None:
        """Tree RSS from the last walk's members' ``statm`` alone; None if any looks changed."""
        procs = self._procs
        page = self._page
        own = tree = 0
        try:
            for pid in (target, *self._order):
                entry = procs[pid]
                size, resident, _ = os.pread(entry.statm_fd, 4096, 0).split(None, 2)
                if size == b"0":  # a zombie, or exiting: the full walk sorts it out
                    return None
                entry.rss = rss = int(resident) * page
                tree += rss
                if pid == target:
                    own = rss
        except (OSError, ValueError, KeyError):  # reaped, not kept (-1), ...: walk afresh
            return None
        return own, tree

    def _full_walk(self, target: int, now: float) -> tuple[int, int]:
        procs = self._procs
        parents: dict[int, int] = {}
        order: list[int] = []
        self._parents, self._order = parents, order
        root = procs.get(target)
        if root is None or not self._refresh(target, root):
            root = self._open_proc(target)
            if root is None:
                self._close_members()
                return 0, 0
        tree = root.rss
        seen = {target}
        stack = [target]
        while stack:
            parent = stack.pop()
            children = self._children(parent, procs[parent], now)
            procs[parent].leaf = not children
            for child in children:
                if child in seen:
                    continue  # a recycled pid pointing back up the tree: no loop
                seen.add(child)
                entry = procs.get(child)
                if entry is None or not self._refresh(child, entry):
                    entry = self._open_proc(child)
                    if entry is None:
                        continue  # exited between the listing and the read
                tree += entry.rss
                parents[child] = parent
                order.append(child)
                stack.append(child)
        if len(procs) != len(order) + 1:  # some processes left the tree: close their files
            for pid in [pid for pid in procs if pid != target and pid not in parents]:
                self._drop(pid)
        return root.rss, tree

    def _close_members(self) -> None:
        for pid in list(self._procs):
            self._drop(pid)
        self._parents, self._order, self._cursor = {}, [], None

    def walked(self, pid: int) -> tuple[int | None, int] | None:
        """``(start_ticks, subtree RSS)`` of descendant ``pid`` in the last ``read``.

        ``start_ticks`` is None for a zombie. None when ``pid`` was not in that walk (not our
        descendant, or gone) or its start time is unknown (no readable ``stat``): the caller
        then reads that process directly.
        """
        if pid not in self._parents:
            return None
        entry = self._procs[pid]
        if entry.start is None and not entry.zombie:
            return None
        if entry.leaf:  # the usual ffmpeg: no children of its own
            return entry.start, entry.rss
        if self._subtrees is None:
            procs, parents = self._procs, self._parents
            subtrees = {child: procs[child].rss for child in self._order}
            for child in reversed(self._order):  # children come after their parents
                parent = parents[child]
                if parent in subtrees:
                    subtrees[parent] += subtrees[child]
            self._subtrees = subtrees
        return entry.start, self._subtrees[pid]

    def close(self) -> None:
        """Close every kept file (idempotent)."""
        self._close_members()
        if self._cursor_fd >= 0:
            self._close(self._cursor_fd)
            self._cursor_fd = -1

    def __enter__(self) -> ProcessTreeReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
