"""The memory monitor: one place that samples the ceiling, our usage and the pressure level.

Why a monitor and not ad-hoc reads: levels need hysteresis (the previous level), callbacks need
to fire exactly once per change, and ffmpeg children need to be followed by (pid, create_time)
so a reused PID is never mistaken for ours. Nothing here runs at import: the sampler thread is
started by ``start()`` (``runtime.setup_memory_management`` does it) and ``memory_guard``.

Pressure is the worse of two views: the machine (used vs the host/cgroup ceiling) and our own
process tree vs the configured budget (``MONTAGE_MEMORY_LIMIT`` / ``setup_memory_management``).
A configured budget is not compared against the whole machine's usage: a 400 MiB budget on a
host where other programs use 5 GiB is not "critical" for us. The absolute floor
(``min_available_mb``) applies to what the machine has left, not to the budget.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from montage.errors import ConfigError
from montage.memory.guard import _GUARD_BUDGET_MB as _GUARD_BUDGET_MB
from montage.memory.guard import MemoryGuard, current_budget_mb, memory_guard
from montage.memory.guard import _narrowest as _narrowest
from montage.memory.limits import MemoryLimit, find_memory_limit
from montage.memory.pressure import (
    MemoryPressureLevel,
    PressureThresholds,
    classify,
    effective_percent,
)
from montage.memory.sampling import _SteadyBand as _SteadyBand
from montage.memory.sampling import _Ticker as _Ticker
from montage.memory.tracking import ProcessTracker
from montage.memory.tracking import _start_ticks as _start_ticks
from montage.memory.tracking import _Tracked as _Tracked
from montage.memory.usage import ProcessTreeReader, UsageReader

logger = logging.getLogger("montage.memory")

MIB = 1024 * 1024
LevelCallback = Callable[[MemoryPressureLevel, MemoryPressureLevel, "MemoryStats"], None]
TickListener = Callable[["MemoryStats"], None]


@dataclass(frozen=True)
class MemoryStats:
    """One sample. ``available_mb`` is what we may still grow by (machine and budget)."""

    total_mb: float
    available_mb: float
    used_mb: float
    percent_used: float
    process_memory_mb: float
    tree_memory_mb: float
    swap_used_mb: float
    psi_some_avg10: float | None
    psi_full_avg10: float | None
    pressure_level: MemoryPressureLevel
    limit_source: str
    budget_mb: float | None
    timestamp: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the level as its string value)."""
        data = dataclasses.asdict(self)
        data["pressure_level"] = self.pressure_level.value
        return data


@dataclass
class ProcessInfo:
    """A tracked process; ``memory_mb`` is the live RSS of it and its descendants."""

    pid: int
    name: str
    is_ffmpeg: bool
    memory_mb: float
    peak_memory_mb: float
    started_at: float


