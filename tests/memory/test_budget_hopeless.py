"""A request that can never fit because nothing is reserved fails instead of waiting forever."""

from __future__ import annotations

import time

import pytest

from montage.errors import InsufficientMemoryError
from montage.memory import budget as budget_module
from montage.memory.budget import MemoryBudget
from montage.memory.usage import process_tree_memory


def test_unreserved_usage_that_never_shrinks_gives_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(budget_module, "NOTHING_TO_WAIT_FOR_S", 0.5)
    used_mb = process_tree_memory().tree_rss_bytes / 1048576
    budget = MemoryBudget(total_mb=used_mb + 40.0, headroom_pct=0.0)
    started = time.monotonic()
    with (
        pytest.raises(InsufficientMemoryError, match="no reservation is held"),
        budget.reserve(30.0 + 20.0, "too-big-for-what-is-left"),
    ):
        pass
    assert time.monotonic() - started < 5.0


def test_a_stopped_job_stops_waiting_for_memory() -> None:
    import threading

    from montage.memory.budget import CANCEL_WAITS

    used_mb = process_tree_memory().tree_rss_bytes / 1048576
    budget = MemoryBudget(total_mb=used_mb + 100.0, headroom_pct=0.0)
    stop = threading.Event()
    outcome: list[BaseException] = []

    def waiter() -> None:
        CANCEL_WAITS.set(stop)
        try:
            with budget.reserve(60.0, "second"):
                pass
        except InsufficientMemoryError as error:
            outcome.append(error)

    with budget.reserve(60.0, "first"):  # holds the room the waiter needs
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive(), "the waiter should be waiting"
        started = time.monotonic()
        stop.set()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - started < 2.0
    assert outcome and "cancelled" in str(outcome[0])
