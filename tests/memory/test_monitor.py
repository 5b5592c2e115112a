"""MemoryMonitor, memory_guard and current_budget_mb, on fake machine trees and real processes."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from montage.errors import ConfigError, MemoryLimitExceeded
from montage.memory.monitor import (
    MemoryMonitor,
    MemoryStats,
    _Tracked,
    current_budget_mb,
    get_memory_monitor,
    memory_guard,
)
from montage.memory.pressure import MemoryPressureLevel as Level

from .conftest import wait_for

pytestmark = pytest.mark.usefixtures("sampler")  # each test with both samplers

MIB = 1024 * 1024
Change = tuple[Level, Level]


class FakeMachine:
    """A fake ``/proc`` under tmp: meminfo (machine usage) and our own statm (tree RSS)."""

    def __init__(self, root: Path, total_mb: int = 10_000) -> None:
        self.root = root
        self.total_mb = total_mb
        pid = os.getpid()
        task = root / "proc" / str(pid) / "task" / str(pid)
        task.mkdir(parents=True)
        (task / "children").write_text("")
        self.set_used_pct(10.0)
        self.set_tree_mb(10)

    def set_used_pct(self, percent: float) -> None:
        available_kb = int(self.total_mb * 1024 * (100.0 - percent) / 100.0)
        (self.root / "proc" / "meminfo").write_text(
            f"MemTotal: {self.total_mb * 1024} kB\nMemAvailable: {available_kb} kB\n"
            "SwapTotal: 0 kB\nSwapFree: 0 kB\n"
        )

    def set_tree_mb(self, tree_mb: float) -> None:
        pages = int(tree_mb * MIB / os.sysconf("SC_PAGE_SIZE"))
        statm = self.root / "proc" / str(os.getpid()) / "statm"
        statm.write_text(f"{pages} {pages} 0 0 0 0 0\n")


@pytest.fixture
def machine(tmp_path: Path) -> FakeMachine:
    return FakeMachine(tmp_path / "root")


def recorder(monitor: MemoryMonitor) -> list[Change]:
    """Register a callback that records (old, new); ``unrecord`` removes it."""
    changes: list[Change] = []

    def record(old: Level, new: Level, _stats: MemoryStats) -> None:
        changes.append((old, new))

    monitor.register_callback(record)
    _recorders[id(changes)] = record
    return changes


_recorders: dict[int, Callable[[Level, Level, MemoryStats], None]] = {}


def unrecord(monitor: MemoryMonitor, changes: list[Change]) -> None:
    monitor.unregister_callback(_recorders.pop(id(changes)))


def is_running(monitor: MemoryMonitor) -> bool:
    return monitor.running


# --- sampling, levels, callbacks ---------------------------------------------------------


def test_stats_reflect_the_fake_machine(machine: FakeMachine) -> None:
    machine.set_used_pct(75.0)
    machine.set_tree_mb(42)
    stats = MemoryMonitor(root=machine.root).get_current_stats()
    assert stats.total_mb == pytest.approx(10_000, rel=1e-3)
    assert stats.used_mb == pytest.approx(7_500, rel=1e-3)
    assert stats.percent_used == pytest.approx(75.0, abs=0.1)
    assert stats.tree_memory_mb == pytest.approx(42, abs=0.1)
    assert stats.pressure_level is Level.MODERATE
    assert stats.limit_source == "host:/proc/meminfo"
    assert stats.to_dict()["pressure_level"] == "moderate"


def test_callback_fires_exactly_once_per_level_change(machine: FakeMachine) -> None:
    monitor = MemoryMonitor(root=machine.root)
    changes = recorder(monitor)
    for percent in (10, 10, 75, 75, 85, 85, 95, 95, 86, 60, 60):
        machine.set_used_pct(percent)
        monitor.get_current_stats()
    # 86 % keeps CRITICAL (hysteresis: left only below 85 %), 60 % falls straight to LOW.
    assert changes == [
        (Level.LOW, Level.MODERATE),
        (Level.MODERATE, Level.HIGH),
        (Level.HIGH, Level.CRITICAL),
        (Level.CRITICAL, Level.LOW),
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(min_value=0.0, max_value=99.0), min_size=1, max_size=25))
def test_callbacks_match_level_changes_exactly(percents: list[float]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        machine = FakeMachine(Path(tmp) / "root")
        monitor = MemoryMonitor(root=machine.root)
        changes = recorder(monitor)
        levels = [Level.LOW]
        for percent in percents:
            machine.set_used_pct(percent)
            levels.append(monitor.get_current_stats().pressure_level)
        monitor.close()
    expected = [(a, b) for a, b in itertools.pairwise(levels) if a != b]
    assert changes == expected


def test_configured_budget_compares_our_tree_not_the_machine(machine: FakeMachine) -> None:
    machine.set_used_pct(40.0)  # 4000 MiB used by others: far above the 100 MiB budget
    machine.set_tree_mb(20)
    monitor = MemoryMonitor(root=machine.root, memory_limit="100M")
    changes = recorder(monitor)
    first = monitor.get_current_stats()
    assert first.pressure_level is Level.LOW
    assert first.budget_mb == 100 and first.available_mb == pytest.approx(80, abs=0.1)
    machine.set_tree_mb(85)
    assert monitor.get_current_stats().pressure_level is Level.HIGH
    assert current_budget_mb() != 100  # the private monitor does not leak into the global one
    assert changes == [(Level.LOW, Level.HIGH)]


def test_failing_callback_is_logged_and_others_still_run(
    machine: FakeMachine, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = MemoryMonitor(root=machine.root)

    def broken(old: Level, new: Level, stats: MemoryStats) -> None:
        raise RuntimeError("callback bug")

    monitor.register_callback(broken)
    changes = recorder(monitor)
    machine.set_used_pct(95.0)
    with caplog.at_level(logging.ERROR, logger="montage.memory"):
        monitor.get_current_stats()
    assert changes == [(Level.LOW, Level.CRITICAL)]
    assert any("callback bug" in (r.exc_text or "") for r in caplog.records)
    monitor.unregister_callback(broken)
    machine.set_used_pct(10.0)
    monitor.get_current_stats()
    assert len(changes) == 2


def test_history_is_a_bounded_ring(machine: FakeMachine) -> None:
    monitor = MemoryMonitor(root=machine.root, history_size=5)
    samples = [monitor.get_current_stats() for _ in range(12)]
    assert monitor.history() == samples[-5:]


def test_sampler_ticks_fire_callbacks_once_and_fill_the_history(machine: FakeMachine) -> None:
    """The thread's own path (``_tick``, no MemoryStats unless needed) keeps the semantics."""
    monitor = MemoryMonitor(root=machine.root, history_size=8)
    seen: list[tuple[Level, Level, Level]] = []
    monitor.register_callback(lambda old, new, stats: seen.append((old, new, stats.pressure_level)))
    percents = (10, 10, 75, 75, 85, 95, 86, 60, 60, 10)
    for percent in percents:
        machine.set_used_pct(percent)
        monitor._tick(os.getpid())
    assert seen == [
        (Level.LOW, Level.MODERATE, Level.MODERATE),
        (Level.MODERATE, Level.HIGH, Level.HIGH),
        (Level.HIGH, Level.CRITICAL, Level.CRITICAL),
        (Level.CRITICAL, Level.LOW, Level.LOW),
    ]
    history = monitor.history()
    assert [round(s.percent_used) for s in history] == list(percents[-8:])
    assert all(isinstance(s, MemoryStats) for s in history)
    assert [s.timestamp for s in history] == sorted(s.timestamp for s in history)
    last = monitor.get_current_stats()
    assert monitor.history()[-1] is last and monitor.history()[:-1] == history[1:]


