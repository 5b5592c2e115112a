"""Our process tree from /proc: the RSS of this process and every descendant (ffmpeg included).

Read one-off: each call opens, reads and closes its files (``process_tree_memory``,
``rss_bytes``). The monitor's ten-a-second fast path, which keeps those files open between
calls, is ``ProcessTreeReader`` in ``montage.memory.tree_reader``; what it keeps of each
process, and how it reads one, is ``_KeptProcs`` at the end of this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TreeMemory", "process_tree_memory", "rss_bytes"]

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_page_size_bytes = 0


@dataclass(frozen=True)
class TreeMemory:
    """Resident memory of a process and all its descendants (ffmpeg children included)."""

    process_rss_bytes: int
    tree_rss_bytes: int
    children: tuple[tuple[int, int], ...]


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


def _read_children(task_dir: str, tid: int | str, fd: int = -1) -> bytes:
    """The ``children`` file of thread ``tid`` in ``task_dir`` (``/proc/<pid>/task``).

    Re-read with ``pread`` when ``fd`` is a kept-open copy of it, else opened for this read.
    Empty if the thread ended mid-walk or the file cannot be read; ``_NoChildrenFile`` if
    the thread is there but the kernel has no such files.
    """
    try:
        if fd < 0:
            return _read_small(f"{task_dir}/{tid}/children")
        data = os.pread(fd, 4096, 0)
        if len(data) >= 4096:  # hundreds of children: read up to 64 KiB
            data = os.pread(fd, 65536, 0)
        return data
    except FileNotFoundError:
        if os.path.isdir(f"{task_dir}/{tid}"):
            raise _NoChildrenFile from None
        return b""  # the thread ended mid-walk
    except OSError:
        return b""


def _child_pids(proc: str, pid: int) -> list[int]:
    """Direct children of ``pid`` (of every thread); empty if the process vanished."""
    task_dir = f"{proc}/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return []
    pids: list[int] = []
    for tid in tids:
        pids.extend(map(int, _read_children(task_dir, tid).split()))
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


# --- kept-open files per process (ProcessTreeReader's base) -------------------------------

_TASKS_REFRESH_S = 1.0
"""How long a multi-threaded process's thread list is trusted while its thread count is steady."""

_STILL_RECHECK_S = 10.0
"""How often the tree is re-checked although the pid cursor stood still (nothing can have
joined it): only a safety net against a ``/proc/loadavg`` that does not show our forks (a
virtualised one), which, once caught, is never trusted again. Each re-check opens and reads
a few files per member with cold caches, so at 1 s it was ~10 % of an idle sampler's cost."""

_MAX_KEPT_FDS = 64
"""Files the tree reader keeps open at most; beyond that it opens, reads and closes."""


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
        "children_read",
        "has_stat",
        "leaf",
        "listed_at",
        "listed_threads",
        "pid",
        "rss",
        "start",
        "statm",
        "statm_fd",
        "task_fd",
        "threads",
        "tids",
        "zombie",
    )

    def __init__(self, pid: int, statm_fd: int, task_fd: int, has_stat: bool) -> None:
        self.pid = pid
        self.statm_fd = statm_fd
        self.task_fd = task_fd
        self.has_stat = has_stat
        self.children_fds: dict[int, int] = {}
        # What the last walk read from each thread's kept children file; None: not all kept.
        self.children_read: list[tuple[int, bytes]] | None = None
        self.tids: tuple[int, ...] = ()
        self.listed_threads = -1
        self.listed_at = 0.0
        self.rss = 0
        self.statm = b""  # the statm text the rss was read from
        self.start: int | None = None
        self.threads = 0
        self.zombie = False
        self.leaf = True


class _KeptProcs:
    """The kept-open ``/proc`` files of the processes of a tree, within an fd budget.

    ``ProcessTreeReader`` (``montage.memory.tree_reader``) walks the tree; this is what it
    knows of each process (``_Proc``) and how it opens, re-reads and closes their files. At
    most ``max_kept_fds`` files stay open, so a job with many threaded ffmpeg children cannot
    run out of descriptors because of us; the rest are read the one-off way.
    """

    def __init__(self, root: str | Path, max_kept_fds: int) -> None:
        self._root = root
        self._proc = f"{os.fspath(root).rstrip('/')}/proc"
        self._max_kept = max_kept_fds
        self._kept = 0
        self._page = _page_size()
        self._procs: dict[int, _Proc] = {}

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
        entry = self._procs[pid] = _Proc(pid, statm_fd, task_fd, True)
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
            statm = os.pread(fd, 256, 0) if fd >= 0 else _read_small(f"{self._proc}/{pid}/statm")
            size, resident, _ = statm.split(None, 2)
            if entry.has_stat:
                if size == b"0" or entry.zombie:  # no address space: a zombie, or exiting
                    self._read_stat(pid, entry)
                fd = entry.task_fd
                st = os.fstat(fd) if fd >= 0 else os.stat(f"{self._proc}/{pid}/task")
                entry.threads = st.st_nlink - 2  # "." and ".." plus one link per thread
            entry.rss = int(resident) * self._page
            entry.statm = statm if size != b"0" else b""  # the re-read must look again
        except (OSError, ValueError):  # reaped (ESRCH), or a malformed fake statm
            self._drop(pid)
            return False
        return True

    def _list_tids(self, pid: int, entry: _Proc, now: float) -> tuple[int, ...]:
        try:
            tids = tuple(map(int, os.listdir(f"{self._proc}/{pid}/task")))
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
        task_dir = f"{self._proc}/{pid}/task"
        read: list[tuple[int, bytes]] | None = []
        for tid in tids:
            fd = fds.get(tid)
            if fd is None:
                try:
                    fd = self._open(f"{task_dir}/{tid}/children")
                except OSError:
                    fd = -1  # the one-off read below finds out why
                if fd >= 0:
                    fds[tid] = fd
            data = _read_children(task_dir, tid, fd)
            if fd < 0 or read is None:
                read = None
            else:
                read.append((fd, data))
            if data:
                pids.extend(map(int, data.split()))
        entry.children_read = read if entry.has_stat and not entry.zombie else None
        return pids
