"""Our process tree from /proc: the RSS of this process and every descendant (ffmpeg included).

Read one-off: each call opens, reads and closes its files (``process_tree_memory``,
``rss_bytes``). The monitor's ten-a-second fast path, which keeps those files open between
calls, is ``ProcessTreeReader`` in ``montage.memory.tree_reader``.
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
