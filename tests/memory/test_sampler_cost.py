"""The sampler's cheap paths must give the same answers as the plain ones they replace.

Why: the 10 Hz sampler skips ``classify`` inside a level's steady band, walks the tree with
kept-open files, and re-reads only the members' ``statm`` while no pid was allocated. Each
shortcut is only acceptable if it is exact, so each is checked against the reference here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from montage.memory.monitor import _SteadyBand
from montage.memory.pressure import MemoryPressureLevel as Level
from montage.memory.pressure import PressureThresholds, classify
from montage.memory.tree import _STILL_RECHECK_S
from montage.memory.usage import ProcessTreeReader, process_tree_memory

from .test_limits import write
from .test_native_sampler import PAGE, ROOT_PID, FakeTree

MIB = 1024 * 1024


@st.composite
def thresholds(draw: st.DrawFn) -> PressureThresholds:
    moderate = draw(st.floats(min_value=10, max_value=80))
    high = draw(st.floats(min_value=moderate + 1, max_value=90))
    critical = draw(st.floats(min_value=high + 1, max_value=100))
    return PressureThresholds(
        moderate_pct=moderate,
        high_pct=high,
        critical_pct=critical,
        hysteresis_pct=draw(st.floats(min_value=0, max_value=moderate - 1)),
        psi_full_high_pct=draw(st.floats(min_value=0, max_value=100)),
        min_available_mb=draw(st.floats(min_value=0, max_value=1024)),
    )


@given(
    thresholds(),
    st.sampled_from(list(Level)),
    st.floats(min_value=0, max_value=150),
    st.floats(min_value=0, max_value=4096),
    st.none() | st.floats(min_value=0, max_value=100),
)
def test_steady_band_never_disagrees_with_classify(
    limits: PressureThresholds,
    previous: Level,
    percent: float,
    available_mb: float,
    psi_full: float | None,
) -> None:
    if _SteadyBand(previous, limits).holds(percent, available_mb, psi_full):
        level = classify(
            percent,
            available_mb=available_mb,
            psi_full_avg10=psi_full,
            previous=previous,
            thresholds=limits,
        )
        assert level is previous


def test_steady_band_sends_nan_to_classify() -> None:
    assert not _SteadyBand(Level.LOW, PressureThresholds()).holds(float("nan"), 1e6, None)


SPAWNER = """
import subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c",
    "import sys; b = b'y' * (20 * 1024 * 1024); print(flush=True); sys.stdin.read()"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
grandchild.stdout.readline()
print(grandchild.pid, flush=True)
sys.stdin.read()
grandchild.stdin.close(); grandchild.wait()
"""


@pytest.fixture
def family() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A child that holds a grandchild with 20 MiB resident; yields (child, grandchild pid)."""
    child = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    yield child, grandchild
    if child.stdin is not None:
        child.stdin.close()
    child.wait(timeout=30)
    child.stdout.close()


@pytest.mark.parametrize("max_kept_fds", [64, 2])
def test_reader_matches_process_tree_memory_and_follows_changes(
    family: tuple[subprocess.Popen[str], int], max_kept_fds: int
) -> None:
    child, grandchild = family
    with ProcessTreeReader(max_kept_fds=max_kept_fds) as reader:
        for _ in range(3):  # first sight, then the kept-open (and unchanged-tree) paths
            tree = reader.read()
            reference = process_tree_memory()
            assert [pid for pid, _ in tree.children] == [pid for pid, _ in reference.children]
            assert tree.tree_rss_bytes == pytest.approx(reference.tree_rss_bytes, abs=4 * MIB)
        by_pid = dict(tree.children)
        start, subtree = reader.walked(child.pid) or (None, 0)
        assert start is not None
        assert subtree == by_pid[child.pid] + by_pid[grandchild] >= 20 * MIB
        assert reader.walked(os.getpid()) is None  # the root is not its own descendant

        late = subprocess.Popen(["sleep", "30"])  # a new member must show up at once
        try:
            assert late.pid in dict(reader.read().children)
        finally:
            late.kill()
            late.wait()
        assert late.pid not in dict(reader.read().children)  # and leave once reaped
        if max_kept_fds == 2:
            assert reader._kept <= 2


