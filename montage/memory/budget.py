"""Admission control: reserve memory before starting work, wait (fairly) when it does not fit.

Why: peak memory of an ffmpeg job is predictable from its settings, so starting a job only when
its predicted peak fits turns "fewer workers under pressure" into a property of the code rather
than a flag someone must remember to read. A reservation counts as the larger of its estimate
and the real RSS of the processes attached to it, so an underestimate cannot hide.

Admission rule: (our tree's usage not attributable to reservations) + (sum of outstanding
reservations) + request <= usable budget, where usable = budget total minus ``headroom_pct``.
Waiters are served first come, first served: a small late request never overtakes a large
early one, so big jobs cannot starve.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from montage.errors import ConfigError, InsufficientMemoryError
from montage.memory.monitor import MemoryMonitor, current_budget_mb, get_memory_monitor
from montage.memory.usage import process_tree_memory

logger = logging.getLogger("montage.memory")

MIB = 1024 * 1024
RECHECK_S = 0.1  # usage changes without a release: re-check this often while waiting
WAIT_LOG_S = 30.0  # a waiter without timeout says who blocks it this often
CANCEL_WAITS: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "montage_cancel_waits", default=None
)
"""Set by a job runner in its worker threads: once the event is set, their waits for room end
(InsufficientMemoryError) instead of outliving the job that was stopped."""

NOTHING_TO_WAIT_FOR_S = 15.0
"""How long a request waits when no reservation is held and it still does not fit."""


def _pid_identity(pid: int) -> float | None:
    """The start time of ``pid`` (None if gone), so a reused PID is never counted."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass
class Reservation:
    """Memory set aside for one job; attach its pids so real use replaces the estimate."""

    name: str
    reserved_mb: float
    created_at: float = field(default_factory=time.time)
    _pids: dict[int, float] = field(default_factory=dict, repr=False)

    def attach_pid(self, pid: int) -> None:
        """Count this process (and its descendants) against the reservation."""
        create_time = _pid_identity(pid)
        if create_time is not None:
            self._pids[pid] = create_time

    def actual_mb(self) -> float:
        """Live RSS of the attached process trees (0 once they have exited)."""
        total_bytes = 0
        for pid, create_time in list(self._pids.items()):
            if _pid_identity(pid) != create_time:
                continue
            total_bytes += process_tree_memory(pid).tree_rss_bytes
        return total_bytes / MIB

    def counted_mb(self, actual_mb: float | None = None) -> float:
        """What admission charges: the estimate, or more if the job really uses more."""
        return max(self.reserved_mb, self.actual_mb() if actual_mb is None else actual_mb)


@dataclass(frozen=True)
class _Snapshot:
    """One evaluation of the budget, kept for the error message."""

    usable_mb: float
    free_mb: float
    source: str


