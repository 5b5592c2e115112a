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
import functools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from montage.errors import ConfigError
from montage.memory import native as _native_mod
from montage.memory.guard import _GUARD_BUDGET_MB as _GUARD_BUDGET_MB
from montage.memory.guard import MemoryGuard, current_budget_mb, memory_guard
from montage.memory.guard import _narrowest as _narrowest
from montage.memory.limits import MemoryLimit, find_memory_limit
from montage.memory.native import NativeHandle, NativeTicker
from montage.memory.pressure import MemoryPressureLevel, PressureThresholds
from montage.memory.sampling import LEVEL, TREE, RawSample, _Sampler
from montage.memory.sampling import _SteadyBand as _SteadyBand
from montage.memory.sampling import _Ticker as _Ticker
from montage.memory.tracking import ProcessTracker
from montage.memory.tracking import _start_ticks as _start_ticks
from montage.memory.tracking import _Tracked as _Tracked

logger = logging.getLogger("montage.memory")

MIB = 1024 * 1024
_NO_CEILING = 2**63 - 1  # guards without a limit: the C side only wakes Python on a full ring
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


def _wall_offset() -> float:
    """What to add to a ``time.monotonic()`` reading to get ``time.time()``."""
    return time.time() - time.monotonic()


def _stats(raw: RawSample, wall_offset: float) -> MemoryStats:
    """The ``MemoryStats`` of one tick (built only when a caller, callback or listener asks)."""
    taken, limit, used, machine_available, swap_used, psi_some, psi_full = raw[:7]
    process_rss, tree_rss, percent, level = raw[7:]
    budget_bytes = limit.configured_bytes
    available_mb = machine_available / MIB
    if budget_bytes is not None:
        available_mb = min(available_mb, max(0, budget_bytes - tree_rss) / MIB)
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
        timestamp=taken + wall_offset,
    )


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
        self._sampler: _Sampler | None = None
        self._level = MemoryPressureLevel.LOW
        self._history: deque[MemoryStats] = deque(maxlen=max(1, history_size))
        # Ticks not yet turned into MemoryStats (history() converts them): the sampler thread
        # appends a tuple, which costs it a fraction of building the frozen dataclass.
        self._pending: deque[RawSample | MemoryStats] = deque(maxlen=max(1, history_size))
        self._callbacks: list[LevelCallback] = []
        self._listeners: list[TickListener] = []
        # Active memory_guard blocks (any thread): every sample's tree RSS is folded into their
        # peaks, C ring entries included (``_drain_native``), without waking Python per tick.
        self._watchers: list[MemoryGuard] = []
        self._tracker = ProcessTracker(self._root, self._lock)
        self._tracked = self._tracker.records  # the same dict: the sampler's cheap "any?" test
        self._ticker: _Ticker | NativeTicker | None = None
        # The native sampler's handle while it runs (montage.memory.native), and the limit its
        # ring entries were measured against (the sampler's when it was last armed).
        self._native: NativeHandle | None = None
        self._native_limit: MemoryLimit | None = None
        # The tracked records the C side follows, in the order of its groups (``_arm_native``).
        self._native_followed: list[_Tracked] = []

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
                if self._native is not None:
                    self._native.set_interval(self._interval_s)
            self._disarm_native()  # the next tick runs in Python with the new settings

    def budget_mb(self) -> float | None:
        """The budget in the caller's context: configured, narrowed by enclosing guards."""
        configured = self.limit.configured_bytes
        return _narrowest(_GUARD_BUDGET_MB.get(), None if configured is None else configured / MIB)

    # --- sampling -----------------------------------------------------------------------

    def get_current_stats(self) -> MemoryStats:
        """Sample now, update the level and history, then run callbacks (outside the lock)."""
        stats = self._tick(os.getpid(), True)
        assert stats is not None
        return stats

    def _tick(self, pid: int, want_stats: bool = False) -> MemoryStats | None:
        """One sample of ``pid``'s tree; the sampler thread's hot path (``want_stats`` False).

        A steady tick (same level, no listener) only appends the ``RawSample`` to the
        history; the ``MemoryStats`` is built when a callback, listener or caller needs it.
        """
        lock = self._lock
        lock.acquire()  # not ``with``: its __enter__/__exit__ lookups cost ~7 µs on a cold tick
        try:
            sampler = self._sampler or self._open_sampler()
            previous = self._level
            native = self._native
            if native is not None:  # hold the C tick, take its samples first (history order)
                native.pause()
            try:
                if native is not None:
                    self._drain_native(native)
                    self._fold_native(native)
                raw = sampler.sample(previous, self._thresholds, pid)
                crossed = self._watch(raw[TREE]) if self._watchers else None
                tracker = self._tracker
                if tracker.records and (  # skipped while no walked answer has changed
                    tracker.synced_reader is not sampler.tree
                    or tracker.synced_version != sampler.tree.version
                ):
                    tracker.update(sampler.tree)  # off the walk just done
                level = self._level = raw[LEVEL]
                if native is not None:
                    self._arm_native(native, sampler, level)
            finally:
                if native is not None:
                    native.resume()
            changed = level is not previous
            if not (changed or want_stats or self._listeners or crossed):
                self._pending.append(raw)
                return None
            stats = _stats(raw, _wall_offset())
            self._pending.append(stats)
            callbacks = list(self._callbacks) if changed else None
            listeners = list(self._listeners) if self._listeners else None
        finally:
            lock.release()
        if callbacks:
            for callback in callbacks:
                self._call_safely(callback, previous, level, stats)
        if crossed:
            for guard in crossed:
                self._call_safely(guard._report, raw[TREE] / MIB, stats)
        if listeners:
            for listener in listeners:
                self._call_safely(listener, stats)
        return stats

    def _watch(self, tree_rss: int) -> list[MemoryGuard]:
        """Fold a tree RSS into every active guard's peak; the guards it takes above their
        limit for the first time (``_tick`` reports them, outside the lock)."""
        tree_mb = tree_rss / MIB
        return [guard for guard in self._watchers if guard._record(tree_mb)]

    def _drain_native(self, native: NativeHandle) -> None:
        """Move the C ring's steady samples into the history, as ``RawSample`` tuples.

        Every entry was taken inside the band of the current level (a level change re-arms
        the C side under ``pause()``, after this drain), against ``_native_limit``, and at or
        under the tree ceiling of the active guards (``_arm_native``; a guard added since was
        added after a drain under ``disarm``): folding them only raises the guards' peaks.
        """
        entries = native.drain()
        if entries:
            limit, level, append = self._native_limit, self._level, self._pending.append
            assert limit is not None
            for taken, used, available, swap, some, full, own, tree, percent in entries:
                append((taken, limit, used, available, swap, some, full, own, tree, percent, level))
            if self._watchers:
                self._watch(max(entry[7] for entry in entries))

    def _fold_native(self, native: NativeHandle) -> None:
        """Take the tracked processes' RSS and peaks the C ticks measured since the last look.

        What ``ProcessTracker.update`` would have set had each of those ticks run in Python:
        the subtree RSS of the latest one, and the largest of them for the peak. Records that
        were untracked (or replaced) since the C side was armed are left alone.
        """
        followed = self._native_followed
        if not followed:
            return
        taken = native.take_tracked()
        if not taken:
            return
        records = self._tracker.records
        for index, current, peak in taken:
            record = followed[index]
            if records.get(record.pid) is record:
                record.memory_mb = current / MIB
                peak_mb = peak / MIB
                if peak_mb > record.peak_memory_mb:
                    record.peak_memory_mb = peak_mb
        # The Python reader did not see those ticks: its next walk must update the records
        # even if its own figures have not moved since it last did.
        self._tracker.synced_reader = None

    def _arm_native(
        self, native: NativeHandle, sampler: _Sampler, level: MemoryPressureLevel
    ) -> None:
        """Let the C side take the steady ticks again, in ``level``'s band (under ``pause``).

        Each tracked process found in the last walk is handed over as a group (its subtree's
        members): the C side follows its RSS and peak without waking Python. Only if one
        cannot be followed so (not our descendant, start time unknown) does every moving
        member wake Python, as the Python sampler would update it on each tick.
        """
        band = sampler.band
        if band is None or band.level is not level or band.thresholds is not self._thresholds:
            band = sampler.band = _SteadyBand(level, self._thresholds)
        tree = sampler.tree
        followed: list[_Tracked] = []
        groups: list[list[int]] = []
        wake_on_member = False
        for record in self._tracker.records.values():
            found = tree.walked(record.pid)
            members = None
            if found is not None and found[0] == record.start_ticks:
                members = tree.subtree_members(record.pid)
            if members is None:
                wake_on_member = True
            else:
                followed.append(record)
                groups.append(members)
        # Guards: wake Python above the smallest limit not yet exceeded (int() rounds down, so
        # a ring entry is never above a limit); with no such limit, only when the ring is full.
        limits = [g.limit_mb for g in self._watchers if g.limit_mb is not None and not g.exceeded]
        ceiling = int(min(limits) * MIB) if limits else _NO_CEILING if self._watchers else None
        try:
            _native_mod.arm(
                native,
                sampler,
                band,
                wake_every=bool(self._listeners),
                wake_on_member=wake_on_member,
                groups=groups,
                tree_ceiling=ceiling,
            )
        except Exception:
            native.disarm()  # its old band may be wrong now: every tick asks Python instead
            raise
        self._native_limit = sampler.limit
        self._native_followed = followed

    def _disarm_native(self) -> None:
        """Make the C side hand its next tick to Python (settings, listeners, records changed)."""
        native = self._native
        if native is not None:
            native.disarm()

    def _open_sampler(self) -> _Sampler:
        sampler = self._sampler = _Sampler(self._limit or self.limit, self._root)
        return sampler

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
        """The latest samples, oldest first (at most ``history_size``)."""
        with self._lock:
            if self._native is not None:
                self._drain_native(self._native)
                self._fold_native(self._native)
            history, offset = self._history, _wall_offset()
            for item in self._pending:
                history.append(item if isinstance(item, MemoryStats) else _stats(item, offset))
            self._pending.clear()
            return list(history)

    def register_callback(self, fn: LevelCallback) -> None:
        with self._lock:
            if fn not in self._callbacks:
                self._callbacks.append(fn)

    def unregister_callback(self, fn: LevelCallback) -> None:
        with self._lock:
            if fn in self._callbacks:
                self._callbacks.remove(fn)

    def add_peak_watcher(self, guard: MemoryGuard) -> None:
        """Fold every sample's tree RSS into ``guard`` until removed (``memory_guard``); one
        above its limit reaches Python within a tick, where ``_tick`` reports it."""
        with self._lock:
            native = self._native
            if native is not None:
                native.disarm()  # no C tick runs past here; the next wakes Python, which arms
                self._drain_native(native)  # with the guard's limit; earlier samples: not its
            self._watchers.append(guard)

    def _fold_ring(self) -> None:
        """Fold the native sampler's ring into the history and the guards' peaks now."""
        with self._lock:
            if self._native is not None and self._watchers:
                self._drain_native(self._native)

    def remove_peak_watcher(self, guard: MemoryGuard) -> None:
        """Stop folding samples into ``guard``, after the C ring's last ones. The ceiling left
        armed may be lower than the remaining guards need: that costs one wake-up at most."""
        with self._lock:
            native = self._native
            if native is not None:
                native.pause()
            try:
                if native is not None:
                    self._drain_native(native)
                if guard in self._watchers:
                    self._watchers.remove(guard)
            finally:
                if native is not None:
                    native.resume()

    def add_sample_listener(self, fn: TickListener) -> None:
        """Called with every sample (the native sampler then wakes Python on every tick)."""
        with self._lock:
            self._listeners.append(fn)
            self._disarm_native()  # listeners see every tick: the C side wakes Python for each

    def remove_sample_listener(self, fn: TickListener) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    # --- background sampler -------------------------------------------------------------

    @property
    def running(self) -> bool:
        ticker = self._ticker
        return ticker is not None and ticker.alive

    @property
    def sampler_kind(self) -> str:
        """``"native"`` (C thread, ``montage.memory.native``) or ``"python"``: the sampler that
        runs, or that ``start()`` would run."""
        if isinstance(self._ticker, NativeTicker) and self._ticker.alive:
            return "native"
        return "python" if self.running else _native_mod.sampler_kind()

    def start(self) -> None:
        """Start the sampler (idempotent): native if built and enabled, else a Python thread."""
        with self._lock:
            if not self.running:  # the thread samples the tree of the process that started it
                tick = functools.partial(self._tick, os.getpid())
                if _native_mod.enabled():
                    capacity = self._pending.maxlen or 1
                    handle = _native_mod.new_handle(self._interval_s, capacity)
                    self._native, self._native_limit = handle, None
                    self._ticker = NativeTicker(handle, tick, "montage-memory")
                    _with_native.add(self)
                else:
                    self._ticker = _Ticker(tick, self._interval, "montage-memory")

    def stop(self) -> None:
        """Stop the sampler and wait for it (idempotent; safe from a callback)."""
        with self._lock:
            ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
        if isinstance(ticker, NativeTicker):
            with self._lock:
                if self._native is ticker.handle:  # its last samples join the history
                    self._drain_native(ticker.handle)
                    self._fold_native(ticker.handle)
                    self._native, self._native_followed = None, []

    def close(self) -> None:
        """Stop sampling and release kept-open files."""
        self.stop()
        with self._lock:
            self._close_reader()

    def _close_reader(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None

    # --- tracked processes (tracking.py) ------------------------------------------------

    def track_process(self, pid: int, name: str, is_ffmpeg: bool = False) -> None:
        """Follow ``pid`` (and its descendants) until it exits; ignored if already gone."""
        self._tracker.track(pid, name, is_ffmpeg)
        self._disarm_native()  # the next tick updates it in Python, then arms for its changes

    def _track(self, record: _Tracked) -> None:
        self._tracker.add(record)
        self._disarm_native()

    def untrack_process(self, pid: int) -> None:
        self._tracker.untrack(pid)

    def _update_tracked(self) -> None:
        """Refresh tracked processes from a fresh walk of our tree (``ProcessTracker.update``).

        Each sample does the same off its own walk (``_tick``).
        """
        if not self._tracked:
            return
        with self._lock:
            sampler = self._sampler or self._open_sampler()
            native = self._native
            if native is None:
                sampler.tree.read_totals()
                self._tracker.update(sampler.tree)
                return
            native.pause()  # the C ticks' figures first, then this fresher walk
            try:
                self._fold_native(native)
                sampler.tree.read_totals()
                self._tracker.update(sampler.tree)
            finally:
                native.resume()

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


# Monitors whose native sampler may be running: a forked child has no C thread (the handle
# marks itself dead there), so it forgets the handle and its start() makes a new one.
_with_native: weakref.WeakSet[MemoryMonitor] = weakref.WeakSet()


def _forget_native_after_fork() -> None:
    for monitor in list(_with_native):
        monitor._native, monitor._native_followed = None, []
        if isinstance(monitor._ticker, NativeTicker):
            monitor._ticker = None


os.register_at_fork(after_in_child=_forget_native_after_fork)


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
