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