class MemoryMonitor:
    """Samples memory, keeps a history ring, tracks processes, reports level changes."""

    def __init__(
        self,
        *,
        root: str | Path = "/",
        interval_s: float = 0.1,
        history_size: int = 600,
        thresholds: PressureThresholds | None = None,
        memory_limit: str | int | None = None,
    ) -> None:
        self._root = Path(root)
        self._interval_s = float(interval_s)
        self._thresholds = thresholds or PressureThresholds()
        self._configured = memory_limit
        self._lock = threading.RLock()
        self._limit: MemoryLimit | None = None
        self._reader: UsageReader | None = None
        self._tree_reader: ProcessTreeReader | None = None
        self._band: _SteadyBand | None = None
        self._level = MemoryPressureLevel.LOW
        self._history: deque[MemoryStats] = deque(maxlen=max(1, history_size))
        self._callbacks: list[LevelCallback] = []
        self._listeners: list[TickListener] = []
        self._tracker = ProcessTracker(self._root, self._lock)
        self._tracked = self._tracker.records  # the same dict: the sampler's cheap "any?" test
        self._ticker: _Ticker | None = None

    # --- configuration ------------------------------------------------------------------

    @property
    def limit(self) -> MemoryLimit:
        """The effective ceiling, resolved on first use (never at construction/import)."""
        with self._lock:
            if self._limit is None:
                self._limit = find_memory_limit(self._root, configured=self._configured)
            return self._limit

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def _interval(self) -> float:
        return self._interval_s

    @property
    def root(self) -> Path:
        return self._root

    @property
    def level(self) -> MemoryPressureLevel:
        """The level of the latest sample (LOW before any sample)."""
        return self._level

    def configure(
        self,
        *,
        memory_limit: str | int | None = None,
        thresholds: PressureThresholds | None = None,
        interval_s: float | None = None,
    ) -> None:
        """Change settings in place; ``None`` leaves a setting as it is."""
        if interval_s is not None and interval_s <= 0:
            raise ConfigError(f"interval_s must be > 0, got {interval_s!r}")
        with self._lock:
            if memory_limit is not None:
                self._configured = memory_limit
                self._limit = None
                self._close_reader()
            if thresholds is not None:
                self._thresholds = thresholds
            if interval_s is not None:
                self._interval_s = float(interval_s)

    def budget_mb(self) -> float | None:
        """The budget in the caller's context: configured, narrowed by enclosing guards."""
        configured = self.limit.configured_bytes
        return _narrowest(_GUARD_BUDGET_MB.get(), None if configured is None else configured / MIB)

    # --- sampling -----------------------------------------------------------------------

    def get_current_stats(self) -> MemoryStats:
        """Sample now, update the level and history, then run callbacks (outside the lock)."""
        with self._lock:
            previous = self._level
            stats = self._sample(previous)
            level = self._level = stats.pressure_level
            self._history.append(stats)
            callbacks = list(self._callbacks) if level is not previous else None
            listeners = list(self._listeners) if self._listeners else None
        if callbacks:
            for callback in callbacks:
                self._call_safely(callback, previous, level, stats)
        if listeners:
            for listener in listeners:
                self._call_safely(listener, stats)
        return stats

    def _sample(self, previous: MemoryPressureLevel) -> MemoryStats:
        """One sample; the sampler thread's hot path, so it builds no object but the stats.

        Why so spare: at 10 Hz every µs here is 0.001 % of a core, and with cold caches each
        extra Python call or object costs several µs (benchmarks/bench_monitor.py).
        """
        limit = self._limit or self.limit
        reader = self._reader
        if reader is None:
            reader = self._reader = UsageReader(limit, self._root)
        used, machine_available, swap_used, psi_some, psi_full, ceiling, _ = reader.sample()
        process_rss, tree_rss = self._walk_tree()
        budget_bytes = limit.configured_bytes
        percent = effective_percent(used, ceiling or limit.host_total_bytes, tree_rss, budget_bytes)
        machine_available_mb = machine_available / MIB
        level = self._classify(percent, machine_available_mb, psi_full, previous)
        available_mb = machine_available_mb
        if budget_bytes is not None:
            available_mb = min(available_mb, max(0, budget_bytes - tree_rss) / MIB)
        if self._tracked:
            self._update_tracked(walked=True)
        return MemoryStats(
            total_mb=limit.limit_bytes / MIB,
            available_mb=available_mb,
            used_mb=used / MIB,
            percent_used=percent,
            process_memory_mb=process_rss / MIB,
            tree_memory_mb=tree_rss / MIB,
            swap_used_mb=swap_used / MIB,
            psi_some_avg10=psi_some,
            psi_full_avg10=psi_full,
            pressure_level=level,
            limit_source=limit.source,
            budget_mb=None if budget_bytes is None else budget_bytes / MIB,
            timestamp=time.time(),
        )

    def _classify(
        self,
        percent: float,
        available_mb: float,
        psi_full: float | None,
        previous: MemoryPressureLevel,
    ) -> MemoryPressureLevel:
        """``classify``, skipped when the sample is inside ``previous``'s steady band.

        Almost every tick leaves the level where it was; ``_SteadyBand`` says when that is
        certain (it is derived from ``classify``'s own rules, and a property test checks the
        two agree), and ``classify`` itself runs only near a threshold or on a change.
        """
        band = self._band
        if band is None or band.level is not previous or band.thresholds is not self._thresholds:
            band = self._band = _SteadyBand(previous, self._thresholds)
        if band.holds(percent, available_mb, psi_full):
            return previous
        return classify(
            percent,
            available_mb=available_mb,
            psi_full_avg10=psi_full,
            previous=previous,
            thresholds=self._thresholds,
        )

    @staticmethod
    def _call_safely(fn: Callable[..., None], *args: Any) -> None:
        """Run one callback; a failure is logged and never stops the others."""
        try:
            fn(*args)
        except Exception:
            logger.exception("memory monitor callback %r failed", fn)

    def _fire_callbacks(self, new: MemoryPressureLevel, stats: MemoryStats) -> None:
        """Run every callback once with ``new`` as the level (used by memory_guard)."""
        with self._lock:
            callbacks = list(self._callbacks)
            old = self._level
        for callback in callbacks:
            self._call_safely(callback, old, new, stats)

    def history(self) -> list[MemoryStats]:
        with self._lock:
            return list(self._history)

    def register_callback(self, fn: LevelCallback) -> None:
        with self._lock:
            if fn not in self._callbacks:
                self._callbacks.append(fn)

    def unregister_callback(self, fn: LevelCallback) -> None:
        with self._lock:
            if fn in self._callbacks:
                self._callbacks.remove(fn)

    def add_sample_listener(self, fn: TickListener) -> None:
        """Called with every sample (memory_guard uses it to follow a block's peak)."""
        with self._lock:
            self._listeners.append(fn)

    def remove_sample_listener(self, fn: TickListener) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    # --- background sampler -------------------------------------------------------------

    @property
    def running(self) -> bool:
        ticker = self._ticker
        return ticker is not None and ticker.alive

    def start(self) -> None:
        """Start the daemon sampler thread (idempotent)."""
        with self._lock:
            if not self.running:
                self._ticker = _Ticker(self.get_current_stats, self._interval, "montage-memory")

    def stop(self) -> None:
        """Stop the sampler and wait for it (idempotent; safe from a callback)."""
        with self._lock:
            ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()

    def close(self) -> None:
        """Stop sampling and release kept-open files."""
        self.stop()
        with self._lock:
            self._close_reader()

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._tree_reader is not None:
            self._tree_reader.close()
            self._tree_reader = None

    def _walk_tree(self) -> tuple[int, int]:
        """(our RSS, our tree's RSS), walked once with kept-open files; see ``_update_tracked``."""
        with self._lock:
            if self._tree_reader is None:
                self._tree_reader = ProcessTreeReader(self._root)
            return self._tree_reader.read_totals()

    # --- tracked processes (tracking.py) ------------------------------------------------

    def track_process(self, pid: int, name: str, is_ffmpeg: bool = False) -> None:
        """Follow ``pid`` (and its descendants) until it exits; ignored if already gone."""
        self._tracker.track(pid, name, is_ffmpeg)

    def _track(self, record: _Tracked) -> None:
        self._tracker.add(record)

    def untrack_process(self, pid: int) -> None:
        self._tracker.untrack(pid)

    def _update_tracked(self, walked: bool = False) -> None:
        """Refresh tracked processes from a walk of our tree (``walked``: the one just done).

        The sample's own walk already read our descendants (``ProcessTracker.update``).
        """
        if not self._tracked:  # the common idle case: no work on the sampler's hot path
            return
        with self._lock:
            if not walked:
                self._walk_tree()
            reader = self._tree_reader
            assert reader is not None
            self._tracker.update(reader)

    def get_tracked_processes(self) -> list[ProcessInfo]:
        """Live tracked processes with fresh memory figures; dead ones drop out."""
        self._update_tracked()
        records = self._tracker.snapshot()
        return [
            ProcessInfo(r.pid, r.name, r.is_ffmpeg, r.memory_mb, r.peak_memory_mb, r.started_at)
            for r in records
        ]

    def get_ffmpeg_processes(self) -> list[ProcessInfo]:
        return [p for p in self.get_tracked_processes() if p.is_ffmpeg]


# --- singleton (the budget context and memory_guard live in guard.py) -----------------------

_monitor: MemoryMonitor | None = None
_monitor_lock = threading.Lock()


def get_memory_monitor() -> MemoryMonitor:
    """The process-wide monitor (created on first call, not started)."""
    global _monitor
    if _monitor is None:
        with _monitor_lock:
            if _monitor is None:
                _monitor = MemoryMonitor()
    return _monitor


__all__ = [
    "MemoryGuard",
    "MemoryMonitor",
    "MemoryStats",
    "ProcessInfo",
    "current_budget_mb",
    "get_memory_monitor",
    "memory_guard",
]
