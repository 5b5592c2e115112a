"""MemoryBudget admission with real threads, real child processes and real RSS."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from montage.errors import ConfigError, InsufficientMemoryError
from montage.memory.budget import MemoryBudget, get_memory_budget, memory_constrained_operation
from montage.memory.monitor import memory_guard
from montage.memory.usage import process_tree_memory

from .conftest import wait_for

pytestmark = pytest.mark.usefixtures("sampler")  # each test with both samplers

MIB = 1024 * 1024


def tree_mb() -> float:
    return process_tree_memory().tree_rss_bytes / MIB


def budget_with_free(free_mb: float) -> MemoryBudget:
    """A budget with about ``free_mb`` left over after this process's current usage."""
    return MemoryBudget(total_mb=tree_mb() + free_mb, headroom_pct=0.0)


def test_reservations_are_counted_and_released() -> None:
    budget = budget_with_free(200)
    with budget.reserve(50, "decode") as first, budget.reserve(30, "encode"):
        assert first.name == "decode" and first.reserved_mb == 50
        assert budget.reserved_mb == 80
        assert budget.holders() == [("decode", 50), ("encode", 30)]
    assert budget.reserved_mb == 0 and budget.holders() == []


def test_waiters_are_admitted_in_arrival_order() -> None:
    """A small late request must not overtake a large earlier one (FIFO, no starvation)."""
    budget = budget_with_free(100)
    admitted: list[str] = []

    def worker(name: str, mb: float) -> None:
        with budget.reserve(mb, name, timeout=20):
            admitted.append(name)
            time.sleep(0.05)

    big = threading.Thread(target=worker, args=("big", 60))
    small = threading.Thread(target=worker, args=("small", 10))
    with budget.reserve(80, "holder"):
        big.start()
        assert wait_for(lambda: len(budget._queue) == 1)
        small.start()  # 10 MiB would fit beside the holder, but "big" came first
        assert wait_for(lambda: len(budget._queue) == 2)
        time.sleep(0.3)  # several re-check periods
        assert admitted == []
    big.join(20)
    small.join(20)
    assert admitted == ["big", "small"]


def test_a_waiter_is_admitted_when_a_reservation_is_released() -> None:
    budget = budget_with_free(100)
    waited_s: list[float] = []

    def waiter() -> None:
        start = time.monotonic()
        with budget.reserve(60, "waiter", timeout=20):
            waited_s.append(time.monotonic() - start)

    thread = threading.Thread(target=waiter)
    with budget.reserve(80, "holder"):
        thread.start()
        # queued, then held back: a loaded machine may start the thread late, and a waiter
        # that only began waiting as the holder left would have waited ~0 s
        assert wait_for(lambda: len(budget._queue) == 1)
        time.sleep(0.4)
        assert waited_s == []
    thread.join(20)
    assert len(waited_s) == 1 and 0.3 <= waited_s[0] < 5


def test_timeout_explains_request_free_and_holders() -> None:
    budget = budget_with_free(100)
    with budget.reserve(80, "ffmpeg_encode"):
        start = time.monotonic()
        with pytest.raises(InsufficientMemoryError) as caught, budget.reserve(60, "cut", 0.3):
            pass
        elapsed_s = time.monotonic() - start
    error = caught.value
    assert 0.3 <= elapsed_s < 3
    assert error.requested_mb == 60 and 0 <= error.free_mb < 60
    message = str(error)
    assert "60 MiB" in message and "'cut'" in message and "timed out" in message
    assert "ffmpeg_encode (80 MiB)" in message
    assert budget.holders() == [] and budget._queue == type(budget._queue)()


def test_request_larger_than_the_whole_budget_fails_at_once() -> None:
    budget = MemoryBudget(total_mb=tree_mb() + 100, headroom_pct=50.0)
    start = time.monotonic()
    too_big_mb = budget_total_usable(budget) + 1
    with (
        pytest.raises(InsufficientMemoryError, match="larger than the whole usable budget"),
        budget.reserve(too_big_mb, "huge", timeout=None),
    ):
        pass
    assert time.monotonic() - start < 5.0  # not the 15 s "nothing to wait for" path, nor forever


