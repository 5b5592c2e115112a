"""The native sampler: the monitor's steady 10 Hz tick in a C thread, Python woken only for work.

Why: on a small VM each wake-up of a Python thread runs with cold caches, and the pure-Python
tick (``sampling._Ticker`` + ``MemoryMonitor._tick``) costs several times what the same reads
cost in C (benchmarks/results/monitor.md). With the extension ``_native_sampler`` (compiled at
install by hatch_build.py, Linux only) a pthread re-reads the files the Python readers opened,
computes the same numbers, and appends steady samples to a ring; this module's thread sleeps on
a pipe and runs the ordinary Python tick only when the C side asks: a sample outside the level's
steady band (``sampling._SteadyBand``), a tree above an active ``memory_guard``'s limit, a
tree that may have changed, a file it does not parse the plain way, listeners wanting every
tick, or a configuration to renew. A tracked child's
memory moving (ffmpeg's, nearly every tick of a job) is no such reason: the C side keeps each
tracked subtree's RSS and its peak since Python last looked (``take_tracked``), and the monitor
folds them into its records when they are read (tracked processes, history) or at its next
tick. That Python tick drains the ring into the history first, then arms the C
side again with the readers' fresh state (``arm``), so history, levels, callbacks and tracked
processes behave as with the Python sampler.

``MONTAGE_NATIVE_SAMPLER=0`` (or an extension that failed to build or import) selects the
Python sampler. Nothing starts at import. After ``fork()`` the child has no sampler thread: the
handle marks itself dead there and the monitor forgets it (``MemoryMonitor``'s fork hook).
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Protocol

from montage.memory.sampling import _failed, _Sampler, _SteadyBand

logger = logging.getLogger("montage.memory")

ENV = "MONTAGE_NATIVE_SAMPLER"

NativeRaw = tuple[float, int, int, int, float | None, float | None, int, int, float]
"""A ring entry: monotonic time, used, available, swap used, PSI some / full, own RSS, tree RSS,
percent (a ``RawSample`` without the limit and the level)."""


class NativeHandle(Protocol):
    """The extension's ``Sampler`` (typed here: the extension ships no stub)."""

    wake_fd: int
    running: bool

    def configure(self, *args: object) -> None: ...
    def drain(self) -> list[NativeRaw]: ...
    def measure(self) -> tuple[int, NativeRaw | None]: ...
    def take_reasons(self) -> int: ...
    def take_tracked(self) -> list[tuple[int, int, int]]: ...
    def disarm(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def set_interval(self, interval_s: float) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def counters(self) -> dict[str, int]: ...


_module: ModuleType | None = None
_import_error: str | None = None


def extension() -> ModuleType | None:
    """The compiled extension, or None if it was not built or cannot load here."""
    global _module, _import_error
    if _module is None and _import_error is None:
        try:
            from montage.memory import _native_sampler  # type: ignore[attr-defined]
        except ImportError as error:
            _import_error = str(error)
        else:
            _module = _native_sampler
    return _module


def enabled() -> bool:
    """The native sampler will run: built, importable, and not switched off by the env."""
    return os.environ.get(ENV, "1") != "0" and extension() is not None


def sampler_kind() -> str:
    """``"native"`` or ``"python"``: which sampler ``MemoryMonitor.start()`` runs."""
    return "native" if enabled() else "python"


def python_reason() -> str | None:
    """Why the Python sampler runs instead of the native one (None: it does not). An install
    without a C compiler falls back quietly (pip hides the build hook's warning), so
    ``montage-video status`` says so."""
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0"
    if extension() is None:
        return (
            f"the native sampler is not built ({_import_error}): reinstall with a C compiler "
            "and the Python headers to cut the monitor's CPU about 2.5x"
        )
    return None


def new_handle(interval_s: float, capacity: int) -> NativeHandle:
    module = extension()
    assert module is not None
    handle: NativeHandle = module.Sampler(interval_s, capacity)
    return handle


def arm(
    handle: NativeHandle,
    sampler: _Sampler,
    band: _SteadyBand,
    *,
    wake_every: bool,
    wake_on_member: bool,
    groups: Sequence[Sequence[int]] = (),
    tree_ceiling: int | None = None,
) -> None:
    """Hand the C side the readers' current files and state, and the band to stay in.

    ``groups``: the tracked processes the C side follows, each the indices of its subtree in
    the tree's members (``ProcessTreeReader.subtree_members``); their RSS and peak since the
    last look come back from ``take_tracked()`` instead of waking Python when they move.
    ``wake_on_member``: wake Python whenever a member's RSS moves (a tracked process that no
    group covers). ``tree_ceiling``: wake Python when the tree's RSS goes above it (the
    smallest limit of the active ``memory_guard`` blocks not yet exceeded), in bytes."""
    meminfo, current, stat, key, swap, psi, ceiling = sampler.usage.native_args()
    cursor_fd, cursor, last_check, members = sampler.tree.native_args()
    budget = sampler.budget
    handle.configure(
        meminfo,
        current,
        stat,
        key,
        swap,
        psi,
        cursor_fd,
        cursor,
        sampler.host_total,
        ceiling,
        -1 if budget is None else budget,
        band.low_pct,
        band.high_pct,
        band.available_floor_mb,
        band.psi_limit,
        last_check,
        wake_every,
        wake_on_member,
        members,
        groups,
        -1 if tree_ceiling is None else tree_ceiling,
    )


class NativeTicker:
    """The ``_Ticker`` of the native sampler: the C thread ticks, this thread runs ``fn``
    (the monitor's Python tick) each time the C side writes to its wake pipe."""

    def __init__(self, handle: NativeHandle, fn: Callable[[], object], name: str) -> None:
        self.handle = handle
        self._fn = fn
        self._stopping = threading.Event()  # set before the last byte on the pipe
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        handle.start()
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        failures = 0
        fd = self.handle.wake_fd
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        while not self._stopping.is_set():
            poll.poll()
            try:
                os.read(fd, 4096)
            except BlockingIOError:
                continue
            if self._stopping.is_set():
                break
            try:
                self._fn()
            except Exception:
                failures = _failed(failures)
            else:
                failures = 0

    def stop(self) -> None:
        """Stop and join the C thread, then this one (unless called from it)."""
        self._stopping.set()
        self.handle.stop()  # also wakes _run one last time
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
