"""Tracked processes, keyed by pid and checked against the start time read when tracking began.

Why not the pid alone: PIDs are reused, and an ffmpeg that exited can see its pid handed to an
unrelated process before we look again. A pid whose start time differs from the record's, or
that is a zombie, is a dead record and drops out.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from montage.memory.usage import ProcessTreeReader, process_tree_memory

logger = logging.getLogger("montage.memory")

MIB = 1024 * 1024


@dataclass
class _Tracked:
    """Identity of a tracked process: the pid alone is not enough (PIDs are reused)."""

    pid: int
    start_ticks: int
    name: str
    is_ffmpeg: bool
    started_at: float
    memory_mb: float = 0.0
    peak_memory_mb: float = 0.0


def _start_ticks(pid: int, root: Path) -> int | None:
    """When ``pid`` started (clock ticks since boot; psutil's create_time is derived from it).

    None if the pid is gone or a zombie. One small read, cheap enough for every sampler tick
    (psutil costs ~4x more here, and this runs for every tracked process ten times a second).
    """
    try:
        fd = os.open(f"{root}/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = data[data.rindex(b")") + 2 :].split()  # the name may contain spaces and ")"
        return None if fields[0] in (b"Z", b"X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


class ProcessTracker:
    """The monitor's tracked processes (``records``, by pid) and their live/peak memory.

    It shares the monitor's lock: the sampler refreshes the records from its own tree walk
    while holding that lock, and callers add, drop and list records from other threads.
    """

    def __init__(self, root: Path, lock: threading.RLock) -> None:
        self._root = root
        self._lock = lock
        self.records: dict[int, _Tracked] = {}
        # The reader and its version at the last update that found every record in its walk:
        # until that version moves, another update would change nothing (the monitor skips it).
        self.synced_reader: ProcessTreeReader | None = None
        self.synced_version = -1

    def track(self, pid: int, name: str, is_ffmpeg: bool) -> None:
        """Follow ``pid`` (and its descendants) until it exits; ignored if already gone."""
        start_ticks = _start_ticks(pid, self._root)
        if start_ticks is None:
            logger.debug("not tracking pid %d (%s): already gone", pid, name)
            return
        self.add(_Tracked(pid, start_ticks, name, is_ffmpeg, time.time()))

    def add(self, record: _Tracked) -> None:
        with self._lock:
            self.records[record.pid] = record
            self.synced_reader = None
        self.refresh(record)

    def untrack(self, pid: int) -> None:
        with self._lock:
            self.records.pop(pid, None)

    def refresh(self, record: _Tracked) -> bool:
        """Update live/peak memory; False if the process is gone (or the pid was reused)."""
        if _start_ticks(record.pid, self._root) != record.start_ticks:
            return False
        tree_bytes = process_tree_memory(record.pid, self._root).tree_rss_bytes
        record.memory_mb = tree_bytes / MIB
        record.peak_memory_mb = max(record.peak_memory_mb, record.memory_mb)
        return True

    def update(self, reader: ProcessTreeReader) -> None:
        """Refresh every record from ``reader``'s latest walk of our tree; drop the dead ones.

        Tracked ffmpeg are our descendants, so the walk already read them: their start time
        (identity) and subtree RSS come from it, at no extra cost. Only a process that is not
        in the walk (not ours, or gone) is read on its own (``refresh``). Nothing is done while
        the reader's ``version`` says no walked answer changed since the last update (the
        sampler's steady tick with idle children).
        """
        with self._lock:
            version = reader.version
            if self.synced_reader is reader and self.synced_version == version:
                return
            dead = []
            synced = True
            walked = reader.walked
            for record in self.records.values():  # nothing else changes it under the lock
                found = walked(record.pid)
                if found is None:
                    synced = False
                    alive = self.refresh(record)
                elif found[0] == record.start_ticks:
                    alive = True
                    record.memory_mb = memory_mb = found[1] / MIB
                    if memory_mb > record.peak_memory_mb:
                        record.peak_memory_mb = memory_mb
                else:  # a zombie, or the pid now belongs to another process
                    alive = False
                if not alive:
                    dead.append(record)
            self.synced_reader, self.synced_version = (reader if synced else None), version
            for record in dead:
                if self.records.get(record.pid) is record:
                    del self.records[record.pid]

    def snapshot(self) -> list[_Tracked]:
        with self._lock:
            return list(self.records.values())
