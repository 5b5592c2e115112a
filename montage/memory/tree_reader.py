"""``ProcessTreeReader``: ``process_tree_memory`` with kept-open /proc files (see ``tree``)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from montage.memory.tree import (
    _READ_FLAGS,
    TreeMemory,
    _NoChildrenFile,
    _page_size,
    _read_small,
    process_tree_memory,
)

__all__ = ["ProcessTreeReader"]

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
