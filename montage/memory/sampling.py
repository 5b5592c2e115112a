"""The sampler's machinery: the thread that drives it and the band where its level cannot move.

Both exist for one reason: the monitor samples ten times a second for the life of a job, so
the wake-up and the per-tick classification are its two steady costs, and each is cut here
(the measurements are in benchmarks/bench_monitor.py). ``monitor`` and ``guard`` use them.
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
from collections.abc import Callable

from montage.memory.pressure import MemoryPressureLevel, PressureThresholds

logger = logging.getLogger("montage.memory")


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