def test_reader_reports_a_zombie_with_no_start_time() -> None:
    child = subprocess.Popen(["sleep", "30"])
    with ProcessTreeReader() as reader:
        reader.read()
        assert (reader.walked(child.pid) or (None,))[0] is not None
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
        reader.read()
        found = reader.walked(child.pid)
        assert found is not None and found[0] is None
    child.wait()


def test_reader_on_a_gone_process_is_empty() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    with ProcessTreeReader() as reader:
        tree = reader.read(child.pid)
    assert (tree.process_rss_bytes, tree.tree_rss_bytes, tree.children) == (0, 0, ())


THREAD_SPAWNER = """
import subprocess, sys, threading
done = threading.Event()
def spawn():
    grandchild = subprocess.Popen(["sleep", "30"])
    print(grandchild.pid, flush=True)
    done.wait()
    grandchild.kill(); grandchild.wait()
print("ready", flush=True)
sys.stdin.readline()
thread = threading.Thread(target=spawn)
thread.start()
sys.stdin.readline()
done.set(); thread.join()
"""


def test_reader_sees_a_child_forked_by_a_new_thread() -> None:
    """A new thread's children are found at once: the re-check notices the thread count."""
    child = subprocess.Popen(
        [sys.executable, "-c", THREAD_SPAWNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        with ProcessTreeReader() as reader:
            for _ in range(3):
                assert [pid for pid, _ in reader.read().children] == [child.pid]
            child.stdin.write("spawn\n")
            child.stdin.flush()
            grandchild = int(child.stdout.readline())
            assert [pid for pid, _ in reader.read().children] == [child.pid, grandchild]
            reference = process_tree_memory()
            assert [pid for pid, _ in reference.children] == [child.pid, grandchild]
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        child.stdout.close()


def test_a_moved_pid_cursor_rechecks_without_walking_afresh(
    family: tuple[subprocess.Popen[str], int],
) -> None:
    """Another process's fork (the cursor moves) costs a re-check, not a new walk."""
    child, grandchild = family
    with ProcessTreeReader() as reader:
        first = reader.read()
        members = reader._members
        reader._cursor = b" moved"  # as if some unrelated process had just forked
        again = reader.read()
        assert reader._members is members  # the same walk, re-checked
        assert [p for p, _ in again.children] == [p for p, _ in first.children]
        assert [p for p, _ in again.children] == [child.pid, grandchild]
        reader._cursor = b" moved"
        reader._members[1].children_read = None  # what a zombie or an unkept file looks like
        reader.read()
        assert reader._members is not members  # anything the re-check cannot vouch for: a walk


def test_a_still_cursor_is_trusted_until_the_recheck_and_dropped_if_it_lied(
    tmp_path: Path,
) -> None:
    """While the pid cursor stands, nothing can have joined the tree, so only each member's
    statm is read; every ``_STILL_RECHECK_S`` the tree is checked anyway, and a new member
    found then (a cursor that does not show our forks: a virtualised ``/proc/loadavg``)
    switches the shortcut off for good."""
    tree = FakeTree(tmp_path, "host")
    reader = ProcessTreeReader(tmp_path)
    start = 1000.0
    before = reader.read_totals(ROOT_PID, now=start)
    assert before == (2000 * PAGE, (2000 + 3000 + 500) * PAGE)
    tree.process(103, 700, {103: ""})
    write(tmp_path, f"proc/{ROOT_PID}/task/{ROOT_PID}/children", "101 103 ")  # the cursor stood
    assert reader.read_totals(ROOT_PID, now=start + _STILL_RECHECK_S - 0.5) == before
    assert reader._cursor_fd >= 0
    after = reader.read_totals(ROOT_PID, now=start + _STILL_RECHECK_S + 0.5)
    assert after == (2000 * PAGE, (2000 + 3000 + 500 + 700) * PAGE)
    assert reader._cursor_fd == -2  # never trusted again: every read re-checks the tree
    tree.process(104, 900, {104: ""})
    write(tmp_path, f"proc/{ROOT_PID}/task/{ROOT_PID}/children", "101 103 104 ")
    assert (
        reader.read_totals(ROOT_PID, now=start + _STILL_RECHECK_S + 0.6)[1] == after[1] + 900 * PAGE
    )
    reader.close()