def test_sampler_start_stop_idempotent_and_drives_callbacks(machine: FakeMachine) -> None:
    monitor = MemoryMonitor(root=machine.root, interval_s=0.02)
    changes = recorder(monitor)
    monitor.start()
    monitor.start()
    try:
        names = [t.name for t in threading.enumerate()]
        assert names.count("montage-memory") == 1 and is_running(monitor)
        assert wait_for(lambda: len(monitor.history()) >= 3)
        machine.set_used_pct(95.0)
        assert wait_for(lambda: changes == [(Level.LOW, Level.CRITICAL)])
    finally:
        monitor.stop()
        monitor.stop()
    assert not is_running(monitor)
    assert "montage-memory" not in [t.name for t in threading.enumerate()]
    count = len(monitor.history())
    time.sleep(0.1)
    assert len(monitor.history()) == count


def test_configure_rejects_bad_interval(machine: FakeMachine) -> None:
    with pytest.raises(ConfigError):
        MemoryMonitor(root=machine.root).configure(interval_s=0)


def test_import_starts_nothing() -> None:
    code = (
        "import sys, threading\n"
        "import montage.memory.monitor, montage.memory.budget\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert not {'numpy', 'av'} & set(sys.modules)\n"
        "assert montage.memory.monitor._monitor is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_singleton_is_shared_between_threads() -> None:
    seen: list[MemoryMonitor] = []
    threads = [threading.Thread(target=lambda: seen.append(get_memory_monitor())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(m) for m in seen}) == 1 and seen[0] is get_memory_monitor()


# --- tracked processes -------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    code = "import time; print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"  # fully started
    yield child
    child.kill()
    child.wait()
    child.stdout.close()


def test_tracked_process_reports_live_memory_then_drops_out(
    sleeper: subprocess.Popen[bytes],
) -> None:
    monitor = MemoryMonitor()
    monitor.track_process(sleeper.pid, "ffmpeg_encode", is_ffmpeg=True)
    [info] = monitor.get_ffmpeg_processes()
    assert (info.pid, info.name, info.is_ffmpeg) == (sleeper.pid, "ffmpeg_encode", True)
    assert info.memory_mb > 1 and info.peak_memory_mb >= info.memory_mb
    sleeper.kill()
    sleeper.wait()
    assert monitor.get_tracked_processes() == []


GROWER = """
import sys
print("ready", flush=True)
sys.stdin.readline()
block = bytearray(b"\\x01") * (40 * 1024 * 1024)  # written, so resident
print("grown", flush=True)
sys.stdin.readline()
"""


def test_sampler_ticks_follow_a_tracked_child_peak() -> None:
    """Ticks skip the tracked update while nothing walked changed, but never miss growth."""
    child = subprocess.Popen(
        [sys.executable, "-c", GROWER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        monitor = MemoryMonitor()
        monitor.track_process(child.pid, "grower")
        for _ in range(3):
            monitor._tick(os.getpid())
        [record] = monitor._tracked.values()
        before = record.peak_memory_mb
        child.stdin.write("grow\n")
        child.stdin.flush()
        assert child.stdout.readline() == "grown\n"
        monitor._tick(os.getpid())
        assert record.peak_memory_mb >= before + 35
        assert record.memory_mb == record.peak_memory_mb
        monitor.close()
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        child.stdout.close()


def test_zombie_is_not_reported_as_live(sleeper: subprocess.Popen[bytes]) -> None:
    monitor = MemoryMonitor()
    monitor.track_process(sleeper.pid, "child")
    assert [p.pid for p in monitor.get_tracked_processes()] == [sleeper.pid]
    sleeper.kill()  # not reaped yet: a zombie keeps its pid
    assert wait_for(lambda: psutil.Process(sleeper.pid).status() == psutil.STATUS_ZOMBIE)
    assert monitor.get_tracked_processes() == []


def test_reused_pid_is_not_confused_with_the_tracked_process(
    sleeper: subprocess.Popen[bytes],
) -> None:
    """A record whose start time differs from the live pid's is a dead process, not this one."""
    monitor = MemoryMonitor()
    monitor.track_process(sleeper.pid, "live")
    [live] = monitor._tracked.values()
    monitor.untrack_process(sleeper.pid)
    assert monitor.get_tracked_processes() == []
    stale = _Tracked(sleeper.pid, live.start_ticks - 1000, "old ffmpeg", True, time.time())
    monitor._track(stale)
    assert monitor.get_tracked_processes() == []
    assert monitor.get_ffmpeg_processes() == []
    monitor.track_process(os.getpid() + 10**7, "never existed")
    assert monitor.get_tracked_processes() == []


ALLOCATOR = """
import os, subprocess, sys, time
flags = sys.argv[1]
if sys.argv[2] == "parent":
    subprocess.run([sys.executable, __file__, flags, "child"], check=True)
    sys.exit(0)
def wait(name):
    while not os.path.exists(os.path.join(flags, name)):
        time.sleep(0.02)
def mark(name):
    open(os.path.join(flags, name), "w").close()
block = bytearray(b"\\x01") * (300 * 1024 * 1024)  # written, so resident
mark("allocated"); wait("release")
del block
mark("freed"); wait("exit")
"""


def test_real_300mb_allocation_in_a_grandchild_drives_levels(tmp_path: Path) -> None:
    script = tmp_path / "allocator.py"
    script.write_text(ALLOCATOR)
    flags = tmp_path / "flags"
    flags.mkdir()
    monitor = MemoryMonitor(memory_limit="400M", interval_s=0.05)
    changes = recorder(monitor)
    monitor.start()
    child = subprocess.Popen([sys.executable, str(script), str(flags), "parent"])
    try:
        monitor.track_process(child.pid, "allocator")
        assert wait_for(lambda: (flags / "allocated").exists(), 30)
        assert wait_for(lambda: monitor.level >= Level.HIGH)
        [info] = monitor.get_tracked_processes()
        assert info.memory_mb >= 290  # the grandchild's memory counts in the child's tree
        assert monitor.history()[-1].tree_memory_mb >= 300
        (flags / "release").touch()
        assert wait_for(lambda: (flags / "freed").exists())
        assert wait_for(lambda: monitor.level is Level.LOW)
        (flags / "exit").touch()
        assert child.wait(timeout=30) == 0
        assert monitor.get_tracked_processes() == []
    finally:
        monitor.stop()
        (flags / "release").touch()
        (flags / "exit").touch()
        child.kill()
        child.wait()
    assert any(new >= Level.HIGH for _, new in changes)
    assert changes[-1][1] is Level.LOW
    assert info.peak_memory_mb >= 290


# --- memory_guard ------------------------------------------------------------------------


def narrowest(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def test_guard_nests_and_restores_the_budget() -> None:
    base = current_budget_mb()
    with memory_guard(max_memory_mb=500) as outer:
        assert current_budget_mb() == narrowest(base, 500) == outer.limit_mb
        with memory_guard(max_memory_mb=800) as wider:
            assert current_budget_mb() == narrowest(base, 500) == wider.limit_mb
            with memory_guard(max_memory_mb=300):
                assert current_budget_mb() == narrowest(base, 300)
            assert current_budget_mb() == narrowest(base, 500)
    assert current_budget_mb() == base


def test_guard_budget_is_per_thread() -> None:
    base = current_budget_mb()
    barrier = threading.Barrier(2, timeout=10)
    seen: dict[str, float | None] = {}

    def other_thread() -> None:
        seen["plain"] = current_budget_mb()
        with memory_guard(max_memory_mb=300):
            barrier.wait()  # both threads are inside their own guard now
            seen["guarded"] = current_budget_mb()
            barrier.wait()

    with memory_guard(max_memory_mb=700):
        thread = threading.Thread(target=other_thread)
        thread.start()
        barrier.wait()
        assert current_budget_mb() == narrowest(base, 700)
        barrier.wait()
        thread.join()
    assert seen == {"plain": base, "guarded": narrowest(base, 300)}


def test_guard_budget_is_per_asyncio_task() -> None:
    async def task(limit_mb: float) -> float | None:
        with memory_guard(max_memory_mb=limit_mb):
            await asyncio.sleep(0.05)  # the other task runs its guard meanwhile
            return current_budget_mb()

    async def both() -> list[float | None]:
        return list(await asyncio.gather(task(600), task(200)))

    base = current_budget_mb()
    assert asyncio.run(both()) == [narrowest(base, 600), narrowest(base, 200)]


def test_guard_is_usable_as_the_monitor() -> None:
    with memory_guard(max_memory_mb=100_000) as monitor:
        stats = monitor.get_current_stats()
        assert isinstance(stats, MemoryStats) and stats.tree_memory_mb > 1
        assert callable(monitor.track_process)
    assert monitor.peak_memory_mb >= stats.process_memory_mb * 0.5
    assert not monitor.exceeded


def test_guard_raise_fires_callbacks_once_then_raises() -> None:
    monitor = get_memory_monitor()
    changes = recorder(monitor)
    try:
        with pytest.raises(MemoryLimitExceeded) as caught, memory_guard(1.0, "raise") as guard:
            time.sleep(0.35)  # several private sampler ticks, all above 1 MiB
            guard.sample()
    finally:
        unrecord(monitor, changes)
    assert guard.exceeded and caught.value.limit_mb == 1.0 and caught.value.peak_mb > 1.0
    assert [new for _, new in changes] == [Level.CRITICAL]


def test_guard_warn_logs_and_ignore_only_records(caplog: pytest.LogCaptureFixture) -> None:
    monitor = get_memory_monitor()
    changes = recorder(monitor)
    try:
        with caplog.at_level(logging.WARNING, logger="montage.memory"):
            with memory_guard(1.0) as warned:
                pass
            assert warned.exceeded and "exceeds the block's limit" in caplog.text
            caplog.clear()
            with memory_guard(1.0, on_exceed="ignore") as ignored:
                pass
            assert ignored.exceeded and caplog.text == ""
    finally:
        unrecord(monitor, changes)
    assert [new for _, new in changes] == [Level.CRITICAL]  # from "warn" only


@pytest.mark.parametrize("global_running", [False, True])
def test_guard_catches_a_transient_peak_between_entry_and_exit(global_running: bool) -> None:
    """A child that allocates and exits inside the block is only seen by the sampler ticks."""
    monitor = get_memory_monitor()
    was_running = monitor.running
    if global_running:
        monitor.start()
    # The child holds its 200 MiB until told to exit (a fixed sleep can be shorter than one
    # scheduling stall on a loaded machine), and exits before the block does.
    code = (
        "import sys; b = bytearray(b'1') * (200 * 1024 * 1024); print('ready', flush=True);"
        " sys.stdin.read()"
    )
    try:
        with memory_guard() as guard:
            entry_mb = guard.peak_memory_mb
            child = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None and child.stdout.readline() == "ready\n"
                seen = wait_for(lambda: guard.peak_memory_mb >= entry_mb + 150, timeout_s=30)
            finally:
                child.communicate(timeout=60)  # closes stdin: the child exits
    finally:
        if global_running and not was_running:
            monitor.stop()
    assert seen, f"peak {guard.peak_memory_mb:.0f} MiB, entry {entry_mb:.0f} MiB"
    assert guard.peak_memory_mb >= entry_mb + 150


@pytest.fixture
def started() -> Iterator[MemoryMonitor]:
    """The process-wide monitor, (re)started with the sampler under test; its state restored."""
    monitor = get_memory_monitor()
    was_running = monitor.running
    monitor.stop()
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.stop()
        if was_running:
            monitor.start()


# A child that holds the MiB it reads on each stdin line (touched pages), answering "ok".
HOLDER = """
import sys
held = b''
print('ok', flush=True)
for line in sys.stdin:
    held = b''
    held = b'1' * (int(line) * 1024 * 1024)
    print('ok', flush=True)
"""


@contextmanager
def holder() -> Iterator[Callable[[int], None]]:
    """A child of ours; the yielded function makes it hold that many MiB (0: nothing)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout

    def hold(mib: int) -> None:
        stdin.write(f"{mib}\n")
        stdin.flush()
        assert stdout.readline() == "ok\n"

    try:
        assert stdout.readline() == "ok\n"
        yield hold
    finally:
        stdin.close()
        child.wait(timeout=30)


def test_guard_peak_without_a_python_wake_per_tick(started: MemoryMonitor) -> None:
    """The native sampler's ticks stay in C inside a guard, and the guard's peak is still the
    largest tree RSS of the samples taken in the block (ring entries included)."""
    with memory_guard(max_memory_mb=100_000) as guard:
        handle = started._native
        time.sleep(0.3)  # the guard's limit reaches the C side with the next (Python) tick
        before = handle.counters() if handle is not None else None
        begin = time.time()
        time.sleep(0.7)
        held = b"1" * (60 * MIB)  # our own RSS: a steady member, inside the band
        time.sleep(0.8)
        del held
        time.sleep(0.7)
        end = time.time()
        peak_mb = guard.peak_memory_mb  # read inside the block, as analyze_video does
    in_block = [s.tree_memory_mb for s in started.history() if begin <= s.timestamp <= end]
    assert len(in_block) >= 15
    assert max(in_block) - min(in_block) >= 50  # the 60 MiB were seen by the ticks
    assert peak_mb == max(in_block) == guard.peak_memory_mb
    if before is not None and handle is not None:
        after = handle.counters()
        ticks, wakes = after["ticks"] - before["ticks"], after["wakes"] - before["wakes"]
        assert ticks >= 20
        assert wakes * 5 <= ticks, (wakes, ticks)  # not one a tick


@pytest.mark.parametrize("on_exceed", ["warn", "raise"])
def test_guard_limit_crossed_by_a_child_fires_once_promptly(
    started: MemoryMonitor, on_exceed: str
) -> None:
    """Its own ticks stay steady in C; a child going above the guard's limit wakes Python
    within a tick or two, which reports it once; "raise" then raises at the block's end."""
    changes = recorder(started)
    raised: MemoryLimitExceeded | None = None
    try:
        with holder() as hold:
            limit_mb = started.get_current_stats().tree_memory_mb + 100
            try:
                with memory_guard(limit_mb, on_exceed) as guard:
                    time.sleep(0.3)  # steady again: the child's start is behind us
                    assert not guard.exceeded and changes == []
                    hold(200)
                    held_at = time.monotonic()
                    assert wait_for(lambda: changes != [], timeout_s=5)
                    latency_s = time.monotonic() - held_at
                    time.sleep(0.5)  # more ticks above the limit: no second report
            except MemoryLimitExceeded as error:
                raised = error
    finally:
        unrecord(started, changes)
    assert latency_s < 1.0, latency_s  # a tick or two (0.1 s each), with room for a busy host
    assert [new for _, new in changes] == [Level.CRITICAL]
    assert guard.exceeded and guard.peak_memory_mb >= limit_mb + 50
    assert (raised is not None) == (on_exceed == "raise")
    if raised is not None:
        assert raised.peak_mb == guard.peak_memory_mb and raised.limit_mb == limit_mb


def test_nested_guards_each_report_their_own_limit(started: MemoryMonitor) -> None:
    changes = recorder(started)
    try:
        with holder() as hold:
            base_mb = started.get_current_stats().tree_memory_mb
            with memory_guard(base_mb + 300) as outer:
                with memory_guard(base_mb + 100) as inner:
                    time.sleep(0.3)
                    hold(200)  # above the inner limit only
                    assert wait_for(lambda: inner.exceeded and changes != [], timeout_s=5)
                    time.sleep(0.3)
                assert not outer.exceeded and len(changes) == 1
                hold(400)  # above the outer one now
                assert wait_for(lambda: outer.exceeded and len(changes) == 2, timeout_s=5)
                time.sleep(0.3)
    finally:
        unrecord(started, changes)
    assert [new for _, new in changes] == [Level.CRITICAL, Level.CRITICAL]
    assert base_mb + 150 <= inner.peak_memory_mb < base_mb + 300 < outer.peak_memory_mb


def test_guard_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError), memory_guard(on_exceed="explode"):
        pass
    with pytest.raises(ConfigError), memory_guard(max_memory_mb=0):
        pass


def test_a_callback_may_stop_the_sampler(machine: FakeMachine) -> None:
    """stop() from inside the sampler thread must neither deadlock nor raise."""
    monitor = MemoryMonitor(root=machine.root, interval_s=0.02)
    stopped = threading.Event()

    def stop_on_critical(old: Level, new: Level, stats: MemoryStats) -> None:
        monitor.stop()
        stopped.set()

    monitor.register_callback(stop_on_critical)
    monitor.start()
    try:
        machine.set_used_pct(95.0)
        assert stopped.wait(10)
        assert wait_for(lambda: not is_running(monitor))
    finally:
        monitor.stop()
    # the thread stops itself from its own callback, so it may still be unwinding: wait for it
    assert wait_for(lambda: "montage-memory" not in [t.name for t in threading.enumerate()])
