"""``memory_guard``: run a block under a narrower budget and record its peak tree memory.

The narrowed budget lives in a ContextVar, so it holds per thread/task and jobs started inside
the block obey it (``current_budget_mb``, ``MemoryMonitor.budget_mb``).

Import direction: ``monitor`` imports this module (for the ContextVar); this module reaches the
monitor only inside functions and for type checking, so neither import sees a half-made module.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from montage.errors import ConfigError, MemoryLimitExceeded
from montage.memory.pressure import MemoryPressureLevel
from montage.memory.sampling import _Ticker
from montage.memory.usage import process_tree_memory

if TYPE_CHECKING:
    from montage.memory.monitor import MemoryMonitor, MemoryStats

logger = logging.getLogger("montage.memory")

MIB = 1024 * 1024

_GUARD_BUDGET_MB: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "montage_guard_budget_mb", default=None
)


def current_budget_mb() -> float | None:
    """The budget jobs must obey here: configured, narrowed by enclosing memory_guards."""
    from montage.memory.monitor import get_memory_monitor

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
        self._peak_mb = 0.0
        self.exceeded = False
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.monitor, name)

    @property
    def peak_memory_mb(self) -> float:
        """The block's peak tree memory so far, in MiB (the native sampler's ring included)."""
        self.monitor._fold_ring()
        return self._peak_mb

    def sample(self) -> float:
        """Read our tree's RSS now and fold it into the peak; returns MiB."""
        tree_mb = process_tree_memory(None, self.monitor.root).tree_rss_bytes / MIB
        self.observe(tree_mb)
        return tree_mb

    def observe(self, tree_mb: float, stats: MemoryStats | None = None) -> None:
        """Record a tree figure; the first one above the limit reports the breach once."""
        if self._record(tree_mb):
            self._report(tree_mb, stats)

    def _record(self, tree_mb: float) -> bool:
        """Fold a tree figure into the peak; True for the first one above the limit, which the
        caller then reports (``_report``, outside the monitor's lock)."""
        with self._lock:
            self._peak_mb = max(self._peak_mb, tree_mb)
            crossed = self.limit_mb is not None and tree_mb > self.limit_mb and not self.exceeded
            self.exceeded = self.exceeded or crossed
        return crossed

    def _report(self, tree_mb: float, stats: MemoryStats | None) -> None:
        if self.on_exceed != "ignore":
            logger.warning(
                "memory_guard: process tree at %.1f MiB exceeds the block's limit of %.1f MiB",
                tree_mb,
                self.limit_mb,
            )
            self.monitor._fire_callbacks(
                MemoryPressureLevel.CRITICAL, stats or self.monitor.get_current_stats()
            )


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
    from montage.memory.monitor import get_memory_monitor

    monitor = get_memory_monitor()
    guard = MemoryGuard(monitor, _narrowest(monitor.budget_mb(), max_memory_mb), on_exceed)
    token = _GUARD_BUDGET_MB.set(_narrowest(_GUARD_BUDGET_MB.get(), max_memory_mb))
    monitor.add_peak_watcher(guard)
    # Without the global sampler, a private one follows the block's peak between entry and exit.
    private = None if monitor.running else _Ticker(guard.sample, monitor._interval, "montage-guard")
    try:
        guard.sample()
        yield guard
        guard.sample()
    finally:
        if private is not None:
            private.stop()
        monitor.remove_peak_watcher(guard)
        _GUARD_BUDGET_MB.reset(token)
    if guard.exceeded and on_exceed == "raise":
        raise MemoryLimitExceeded(
            f"memory_guard block peaked at {guard.peak_memory_mb:.1f} MiB, "
            f"above its limit of {guard.limit_mb:.1f} MiB",
            limit_mb=guard.limit_mb or 0.0,
            peak_mb=guard.peak_memory_mb,
        )