def budget_total_usable(budget: MemoryBudget) -> float:
    return budget._snapshot().usable_mb


@settings(max_examples=30, deadline=None)
@given(
    total_mb=st.floats(min_value=100, max_value=100_000),
    headroom_pct=st.floats(min_value=0, max_value=90),
    fraction=st.floats(min_value=0.0, max_value=3.0),
)
def test_oversized_requests_fail_immediately_and_others_do_not(
    total_mb: float, headroom_pct: float, fraction: float
) -> None:
    budget = MemoryBudget(total_mb=total_mb, headroom_pct=headroom_pct)
    usable_mb = total_mb * (1 - headroom_pct / 100)
    request_mb = usable_mb * fraction
    if request_mb > usable_mb:
        with pytest.raises(InsufficientMemoryError) as caught, budget.reserve(request_mb, "x", 5):
            pass
        assert caught.value.requested_mb == request_mb
    else:
        # Fits the budget in principle: either admitted, or refused only by current usage.
        try:
            with budget.reserve(request_mb, "x", timeout=0) as reservation:
                assert budget.reserved_mb == reservation.reserved_mb == request_mb
        except InsufficientMemoryError as error:
            assert "timed out" in str(error)
            assert request_mb > error.free_mb or error.free_mb == 0  # over budget already


def test_attached_process_counts_its_real_memory(tmp_path: Path) -> None:
    """A job that uses more than it reserved is charged what it really uses."""
    release = tmp_path / "release"
    code = (
        "import os, sys, time\n"
        "b = bytearray(b'1') * (150 * 1024 * 1024)\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
    )
    budget = budget_with_free(220)
    child = subprocess.Popen([sys.executable, "-c", code, str(release)], stdout=subprocess.PIPE)
    try:
        with budget.reserve(10, "underestimated") as reservation:
            reservation.attach_pid(child.pid)
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            [(name, counted_mb)] = budget.holders()
            assert name == "underestimated" and counted_mb >= 150
            # By estimates 10 + 100 fits in 220; by real use 150 + 100 does not.
            with pytest.raises(InsufficientMemoryError), budget.reserve(100, "next", 0.3):
                pass
            release.touch()
            assert child.wait(timeout=30) == 0
            assert reservation.actual_mb() == 0  # exited: the estimate counts again
            with budget.reserve(100, "next", timeout=5):
                assert budget.reserved_mb == 110
    finally:
        release.touch()
        child.kill()
        child.wait()


def test_guard_narrows_the_process_wide_budget() -> None:
    """Jobs started inside a memory_guard obey its (smaller) budget."""
    budget = get_memory_budget()
    assert budget is get_memory_budget()
    with memory_guard(max_memory_mb=tree_mb() * 1.2 + 50, on_exceed="ignore"):
        with (
            pytest.raises(InsufficientMemoryError, match="whole usable budget"),
            memory_constrained_operation(10_000, "too big here", timeout=None),
        ):
            pass
        with memory_constrained_operation(5, "small", timeout=5) as reservation:
            assert reservation.name == "small" and ("small", 5) in budget.holders()
    assert ("small", 5) not in budget.holders()


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        MemoryBudget(total_mb=0)
    with pytest.raises(ConfigError):
        MemoryBudget(headroom_pct=100)
    with pytest.raises(ConfigError), MemoryBudget(total_mb=100).reserve(-1, "negative"):
        pass


def test_without_a_budget_the_machine_figure_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from montage.memory.monitor import MemoryMonitor

    monkeypatch.delenv("MONTAGE_MEMORY_LIMIT", raising=False)
    monitor = MemoryMonitor()
    budget = MemoryBudget(monitor=monitor)
    machine_mb = tree_mb() + monitor.get_current_stats().available_mb
    with budget.reserve(10, "small", timeout=5):
        assert budget.holders() == [("small", 10)]
    with (
        pytest.raises(InsufficientMemoryError, match="machine budget"),
        budget.reserve(machine_mb * 2, "more than the machine has"),
    ):
        pass
