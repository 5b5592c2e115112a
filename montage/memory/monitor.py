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

import contextvars
import dataclasses
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from montage.errors import ConfigError, MemoryLimitExceeded
from montage.memory.limits import MemoryLimit, find_memory_limit
from montage.memory.pressure import (
    MemoryPressureLevel,
    PressureThresholds,
    classify,
    effective_percent,
)
from montage.memory.usage import ProcessTreeReader, UsageReader, process_tree_memory

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


class _SteadyBand:
    """Where ``classify(..., previous=level)`` is certain to return ``level`` unchanged.

    From ``classify``'s rules: a fresh level above ``level`` needs ``percent`` at the next
    entry threshold; leaving ``level`` downwards needs ``percent`` below its entry threshold
    minus the hysteresis; PSI ``full`` escalates only below HIGH; the available-memory floor
    forces CRITICAL, which only matters below CRITICAL. Inside all four bounds the level
    stays, so the sampler need not run ``classify`` (tens of µs with cold caches). NaN fails
    every comparison and so always goes to ``classify``.
    """

    __slots__ = ("available_floor_mb", "high_pct", "level", "low_pct", "psi_limit", "thresholds")

    def __init__(self, level: MemoryPressureLevel, thresholds: PressureThresholds) -> None:
        rank = level.rank
        self.level = level
        self.thresholds = thresholds
        self.low_pct = (
            thresholds.entry_pct(level) - thresholds.hysteresis_pct if rank > 0 else -math.inf
        )
        self.high_pct = (
            thresholds.entry_pct(MemoryPressureLevel.from_rank(rank + 1))
            if level is not MemoryPressureLevel.CRITICAL
            else math.inf
        )
        high_rank = MemoryPressureLevel.HIGH.rank
        self.psi_limit = thresholds.psi_full_high_pct if rank < high_rank else math.inf
        self.available_floor_mb = (
            thresholds.min_available_mb if level is not MemoryPressureLevel.CRITICAL else -math.inf
        )

    def holds(self, percent: float, available_mb: float, psi_full: float | None) -> bool:
        return (
            self.low_pct <= percent < self.high_pct
            and available_mb >= self.available_floor_mb
            and (psi_full is None or psi_full < self.psi_limit)
        )


class _Ticker:
    """A daemon thread that calls ``fn`` every ``interval_s()`` seconds until stopped.

    It sleeps in ``poll`` on a pipe rather than ``Event.wait(timeout)``: on this 2-vCPU VM
    a timed ``Event.wait`` wake-up costs ~90 µs of CPU, ``select`` ~70 µs and a reused
    ``poll`` object ~57 µs (no fd lists rebuilt per call), and the sampler wakes ten times a
    second for the life of the job. Writing to the pipe still stops it at once.
    """

    def __init__(self, fn: Callable[[], object], interval_s: Callable[[], float], name: str):
        self._fn = fn
        self._interval_s = interval_s
        self._read_fd, self._write_fd = os.pipe()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        failures = 0
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        try:
            while not poller.poll(self._interval_s() * 1000.0):
                try:
                    self._fn()
                    failures = 0
                except Exception:
                    failures += 1
                    if failures in (1, 10, 100) or failures % 1000 == 0:
                        logger.exception("memory sample failed (%d in a row)", failures)
        finally:
            os.close(self._read_fd)

    def stop(self) -> None:
        """Wake the thread with a byte on the pipe and wait for it (unless called from it)."""
        if self._write_fd >= 0:
            os.write(self._write_fd, b"x")
            os.close(self._write_fd)
            self._write_fd = -1
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


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
        self._tracked: dict[int, _Tracked] = {}
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

    # --- tracked processes --------------------------------------------------------------

    def track_process(self, pid: int, name: str, is_ffmpeg: bool = False) -> None:
        """Follow ``pid`` (and its descendants) until it exits; ignored if already gone."""
        start_ticks = _start_ticks(pid, self._root)
        if start_ticks is None:
            logger.debug("not tracking pid %d (%s): already gone", pid, name)
            return
        self._track(_Tracked(pid, start_ticks, name, is_ffmpeg, time.time()))

    def _track(self, record: _Tracked) -> None:
        with self._lock:
            self._tracked[record.pid] = record
        self._refresh(record)

    def untrack_process(self, pid: int) -> None:
        with self._lock:
            self._tracked.pop(pid, None)

    def _refresh(self, record: _Tracked) -> bool:
        """Update live/peak memory; False if the process is gone (or the pid was reused)."""
        if _start_ticks(record.pid, self._root) != record.start_ticks:
            return False
        tree_bytes = process_tree_memory(record.pid, self._root).tree_rss_bytes
        record.memory_mb = tree_bytes / MIB
        record.peak_memory_mb = max(record.peak_memory_mb, record.memory_mb)
        return True

    def _update_tracked(self, walked: bool = False) -> None:
        """Refresh tracked processes from a walk of our tree (``walked``: the one just done).

        Tracked ffmpeg are our descendants, so the sample's own walk already read them: their
        start time (identity) and subtree RSS come from it, at no extra cost. Only a process
        that is not in the walk (not ours, or gone) is read on its own (``_refresh``).
        """
        if not self._tracked:  # the common idle case: no work on the sampler's hot path
            return
        with self._lock:
            if not walked:
                self._walk_tree()
            reader = self._tree_reader
            assert reader is not None
            dead = []
            for record in list(self._tracked.values()):
                found = reader.walked(record.pid)
                if found is None:
                    alive = self._refresh(record)
                elif found[0] == record.start_ticks:
                    alive = True
                    record.memory_mb = found[1] / MIB
                    record.peak_memory_mb = max(record.peak_memory_mb, record.memory_mb)
                else:  # a zombie, or the pid now belongs to another process
                    alive = False
                if not alive:
                    dead.append(record)
            for record in dead:
                if self._tracked.get(record.pid) is record:
                    del self._tracked[record.pid]

    def get_tracked_processes(self) -> list[ProcessInfo]:
        """Live tracked processes with fresh memory figures; dead ones drop out."""
        self._update_tracked()
        with self._lock:
            records = list(self._tracked.values())
        return [
            ProcessInfo(r.pid, r.name, r.is_ffmpeg, r.memory_mb, r.peak_memory_mb, r.started_at)
            for r in records
        ]

    def get_ffmpeg_processes(self) -> list[ProcessInfo]:
        return [p for p in self.get_tracked_processes() if p.is_ffmpeg]


