"""The native sampler (montage.memory.native): the same numbers as the Python readers on fake
host / cgroup v1 / cgroup v2 trees, Python woken exactly when it must be, real children joining
and leaving the tree, a prompt stop, a ring that keeps the newest samples, the fallback."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from montage import runtime
from montage.memory import native
from montage.memory.limits import find_memory_limit
from montage.memory.monitor import MemoryMonitor, MemoryStats
from montage.memory.pressure import MemoryPressureLevel as Level
from montage.memory.pressure import PressureThresholds
from montage.memory.sampling import _Sampler, _SteadyBand

from .conftest import NATIVE_MISSING, wait_for
from .test_limits import GIB, HOST_TOTAL_KIB, MIB, NO_ENV, fake_host, fake_v1, fake_v2, write

pytestmark = pytest.mark.skipif(native.extension() is None, reason=NATIVE_MISSING)

PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT_PID = 100
THRESHOLDS = PressureThresholds()


class FakeTree:
    """A fake machine with what the native steady path reads: meminfo (or a cgroup), PSI, the
    pid cursor, and processes with statm, stat and one children file per thread."""

    def __init__(self, root: Path, scope: str) -> None:
        self.root = root
        self.scope = scope
        fake_host(root)
        write(root, "proc/loadavg", "0.00 0.01 0.05 1/123 4567\n")
        if scope == "v2":
            fake_v2(root, "/job", {"/job": {"memory.max": str(2 * GIB)}})
        elif scope == "v1":
            fake_v1(root, "/", {"/": {"memory.limit_in_bytes": str(GIB)}})
        self.set(used_pct=10.0, psi=(0.0, 0.0), swap_mb=0)
        self.process(ROOT_PID, 2000, {ROOT_PID: "101 ", ROOT_PID + 5: ""})
        self.process(101, 3000, {101: "102 "})
        self.process(102, 500, {102: ""})

    def process(self, pid: int, rss_pages: int, threads: dict[int, str]) -> None:
        self.statm(pid, rss_pages)
        write(
            self.root,
            f"proc/{pid}/stat",
            f"{pid} (py (x)) S 1 {pid} {pid} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 "
            f"{len(threads)} 0 {1000 + pid} 0 0\n",
        )
        for tid, text in threads.items():
            write(self.root, f"proc/{pid}/task/{tid}/children", text)

    def statm(self, pid: int, rss_pages: int) -> None:
        write(self.root, f"proc/{pid}/statm", f"{rss_pages * 3} {rss_pages} 10 1 0 5 0\n")

    def set(self, used_pct: float, psi: tuple[float, float], swap_mb: int) -> None:
        ceiling_kib = {"host": HOST_TOTAL_KIB, "v1": GIB // 1024, "v2": 2 * GIB // 1024}
        used_kib = int(ceiling_kib[self.scope] * used_pct / 100)
        some, full = psi
        write(
            self.root,
            "proc/pressure/memory",
            f"some avg10={some:.2f} avg60=0.00 avg300=0.00 total=1\n"
            f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total=1\n",
        )
        if self.scope == "host":
            fake_host(
                self.root,
                available_kib=HOST_TOTAL_KIB - used_kib,
                swap_total_kib=4096,
                swap_free_kib=4096 - swap_mb,
            )
        elif self.scope == "v2":
            directory = "sys/fs/cgroup/job"
            write(self.root, f"{directory}/memory.current", f"{(used_kib + 1000) * 1024}\n")
            write(self.root, f"{directory}/memory.stat", "anon 1\ninactive_file 1024000\n")
            write(self.root, f"{directory}/memory.swap.current", f"{swap_mb * MIB}\n")
        else:
            directory = "sys/fs/cgroup/memory"
            write(self.root, f"{directory}/memory.usage_in_bytes", f"{used_kib * 1024 + 77}\n")
            write(self.root, f"{directory}/memory.stat", "cache 5\ntotal_inactive_file 77\n")


def armed(
    tree: FakeTree, budget: str | None = None, level: Level = Level.LOW
) -> tuple[_Sampler, native.NativeHandle]:
    """A Python sampler after its first walk, and a native handle armed from it (not started)."""
    limit = find_memory_limit(tree.root, configured=budget, env=NO_ENV)
    sampler = _Sampler(limit, tree.root)
    sampler.sample(level, THRESHOLDS, ROOT_PID)
    handle = native.new_handle(0.01, 8)
    native.arm(
        handle, sampler, _SteadyBand(level, THRESHOLDS), wake_every=False, wake_on_member=False
    )
    return sampler, handle


@pytest.mark.parametrize("budget", [None, "40M"])
@pytest.mark.parametrize("scope", ["host", "v1", "v2"])
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    used_pct=st.floats(0, 99),
    psi=st.tuples(st.floats(0, 30), st.floats(0, 30)),
    swap_mb=st.integers(0, 4000),
    rss=st.tuples(st.integers(1, 20_000), st.integers(1, 20_000)),
)
def test_native_and_python_give_the_same_numbers(
    tmp_path: Path,
    scope: str,
    budget: str | None,
    used_pct: float,
    psi: tuple[float, float],
    swap_mb: int,
    rss: tuple[int, int],
) -> None:
    root = tmp_path / f"{scope}-{budget}"
    tree = FakeTree(root, scope) if not root.exists() else FakeTree.__new__(FakeTree)
    tree.root, tree.scope = root, scope
    sampler, handle = armed(tree, budget)
    tree.set(used_pct, psi, swap_mb)
    tree.statm(ROOT_PID, rss[0])
    tree.statm(102, rss[1])
    reasons, sample = handle.measure()
    python = sampler.sample(Level.LOW, THRESHOLDS, ROOT_PID)
    band = _SteadyBand(Level.LOW, THRESHOLDS)
    if band.holds(python[9], python[3] / MIB, python[6]):
        assert reasons == 0 and sample is not None
        assert sample[1:] == python[2:10]  # used .. percent, bit for bit
        assert python[8] == (rss[0] + 3000 + rss[1]) * PAGE
    else:  # outside the band: Python measures and classifies
        assert reasons == native.extension().R_BAND and sample is None  # type: ignore[union-attr]
    sampler.close()


def test_tree_changes_and_odd_files_wake_python(tmp_path: Path) -> None:
    module = native.extension()
    assert module is not None
    tree = FakeTree(tmp_path, "host")
    _, handle = armed(tree)
    assert handle.measure()[0] == 0
    write(tmp_path, "proc/loadavg", "0.00 0.01 0.05 1/124 4570\n")  # something forked...
    assert handle.measure()[0] == 0  # ...not in our tree: proven by the children files
    write(tmp_path, f"proc/{ROOT_PID}/task/{ROOT_PID}/children", "101 103 ")  # a new child...
    assert handle.measure()[0] == 0  # ...cannot be born while the cursor stands (as in Python)
    write(tmp_path, "proc/loadavg", "0.00 0.01 0.05 1/124 4571\n")
    assert handle.measure()[0] == module.R_TREE
    _, handle = armed(tree)
    write(tmp_path, "proc/102/statm", "0 0 0 0 0 0 0\n")  # exiting: no address space
    assert handle.measure()[0] == module.R_TREE
    _, handle = armed(tree)
    write(tmp_path, "proc/meminfo", "MemTotal: 5 MB\n")  # not the kernel's layout
    assert handle.measure()[0] == module.R_READ
    tree.set(10.0, (0.0, 0.0), 0)
    tree.statm(102, 500)
    _, handle = armed(tree)
    assert handle.measure()[0] == 0
    handle.disarm()
    assert handle.measure()[0] == module.R_UNCONFIGURED


def test_ring_overflow_keeps_the_newest_samples(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path, "host")
    _, handle = armed(tree)  # capacity 8, 10 ms a tick
    handle.start()
    try:
        assert wait_for(lambda: handle.counters()["ticks"] >= 30)
    finally:
        handle.stop()
    stopped = time.monotonic()
    counters = handle.counters()
    entries = handle.drain()
    assert len(entries) == 8 and counters["wakes"] == 0
    assert counters["dropped"] == counters["ticks"] - 8
    times = [entry[0] for entry in entries]
    assert times == sorted(times) and stopped - times[-1] < 0.5
    assert handle.drain() == []


def test_ticks_keep_their_grid_and_a_late_tick_brings_no_burst(tmp_path: Path) -> None:
    """The thread sleeps to absolute deadlines: ticks stay on one grid of the interval (no
    drift from each tick's own cost), and when a Python tick holds the tick lock for several
    periods the missed deadlines are skipped, not caught up in a burst."""
    tree = FakeTree(tmp_path, "host")
    handle = native.new_handle(0.02, 200)
    sampler = _Sampler(find_memory_limit(tree.root, env=NO_ENV), tree.root)
    sampler.sample(Level.LOW, THRESHOLDS, ROOT_PID)
    band = _SteadyBand(Level.LOW, THRESHOLDS)
    native.arm(handle, sampler, band, wake_every=False, wake_on_member=False)
    handle.start()
    try:
        assert wait_for(lambda: handle.counters()["ticks"] >= 25)
        steady = [entry[0] for entry in handle.drain()]
        handle.pause()  # what a Python tick does, for 5 periods
        time.sleep(0.1)
        handle.resume()
        resumed = time.monotonic()
        assert wait_for(lambda: handle.counters()["ticks"] >= 40)
        after = [entry[0] for entry in handle.drain()]
    finally:
        handle.stop()
    # on the grid: the typical gap is the interval itself (a relative sleep adds each tick's
    # cost and wake-up latency to every gap: 60-170 µs here), late ticks aside
    gaps = sorted(b - a for a, b in itertools.pairwise(steady))
    assert abs(gaps[len(gaps) // 2] - 0.02) < 0.00004, gaps
    # after the long tick: one late tick, then the grid again, never two ticks within 5 ms
    later = [t for t in after if t >= resumed]
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert gaps and min(gaps) > 0.005, gaps


def test_the_thread_reads_psi_once_a_second(tmp_path: Path) -> None:
    """The kernel updates PSI averages every 2 s: the thread re-reads them once a second and
    keeps the last values in between; an explicit measure() reads them at once."""
    tree = FakeTree(tmp_path, "host")
    _, handle = armed(tree)  # 10 ms a tick
    started = time.monotonic()
    handle.start()
    try:
        assert wait_for(lambda: handle.counters()["ticks"] >= 3)
        write(  # only the PSI file: the thread must not catch another one half-written
            tree.root,
            "proc/pressure/memory",
            "some avg10=5.00 avg60=0.00 avg300=0.00 total=9\n"
            "full avg10=1.00 avg60=0.00 avg300=0.00 total=9\n",  # steady: below the limit
        )
        changed = time.monotonic()
        time.sleep(0.2)
        soon = handle.drain()
        assert wait_for(lambda: any(entry[4] == 5.0 for entry in handle.drain()), 3.0)
        refreshed = time.monotonic()
    finally:
        handle.stop()
    if changed - started < 0.5:  # the first read (at the first tick) is less than 1 s old
        assert soon and all(entry[4] == 0.0 and entry[5] == 0.0 for entry in soon)
    assert refreshed - started < 2.5
    reasons, sample = handle.measure()
    assert reasons == 0 and sample is not None and sample[4:6] == (5.0, 1.0)
    tree.set(used_pct=10.0, psi=(0.0, 30.0), swap_mb=0)
    assert handle.measure()[0] != 0  # fresh at once: full avg10 above the limit leaves the band


def test_guard_ceiling_wakes_python_above_it_and_on_a_full_ring(tmp_path: Path) -> None:
    """The active memory_guards' tree ceiling: a tree above it wakes Python (R_GUARD), one at
    it does not; and a full ring wakes Python, which drains it before a sample is dropped."""
    tree = FakeTree(tmp_path, "host")
    sampler, handle = armed(tree)
    module = native.extension()
    assert module is not None
    tree_rss = (2000 + 3000 + 500) * PAGE
    band = _SteadyBand(Level.LOW, THRESHOLDS)

    def arm(ceiling: int | None) -> None:
        native.arm(
            handle, sampler, band, wake_every=False, wake_on_member=False, tree_ceiling=ceiling
        )

    arm(tree_rss)
    assert handle.measure()[0] == 0
    arm(tree_rss - 1)
    assert handle.measure() == (module.R_GUARD, None)
    arm(tree_rss)
    handle.start()  # capacity 8: the 8th sample wakes Python, which drains
    try:
        assert wait_for(lambda: handle.counters()["wakes"] >= 1)
    finally:
        handle.stop()
    assert handle.take_reasons() == module.R_GUARD  # (nothing drains here: it stays full)
    assert len(handle.drain()) == 8


def fake_monitor(tmp_path: Path, **kwargs: float) -> tuple[FakeTree, MemoryMonitor]:
    tree = FakeTree(tmp_path, "host")
    os.symlink(tmp_path / "proc" / str(ROOT_PID), tmp_path / "proc" / str(os.getpid()))
    return tree, MemoryMonitor(root=tmp_path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.usefixtures("sampler")
def test_band_exit_wakes_python_and_fires_the_callback_once(tmp_path: Path) -> None:
    tree, monitor = fake_monitor(tmp_path, interval_s=0.02)
    seen: list[tuple[Level, Level, Level]] = []
    monitor.register_callback(lambda old, new, stats: seen.append((old, new, stats.pressure_level)))
    monitor.start()
    try:
        assert monitor.sampler_kind == native.sampler_kind()
        assert wait_for(lambda: len(monitor.history()) >= 20)
        if monitor.sampler_kind == "native":
            assert monitor._native is not None
            counters = monitor._native.counters()
            # steady ticks stay in C: a few wakes (start, a re-check of the tree while the
            # machine forks a lot) among 20+ ticks; a run here under load saw 4
            assert counters["wakes"] * 3 <= counters["ticks"], counters
        tree.set(95.0, (0.0, 0.0), 0)
        assert wait_for(lambda: seen != [])
        count = len(monitor.history())
        assert wait_for(lambda: len(monitor.history()) >= count + 10)
        tree.set(10.0, (0.0, 0.0), 0)
        assert wait_for(lambda: len(seen) == 2)
        count = len(monitor.history())
        assert wait_for(lambda: len(monitor.history()) >= count + 10)
    finally:
        monitor.stop()
    assert seen == [
        (Level.LOW, Level.CRITICAL, Level.CRITICAL),
        (Level.CRITICAL, Level.LOW, Level.LOW),
    ]
    history = monitor.history()
    levels = [s.pressure_level for s in history]
    assert Level.CRITICAL in levels and levels[-1] is Level.LOW
    assert [s.timestamp for s in history] == sorted(s.timestamp for s in history)
    assert all(isinstance(s, MemoryStats) for s in history)
    changes = sum(a.pressure_level is not b.pressure_level for a, b in itertools.pairwise(history))
    assert changes <= 2  # each level a run of samples: no stale level slipped in between


@pytest.mark.usefixtures("sampler")
def test_children_joining_and_leaving_move_the_tree_total() -> None:
    monitor = MemoryMonitor(interval_s=0.02)
    code = "b = bytearray(b'1') * (60 << 20); print('ready', flush=True); input()"
    monitor.start()
    child = None
    try:
        assert wait_for(lambda: len(monitor.history()) >= 3)
        base = monitor.history()[-1].tree_memory_mb
        child = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        assert wait_for(lambda: monitor.history()[-1].tree_memory_mb >= base + 55)
        child.communicate("\n", timeout=30)
        assert wait_for(lambda: monitor.history()[-1].tree_memory_mb < base + 20)
    finally:
        monitor.stop()
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.usefixtures("sampler")
def test_a_tracked_child_peak_is_followed(tmp_path: Path) -> None:
    code = (
        "import sys; print('ready', flush=True); sys.stdin.readline();"
        " b = bytearray(b'1') * (50 << 20); print('big', flush=True); sys.stdin.readline();"
        " del b; print('small', flush=True); sys.stdin.readline()"
    )
    monitor = MemoryMonitor(interval_s=0.02)
    monitor.start()
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        monitor.track_process(child.pid, "child")
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "big\n"
        [record] = monitor._tracker.snapshot()  # the sampler alone measures it: history()
        # walks nothing itself, it only folds in what the native sampler's C ticks measured

        def seen() -> float:
            monitor.history()
            return record.peak_memory_mb

        assert wait_for(lambda: seen() >= 50)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "small\n"
        assert wait_for(lambda: seen() >= 50 and record.memory_mb < 40)
        assert record.peak_memory_mb >= 50
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
        assert wait_for(lambda: monitor._tracker.snapshot() == [])  # gone: dropped by a tick
    finally:
        monitor.stop()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_tracked_groups_follow_rss_and_peak_without_waking_python(tmp_path: Path) -> None:
    module = native.extension()
    assert module is not None
    tree = FakeTree(tmp_path, "host")
    sampler, handle = armed(tree)
    assert sampler.tree.subtree_members(101) == [1, 2]  # 101 and its child 102
    assert sampler.tree.subtree_members(102) == [2]
    assert sampler.tree.subtree_members(ROOT_PID) is None  # the root: not a descendant
    band = _SteadyBand(Level.LOW, THRESHOLDS)
    native.arm(handle, sampler, band, wake_every=False, wake_on_member=False, groups=[[1, 2], [2]])
    assert handle.take_tracked() == []  # no tick yet
    for pages in (700, 4000, 900):  # the tracked child moves every tick: no wake
        tree.statm(102, pages)
        assert handle.measure()[0] == 0
    assert handle.take_tracked() == [
        (0, (3000 + 900) * PAGE, (3000 + 4000) * PAGE),
        (1, 900 * PAGE, 4000 * PAGE),
    ]
    assert handle.take_tracked() == []  # taken: the peak starts again from the next tick
    tree.statm(102, 800)
    assert handle.measure()[0] == 0
    assert handle.take_tracked() == [(0, 3800 * PAGE, 3800 * PAGE), (1, 800 * PAGE, 800 * PAGE)]
    # a tracked process without a group: every moving member wakes Python, as before
    native.arm(handle, sampler, band, wake_every=False, wake_on_member=True)
    tree.statm(102, 1200)
    assert handle.measure()[0] == module.R_MEMBER
    with pytest.raises(ValueError):
        native.arm(handle, sampler, band, wake_every=False, wake_on_member=False, groups=[[3]])


BUSY_CHILD = """
import mmap, sys, time
def touch(size):  # mapped and unmapped directly: munmap gives the pages back at once
    mapping = mmap.mmap(-1, size)
    for at in range(0, size, 4096):
        mapping[at] = 1
    return mapping
print("ready", flush=True)
sys.stdin.readline()
old, i = None, 0
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:  # RSS moves every 20 ms, between ~4 and ~29 MiB over the base
    new = touch((4 + (i * 7) % 21) << 20)
    if old is not None:
        old.close()
    old, i = new, i + 1
    time.sleep(0.02)
    if i == 40:  # the peak, held a few ticks
        old.close()
        old = touch(70 << 20)
        time.sleep(0.5)
        old.close()
        old = touch(4 << 20)
old.close()
old = touch(8 << 20)
print("hold", flush=True)
sys.stdin.readline()
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE / MIB


@pytest.mark.usefixtures("sampler")
def test_a_busy_tracked_child_stays_in_c_and_its_peak_is_exact() -> None:
    """A child whose RSS moves on every tick (an ffmpeg at work): the native sampler's steady
    ticks stay in C, and the tracked memory and peak are what the Python sampler reports."""
    from montage.ffmpeg.watch import peak_rss_bytes

    monitor = MemoryMonitor(interval_s=0.05)
    monitor.start()
    child = subprocess.Popen(
        [sys.executable, "-c", BUSY_CHILD, "3.5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        monitor.track_process(child.pid, "busy")
        handle = monitor._native
        if handle is not None:  # armed again with the child's group: a Python tick has run
            assert wait_for(lambda: monitor._native_followed != [])
            before = handle.counters()
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "hold\n"
        if handle is not None:
            after = handle.counters()
            ticks, wakes = after["ticks"] - before["ticks"], after["wakes"] - before["wakes"]
            assert ticks >= 40
            assert wakes * 8 <= ticks, (wakes, ticks)  # not one a tick: the child stays in C
        [info] = monitor.get_tracked_processes()
        assert abs(info.memory_mb - rss_mb(child.pid)) < 2
        hwm_mb = peak_rss_bytes(child.pid) / MIB
        # VmHWM and statm come from the kernel's batched RSS counters: a few pages apart
        assert abs(info.peak_memory_mb - hwm_mb) < 3, (info.peak_memory_mb, hwm_mb)
        assert info.peak_memory_mb >= 70
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        monitor.stop()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_stop_is_prompt_and_leaves_no_thread(tmp_path: Path) -> None:
    _, monitor = fake_monitor(tmp_path, interval_s=30.0)
    monitor.start()
    assert monitor.sampler_kind == "native"
    started = time.monotonic()
    monitor.stop()
    assert time.monotonic() - started < 0.5
    assert not monitor.running and monitor._native is None
    assert "montage-memory" not in [t.name for t in threading.enumerate()]


def test_history_ring_of_the_monitor_keeps_the_newest(tmp_path: Path) -> None:
    _, monitor = fake_monitor(tmp_path, interval_s=0.01, history_size=5)
    monitor.start()
    try:
        assert wait_for(
            lambda: monitor._native is not None and monitor._native.counters()["ticks"] > 40
        )
        before = time.monotonic() + monitor.history()[-1].timestamp - time.time()
    finally:
        monitor.stop()
    history = monitor.history()
    assert len(history) == 5
    assert abs(before - (history[-1].timestamp - time.time() + time.monotonic())) < 0.5


def test_disabled_by_the_environment_runs_the_python_sampler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(native.ENV, "0")
    _, monitor = fake_monitor(tmp_path, interval_s=0.02)
    assert monitor.sampler_kind == "python"
    monitor.start()
    try:
        assert monitor._native is None and monitor.sampler_kind == "python"
        assert wait_for(lambda: len(monitor.history()) >= 3)
    finally:
        monitor.stop()
    assert runtime.get_memory_status()["config"]["sampler"] == "python"
    monkeypatch.setenv(native.ENV, "1")
    assert runtime.get_memory_status()["config"]["sampler"] == "native"


FORK_CHILD = """
import os, sys, time
from montage.memory.monitor import MemoryMonitor
monitor = MemoryMonitor(interval_s=0.02)
monitor.start()
time.sleep(0.2)
pid = os.fork()
if pid == 0:
    ok = not monitor.running and monitor._native is None
    ok = ok and monitor.get_current_stats().tree_memory_mb > 0
    monitor.start()
    deadline = time.monotonic() + 10
    while len(monitor.history()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    ok = ok and monitor.sampler_kind == "native" and len(monitor.history()) >= 3
    monitor.stop()
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
time.sleep(0.1)
alive = monitor.running and monitor.sampler_kind == "native"
monitor.stop()
print(os.waitstatus_to_exitcode(status), alive)
"""


def test_a_forked_child_starts_its_own_sampler() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FORK_CHILD], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "True"]