class MemoryBudget:
    """Reservations against the usable budget, admitted FIFO."""

    def __init__(
        self,
        total_mb: float | None = None,
        *,
        monitor: MemoryMonitor | None = None,
        headroom_pct: float = 10.0,
    ) -> None:
        if total_mb is not None and not total_mb > 0:
            raise ConfigError(f"budget total_mb must be > 0, got {total_mb!r}")
        if not 0 <= headroom_pct < 100:
            raise ConfigError(f"headroom_pct must be in [0, 100), got {headroom_pct!r}")
        self._total_mb = total_mb
        self._monitor = monitor
        self._headroom = headroom_pct / 100.0
        self._cond = threading.Condition(threading.RLock())
        self._active: list[Reservation] = []
        self._queue: deque[int] = deque()
        self._tickets = itertools.count()

    @property
    def usable_fraction(self) -> float:
        """The share of a budget that reservations may use (1 minus the headroom)."""
        return 1.0 - self._headroom

    @property
    def reserved_mb(self) -> float:
        """Sum of the outstanding estimates."""
        with self._cond:
            return sum(r.reserved_mb for r in self._active)

    def holders(self) -> list[tuple[str, float]]:
        """(name, counted MiB) of every outstanding reservation, oldest first."""
        with self._cond:
            active = list(self._active)
        return [(r.name, r.counted_mb()) for r in active]

    def _monitor_or_global(self) -> MemoryMonitor:
        return self._monitor if self._monitor is not None else get_memory_monitor()

    def _total(self, tree_mb: float) -> tuple[float, str]:
        """The whole budget and where it came from (explicit, configured/guard, or machine)."""
        if self._total_mb is not None:
            return self._total_mb, "explicit"
        monitor = self._monitor
        budget = monitor.budget_mb() if monitor is not None else current_budget_mb()
        if budget is not None:
            return budget, "configured"
        monitor = self._monitor_or_global()
        history = monitor.history() if monitor.running else []
        fresh = history and time.time() - history[-1].timestamp < 1.0
        # A running sampler's last sample is fresh enough; sampling here would run the level
        # callbacks while this budget's lock is held.
        stats = history[-1] if fresh else monitor.get_current_stats()
        return tree_mb + stats.available_mb, "machine"

    def _snapshot(self) -> _Snapshot:
        """Evaluate free memory now (caller holds the lock)."""
        tree_mb = process_tree_memory().tree_rss_bytes / MIB
        total_mb, source = self._total(tree_mb)
        usable_mb = total_mb * (1.0 - self._headroom)
        actuals = [r.actual_mb() for r in self._active]
        unattributed_mb = max(0.0, tree_mb - sum(actuals))
        held_mb = sum(r.counted_mb(a) for r, a in zip(self._active, actuals, strict=True))
        return _Snapshot(usable_mb, usable_mb - unattributed_mb - held_mb, source)

    def _describe(self, mb: float, name: str, snap: _Snapshot, why: str) -> str:
        held = ", ".join(f"{r.name} ({r.reserved_mb:.0f} MiB)" for r in self._active) or "none"
        return (
            f"cannot reserve {mb:.0f} MiB for {name!r}: {why}; {max(snap.free_mb, 0):.0f} MiB "
            f"free of a usable {snap.usable_mb:.0f} MiB ({snap.source} budget minus "
            f"{self._headroom * 100:.0f}% headroom); reservations held by: {held}"
        )

    def _admit(self, mb: float, name: str, timeout: float | None) -> Reservation:
        deadline = None if timeout is None else time.monotonic() + timeout
        next_log = time.monotonic() + WAIT_LOG_S
        hopeless_since: float | None = None
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            try:
                while True:
                    snap = self._snapshot()
                    if mb > snap.usable_mb:
                        why = "larger than the whole usable budget"
                        raise InsufficientMemoryError(
                            self._describe(mb, name, snap, why),
                            requested_mb=mb,
                            free_mb=max(snap.free_mb, 0.0),
                        )
                    if self._queue[0] == ticket and mb <= snap.free_mb:
                        reservation = Reservation(name, mb)
                        self._active.append(reservation)
                        return reservation
                    cancel = CANCEL_WAITS.get()
                    if cancel is not None and cancel.is_set():
                        raise InsufficientMemoryError(
                            self._describe(mb, name, snap, "cancelled: the job was stopped"),
                            requested_mb=mb,
                            free_mb=max(snap.free_mb, 0.0),
                        )
                    now = time.monotonic()
                    # Nothing is reserved, so no release will make room: only memory used
                    # outside reservations can shrink. Give that a while, then say so.
                    if self._active or self._queue[0] != ticket:
                        hopeless_since = None
                    elif hopeless_since is None:
                        hopeless_since = now
                    elif now - hopeless_since >= NOTHING_TO_WAIT_FOR_S:
                        why = (
                            f"no reservation is held, yet {snap.usable_mb - snap.free_mb:.0f} MiB "
                            f"of the budget stayed in use for {NOTHING_TO_WAIT_FOR_S:.0f} s "
                            "(by this process tree outside reservations)"
                        )
                        raise InsufficientMemoryError(
                            self._describe(mb, name, snap, why),
                            requested_mb=mb,
                            free_mb=max(snap.free_mb, 0.0),
                        )
                    if deadline is not None and now >= deadline:
                        why = f"timed out after {timeout:.1f} s"
                        raise InsufficientMemoryError(
                            self._describe(mb, name, snap, why),
                            requested_mb=mb,
                            free_mb=max(snap.free_mb, 0.0),
                        )
                    if now >= next_log:
                        next_log = now + WAIT_LOG_S
                        logger.warning("%s", self._describe(mb, name, snap, "still waiting"))
                    wait_s = RECHECK_S if deadline is None else min(RECHECK_S, deadline - now)
                    self._cond.wait(max(wait_s, 0.0))
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def _release(self, reservation: Reservation) -> None:
        with self._cond:
            if reservation in self._active:
                self._active.remove(reservation)
            self._cond.notify_all()

    @contextmanager
    def reserve(self, mb: float, name: str, timeout: float | None = None) -> Iterator[Reservation]:
        """Hold ``mb`` MiB for the block; waits FIFO for room, up to ``timeout`` seconds.

        Raises ``InsufficientMemoryError`` at once if ``mb`` exceeds the whole usable budget,
        or when ``timeout`` passes first. ``timeout=None`` waits as long as it takes.
        """
        if not mb >= 0:
            raise ConfigError(f"reservation size must be >= 0 MiB, got {mb!r}")
        reservation = self._admit(float(mb), name, timeout)
        try:
            yield reservation
        finally:
            self._release(reservation)


_budget: MemoryBudget | None = None
_budget_lock = threading.Lock()


def get_memory_budget() -> MemoryBudget:
    """The process-wide budget (follows the global monitor's configured limit)."""
    global _budget
    if _budget is None:
        with _budget_lock:
            if _budget is None:
                _budget = MemoryBudget()
    return _budget


@contextmanager
def memory_constrained_operation(
    estimated_mb: float, name: str = "operation", timeout: float | None = None
) -> Iterator[Reservation]:
    """Run a block only once ``estimated_mb`` fits in the process-wide budget."""
    with get_memory_budget().reserve(estimated_mb, name, timeout=timeout) as reservation:
        yield reservation


__all__ = [
    "MemoryBudget",
    "Reservation",
    "get_memory_budget",
    "memory_constrained_operation",
]
