"""The sampler's hot path: the thread that drives it, one tick's measurement, the steady band.

The monitor samples ten times a second for the life of a job, so what one tick costs is paid
36,000 times an hour. Here it is cut to: a ``poll`` wake-up, one ``pread`` per kept-open file
(meminfo, PSI, the pid cursor, each tree member's ``statm``), a few comparisons, and one tuple
(``RawSample``) appended to the history; the ``MemoryStats`` object is built from it only when
someone looks (a level change, a listener, ``history()``). The measurements behind each choice
are in benchmarks/bench_monitor.py and benchmarks/results/monitor.md.
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from montage.memory.limits import MemoryLimit
from montage.memory.pressure import (
    MemoryPressureLevel,
    PressureThresholds,
    classify,
    effective_percent,
)
from montage.memory.usage import ProcessTreeReader, UsageReader

logger = logging.getLogger("montage.memory")

MIB = 1024 * 1024

RawSample = tuple[
    float,
    MemoryLimit,
    int,
    int,
    int,
    float | None,
    float | None,
    int,
    int,
    float,
    MemoryPressureLevel,
]
"""One tick, unconverted: ``time.monotonic()`` when taken, the limit it was measured
against, used bytes, the machine's available bytes, swap used bytes, PSI some / full avg10,
our RSS, our tree's RSS, the effective percent and the level (``LEVEL``). ``MemoryMonitor``
turns it into ``MemoryStats`` (whose ``timestamp`` is wall time)."""

TREE: Final = 8
"""Index of the tree's RSS in a ``RawSample``."""

LEVEL: Final = 10
"""Index of the level in a ``RawSample``."""


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


class _Sampler:
    """The kept-open readers and the steady band: one ``RawSample`` per ``sample`` call.

    Not thread-safe: the monitor calls it under its lock.
    """

    def __init__(self, limit: MemoryLimit, root: Path) -> None:
        self.limit = limit
        self.budget = limit.configured_bytes
        self.host_total = limit.host_total_bytes
        self.usage = UsageReader(limit, root)
        self.tree = ProcessTreeReader(root)
        self.band: _SteadyBand | None = None

    def sample(
        self, previous: MemoryPressureLevel, thresholds: PressureThresholds, pid: int
    ) -> RawSample:
        """Measure once; the level is ``previous`` unless ``classify`` says otherwise.

        ``classify`` runs only outside ``previous``'s steady band (near a threshold, or on a
        change): the band is derived from its rules and a property test checks they agree.
        """
        now = time.monotonic()  # one clock a tick: the wall time is derived when converted
        used, available, swap_used, psi_some, psi_full, ceiling, _ = self.usage.sample()
        process_rss, tree_rss = self.tree.read_totals(pid, now)
        budget = self.budget
        total = ceiling or self.host_total
        if budget is None and total > 0:
            percent = 100.0 * used / total  # effective_percent without a budget, inlined
        else:
            percent = effective_percent(used, total, tree_rss, budget)
        available_mb = available / MIB
        band = self.band
        if band is None or band.level is not previous or band.thresholds is not thresholds:
            band = self.band = _SteadyBand(previous, thresholds)
        level = previous
        if not (  # band.holds(percent, available_mb, psi_full), inlined for the hot path
            band.low_pct <= percent < band.high_pct
            and available_mb >= band.available_floor_mb
            and (psi_full is None or psi_full < band.psi_limit)
        ):
            level = classify(
                percent,
                available_mb=available_mb,
                psi_full_avg10=psi_full,
                previous=previous,
                thresholds=thresholds,
            )
        return (
            now,
            self.limit,
            used,
            available,
            swap_used,
            psi_some,
            psi_full,
            process_rss,
            tree_rss,
            percent,
            level,
        )

    def close(self) -> None:
        self.usage.close()
        self.tree.close()


def _failed(failures: int) -> int:
    """Log a failed tick (the 1st, 10th, 100th, then every 1000th in a row); the new count.

    Called from an ``except`` block: the traceback logged is the tick's.
    """
    failures += 1
    if failures in (1, 10, 100) or failures % 1000 == 0:
        logger.exception("memory sample failed (%d in a row)", failures)
    return failures


class _Ticker:
    """A daemon thread that calls ``fn`` every ``interval_s()`` seconds until stopped.

    It sleeps in ``poll`` on a pipe: on this 2-vCPU VM a 10 Hz wake-up costs ~50-65 µs of
    CPU in ``poll`` or ``time.sleep``, ~70 in ``Lock.acquire(timeout)`` and ``select``, ~80
    in ``Event.wait`` (benchmarks/results/monitor.md), and unlike ``time.sleep`` a byte on
    the pipe stops it at once.
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
        fn, interval_s = self._fn, self._interval_s
        poll = select.poll()
        poll.register(self._read_fd, select.POLLIN)
        wait = poll.poll
        try:
            while not wait(interval_s() * 1000.0):
                try:
                    fn()
                except Exception:
                    failures = _failed(failures)
                else:
                    failures = 0
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