# --- singleton and budget context -----------------------------------------------------------

_GUARD_BUDGET_MB: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "montage_guard_budget_mb", default=None
)
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


def current_budget_mb() -> float | None:
    """The budget jobs must obey here: configured, narrowed by enclosing memory_guards."""
    return get_memory_monitor().budget_mb()


class MemoryGuard:
    """A ``memory_guard`` block: its limit, its peak tree memory, and the monitor's API.

    Attributes the guard does not have are looked up on the monitor, so the spec's
    ``with memory_guard(max_memory_mb=1024) as monitor: monitor.get_current_stats()`` works.
    """

    def __init__(self, monitor: MemoryMonitor, limit_mb: float | None, on_exceed: str) -> None:
        self.monitor = monitor
        self.limit_mb = limit_mb
        self.on_exceed = on_exceed
        self.peak_memory_mb = 0.0
        self.exceeded = False
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.monitor, name)

    def sample(self) -> float:
        """Read our tree's RSS now and fold it into the peak; returns MiB."""
        tree_mb = process_tree_memory(None, self.monitor.root).tree_rss_bytes / MIB
        self.observe(tree_mb)
        return tree_mb

    def observe(self, tree_mb: float, stats: MemoryStats | None = None) -> None:
        """Record a tree figure; the first one above the limit reports the breach once."""
        with self._lock:
            self.peak_memory_mb = max(self.peak_memory_mb, tree_mb)
            crossed = self.limit_mb is not None and tree_mb > self.limit_mb and not self.exceeded
            self.exceeded = self.exceeded or crossed
        if crossed and self.on_exceed != "ignore":
            logger.warning(
                "memory_guard: process tree at %.1f MiB exceeds the block's limit of %.1f MiB",
                tree_mb,
                self.limit_mb,
            )
            self.monitor._fire_callbacks(
                MemoryPressureLevel.CRITICAL, stats or self.monitor.get_current_stats()
            )

    def _on_stats(self, stats: MemoryStats) -> None:
        self.observe(stats.tree_memory_mb, stats)


def _narrowest(*values_mb: float | None) -> float | None:
    present = [v for v in values_mb if v is not None]
    return min(present) if present else None


@contextmanager
def memory_guard(
    max_memory_mb: float | None = None, on_exceed: str = "warn"
) -> Iterator[MemoryGuard]:
    """Run a block under a (narrower) budget and record its peak tree memory.

    Inside, ``current_budget_mb()`` is the smaller of the enclosing budget and
    ``max_memory_mb``, per thread/task, so jobs started inside obey it. Exceeding logs and
    fires the monitor's callbacks once with CRITICAL ("warn", "raise"); "raise" also raises
    ``MemoryLimitExceeded`` when the block ends; "ignore" only records ``exceeded``.
    """
    if on_exceed not in ("warn", "raise", "ignore"):
        raise ConfigError(f"on_exceed must be 'warn', 'raise' or 'ignore', got {on_exceed!r}")
    if max_memory_mb is not None and not max_memory_mb > 0:
        raise ConfigError(f"max_memory_mb must be > 0, got {max_memory_mb!r}")
    monitor = get_memory_monitor()
    guard = MemoryGuard(monitor, _narrowest(monitor.budget_mb(), max_memory_mb), on_exceed)
    token = _GUARD_BUDGET_MB.set(_narrowest(_GUARD_BUDGET_MB.get(), max_memory_mb))
    monitor.add_sample_listener(guard._on_stats)
    # Without the global sampler, a private one follows the block's peak between entry and exit.
    private = None if monitor.running else _Ticker(guard.sample, monitor._interval, "montage-guard")
    try:
        guard.sample()
        yield guard
        guard.sample()
    finally:
        if private is not None:
            private.stop()
        monitor.remove_sample_listener(guard._on_stats)
        _GUARD_BUDGET_MB.reset(token)
    if guard.exceeded and on_exceed == "raise":
        raise MemoryLimitExceeded(
            f"memory_guard block peaked at {guard.peak_memory_mb:.1f} MiB, "
            f"above its limit of {guard.limit_mb:.1f} MiB",
            limit_mb=guard.limit_mb or 0.0,
            peak_mb=guard.peak_memory_mb,
        )


__all__ = [
    "MemoryGuard",
    "MemoryMonitor",
    "MemoryStats",
    "ProcessInfo",
    "current_budget_mb",
    "get_memory_monitor",
    "memory_guard",
]
