"""``ProcessTreeReader``: ``process_tree_memory`` with kept-open /proc files (see ``tree``)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from montage.memory.tree import (
    _MAX_KEPT_FDS,
    _STILL_RECHECK_S,
    _TASKS_REFRESH_S,
    TreeMemory,
    _KeptProcs,
    _NoChildrenFile,
    _Proc,
    process_tree_memory,
)

__all__ = ["NativeMember", "ProcessTreeReader"]

NativeMember = tuple[
    int, bytes, int, int, int, str, tuple[int, ...], float, list[tuple[int, bytes]] | None
]
"""One tree member as the native sampler takes it (``ProcessTreeReader.native_args``)."""


class ProcessTreeReader(_KeptProcs):
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
        super().__init__(root, max_kept_fds)
        self._psutil = False
        self._psutil_tree: TreeMemory | None = None
        self._parents: dict[int, int] = {}
        self._order: list[int] = []
        self._subtrees: dict[int, int] | None = None
        self._cursor_fd = -1  # /proc/loadavg; -2: unavailable or not to be trusted
        self._cursor: bytes | None = None
        self._target = 0
        self._full_at = 0.0
        self._members: list[_Proc] = []  # the last full walk's members, the root first
        self.version = 0
        """Moves whenever an answer of ``walked`` may have changed (a walk, a new RSS)."""

    # --- the walk ---

    def read(self, pid: int | None = None) -> TreeMemory:
        """RSS of ``pid`` (default: this process) and its descendants (``process_tree_memory``)."""
        own, tree = self.read_totals(pid)
        if self._psutil_tree is not None:
            return self._psutil_tree
        procs = self._procs
        children = tuple((child, procs[child].rss) for child in self._order)
        return TreeMemory(process_rss_bytes=own, tree_rss_bytes=tree, children=children)

    def read_totals(self, pid: int | None = None, now: float | None = None) -> tuple[int, int]:
        """``(process RSS, tree RSS)`` of ``read``, without building the per-child tuple.

        Re-reads only the members' RSS while the tree cannot have changed, else walks it
        afresh. Every new process or thread takes a pid, and the kernel reports the last pid
        it allocated in our namespace in ``/proc/loadavg``. If that has not moved since the
        last full walk, nothing can have joined our tree (a process only becomes our
        descendant by being forked by one), so the children files and thread counts need no
        reading: one ``statm`` read per member is the whole walk. A member that exited shows
        up as a failed or empty ``statm`` read, and any surprise falls back to the full walk,
        which also runs at least every ``_STILL_RECHECK_S``; if one of those finds a new
        member although the cursor stood still (a virtualised ``/proc/loadavg``), the
        shortcut is switched off for good. ``now`` is ``time.monotonic()`` if the caller has
        just read it (the sampler does, for its timestamp).
        """
        target = os.getpid() if pid is None else pid
        if now is None:
            now = time.monotonic()
        self._subtrees = None
        if not self._psutil:
            fd = self._cursor_fd
            if fd >= 0:  # _pid_cursor(), inlined for the hot path
                try:
                    data = os.pread(fd, 128, 0)
                    cursor: bytes | None = data[data.rfind(b" ") :]
                except OSError:
                    cursor = None
            else:
                cursor = self._pid_cursor()
            still = cursor == self._cursor and target == self._target and cursor is not None
            if still and now - self._full_at < _STILL_RECHECK_S:
                # The sampler's usual tick: one ``statm`` pread per member, written out flat
                # (no call per member, a member whose text is unchanged keeps its RSS), and
                # ``version`` moves only when a descendant's RSS did.
                members = self._members
                tree = 0
                try:
                    for entry in members:
                        data = os.pread(entry.statm_fd, 256, 0)
                        if data != entry.statm:
                            size, resident, _ = data.split(None, 2)
                            if size == b"0":  # a zombie, or exiting: walk afresh
                                raise ValueError
                            entry.rss = int(resident) * self._page
                            entry.statm = data
                            if entry is not members[0]:
                                self.version += 1
                        tree += entry.rss
                    return members[0].rss, tree
                except (OSError, ValueError, IndexError):  # reaped, fd not kept, no members
                    pass
            try:
                return self._walk(target, cursor, still, now)
            except _NoChildrenFile:
                self._psutil = True
                self.close()
        found = process_tree_memory(target, self._root)  # it walks with psutil on such kernels
        self._parents, self._order, self._psutil_tree = {}, [], found
        self.version += 1
        return found.process_rss_bytes, found.tree_rss_bytes

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
            data = os.pread(fd, 128, 0)
        except OSError:
            return None
        return data[data.rfind(b" ") :]

    def _walk(self, target: int, cursor: bytes | None, still: bool, now: float) -> tuple[int, int]:
        """The last walk checked again, or a full walk (``still``: the pid cursor stood)."""
        totals = self._recheck(now) if target == self._target else None
        if totals is None:
            before = set(self._parents) if still else None
            totals = self._full_walk(target, now)
            self.version += 1
            if before is not None and any(pid not in before for pid in self._parents):
                self._close(self._cursor_fd)  # the cursor missed a fork: never trust it again
                self._cursor_fd = -2
        self._cursor, self._target, self._full_at = cursor, target, now
        return totals

    def _recheck(self, now: float) -> tuple[int, int] | None:
        """The last full walk's tree with fresh RSS, if its shape provably has not changed.

        What the full walk would find, read with the fewest operations: each member's thread
        count (``fstat`` of its kept ``task``) and each thread's kept ``children`` file must
        read as they did, and a multi-threaded member's thread list, listed again once it is
        ``_TASKS_REFRESH_S`` old (a thread that ended while another started), must not have
        changed. A reused pid cannot hide behind unchanged text: the kept ``statm`` of the
        process that had it fails once it is reaped. Anything else (a zombie, files not
        kept) returns None, and the full walk runs. On a busy machine the pid cursor moves
        most ticks, so this, not the full walk, is what those ticks cost.
        """
        members = self._members
        if not members:
            return None
        pread, fstat = os.pread, os.fstat
        root = members[0]
        tree = 0
        try:
            for entry in members:
                data = pread(entry.statm_fd, 256, 0)
                if data != entry.statm:
                    size, resident, _ = data.split(None, 2)
                    if size == b"0":
                        return None
                    entry.rss = int(resident) * self._page
                    entry.statm = data
                    if entry is not root:
                        self.version += 1
                read = entry.children_read  # None for a zombie, or without stat or kept files
                threads = entry.threads
                if read is None or fstat(entry.task_fd).st_nlink - 2 != threads:
                    return None
                if threads > 1 and now - entry.listed_at >= _TASKS_REFRESH_S:
                    tids = entry.tids  # due to be listed again: only a new thread list walks
                    if self._list_tids(entry.pid, entry, now) != tids:
                        return None
                for fd, text in read:
                    if pread(fd, 4096, 0) != text:
                        return None
                tree += entry.rss
        except (OSError, ValueError):
            return None
        return root.rss, tree

    def _full_walk(self, target: int, now: float) -> tuple[int, int]:
        procs = self._procs
        parents: dict[int, int] = {}
        order: list[int] = []
        self._parents, self._order, self._members = parents, order, []
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
        self._members = [root, *(procs[pid] for pid in order)]
        return root.rss, tree

    def _close_members(self) -> None:
        for pid in list(self._procs):
            self._drop(pid)
        self._parents, self._order, self._members, self._cursor = {}, [], [], None

    def native_args(self) -> tuple[int, bytes | None, float, list[NativeMember]]:
        """What the native sampler needs to repeat ``read_totals``' steady path and
        ``_recheck`` (``montage.memory.native``): the pid cursor's fd (-1 if not trusted), its
        text and time at the last walk, and the last walk's members, root first. No members
        (psutil mode, no walk yet) means the native side cannot prove a tree: it asks Python."""
        if self._psutil:
            return -1, None, 0.0, []
        members = [
            (
                entry.statm_fd,
                entry.statm,
                entry.rss,
                entry.task_fd,
                entry.threads,
                f"{self._proc}/{entry.pid}/task",
                entry.tids,
                entry.listed_at,
                entry.children_read,
            )
            for entry in self._members
        ]
        return max(self._cursor_fd, -1), self._cursor, self._full_at, members

    def subtree_members(self, pid: int) -> list[int] | None:
        """Indices in ``native_args``' members of descendant ``pid`` and its own descendants
        in the last walk (the members whose RSS ``walked(pid)`` sums); None if not in it."""
        if pid not in self._parents or self._psutil:
            return None
        parents = self._parents
        inside = {pid}
        indices = []
        for at, child in enumerate(self._order, 1):  # children come after their parents
            if child == pid or parents[child] in inside:
                inside.add(child)
                indices.append(at)
        return indices

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
