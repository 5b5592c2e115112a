"""Pressure levels: ordering, thresholds, hysteresis (against a reference model), overrides."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from montage.errors import ConfigError
from montage.memory.pressure import (
    MemoryPressureLevel,
    PressureThresholds,
    classify,
    effective_percent,
)

LOW, MODERATE, HIGH, CRITICAL = (
    MemoryPressureLevel.LOW,
    MemoryPressureLevel.MODERATE,
    MemoryPressureLevel.HIGH,
    MemoryPressureLevel.CRITICAL,
)
LEVELS = [LOW, MODERATE, HIGH, CRITICAL]
DEFAULT = PressureThresholds()

percents = st.floats(min_value=0.0, max_value=120.0, allow_nan=False)


# --- the level type ---------------------------------------------------------------------------


def test_levels_order_by_severity_not_by_string() -> None:
    assert sorted([CRITICAL, LOW, HIGH, MODERATE]) == LEVELS
    assert LOW < MODERATE < HIGH < CRITICAL
    assert CRITICAL > HIGH and HIGH >= HIGH and MODERATE <= HIGH  # "critical" < "high" as strings
    assert max(HIGH, CRITICAL, LOW) is CRITICAL
    assert [level.rank for level in LEVELS] == [0, 1, 2, 3]
    assert [MemoryPressureLevel.from_rank(r) for r in (-1, 0, 2, 9)] == [LOW, LOW, HIGH, CRITICAL]


def test_levels_are_the_spec_strings() -> None:
    assert [level.value for level in LEVELS] == ["low", "moderate", "high", "critical"]
    assert HIGH == "high" and MemoryPressureLevel("critical") is CRITICAL
    assert json.dumps({"level": HIGH}) == '{"level": "high"}'
    assert str(MODERATE) == "moderate" and f"{CRITICAL}" == "critical"


def test_ordering_against_strings_uses_rank_or_refuses() -> None:
    assert HIGH >= "moderate" and CRITICAL > "high" and not (CRITICAL < "high")
    with pytest.raises(TypeError):
        _ = HIGH < "zzz"  # would silently compare strings otherwise
    with pytest.raises(TypeError):
        _ = "zzz" > HIGH  # noqa: SIM300 (the reflected operand is the point)


# --- classify without history -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(0, LOW), (69.99, LOW), (70, MODERATE), (79.9, MODERATE), (80, HIGH), (89.9, HIGH),
     (90, CRITICAL), (100, CRITICAL), (250, CRITICAL)],
)  # fmt: skip
def test_spec_thresholds(percent: float, expected: MemoryPressureLevel) -> None:
    assert classify(percent) is expected


def test_custom_thresholds() -> None:
    thresholds = PressureThresholds(moderate_pct=50, high_pct=60, critical_pct=95)
    assert [classify(p, thresholds=thresholds) for p in (49, 50, 60, 94, 95)] == [
        LOW, MODERATE, HIGH, HIGH, CRITICAL,
    ]  # fmt: skip


def test_psi_full_escalates_to_at_least_high() -> None:
    assert classify(10, psi_full_avg10=10.0) is HIGH
    assert classify(10, psi_full_avg10=9.99) is LOW
    assert classify(95, psi_full_avg10=50.0) is CRITICAL  # never lowers
    assert (
        classify(10, psi_full_avg10=3, thresholds=PressureThresholds(psi_full_high_pct=2)) is HIGH
    )


def test_low_available_memory_is_critical_whatever_the_ratio() -> None:
    assert classify(5, available_mb=255.9) is CRITICAL
    assert classify(5, available_mb=256) is LOW
    assert classify(5, available_mb=100, thresholds=PressureThresholds(min_available_mb=64)) is LOW


def test_nan_percent_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        classify(math.nan)


# --- hysteresis -------------------------------------------------------------------------------


def test_hysteresis_walkthrough() -> None:
    steps = [(50, LOW), (72, MODERATE), (68, MODERATE), (65.1, MODERATE), (64.9, LOW),
             (91, CRITICAL), (86, CRITICAL), (85, CRITICAL), (84.9, HIGH), (75.5, HIGH),
             (60, LOW)]  # fmt: skip
    level: MemoryPressureLevel | None = None
    for percent, expected in steps:
        level = classify(percent, previous=level)
        assert level is expected, percent


def reference_step(
    previous: MemoryPressureLevel | None, percent: float, thresholds: PressureThresholds
) -> MemoryPressureLevel:
    """A deliberately naive model: climb while the next entry is reached, then descend one
    level at a time while below the current level's exit point."""
    entries = [0.0, thresholds.moderate_pct, thresholds.high_pct, thresholds.critical_pct]
    rank = 0 if previous is None else previous.rank
    while rank < 3 and percent >= entries[rank + 1]:
        rank += 1
    if previous is not None:
        while rank > 0 and percent < entries[rank] - thresholds.hysteresis_pct:
            rank -= 1
    else:
        while rank > 0 and percent < entries[rank]:
            rank -= 1
    return LEVELS[rank]


thresholds_strategy = st.builds(
    lambda a, b, c, h: PressureThresholds(
        moderate_pct=a, high_pct=a + b, critical_pct=min(100.0, a + b + c), hysteresis_pct=h
    ),
    a=st.floats(min_value=20, max_value=60),
    b=st.floats(min_value=1, max_value=15),
    c=st.floats(min_value=1, max_value=20),
    h=st.floats(min_value=0, max_value=15),
)


@given(st.lists(percents, min_size=1, max_size=60), thresholds_strategy)
def test_level_sequence_matches_the_reference_model(
    sequence: list[float], thresholds: PressureThresholds
) -> None:
    level: MemoryPressureLevel | None = None
    expected: MemoryPressureLevel | None = None
    for percent in sequence:
        level = classify(percent, previous=level, thresholds=thresholds)
        expected = reference_step(expected, percent, thresholds)
        assert level is expected


@given(st.sampled_from(LEVELS), percents)
def test_level_never_drops_while_above_the_lower_band(
    previous: MemoryPressureLevel, percent: float
) -> None:
    level = classify(percent, previous=previous)
    if percent >= DEFAULT.entry_pct(previous) - DEFAULT.hysteresis_pct:
        assert level >= previous
    else:
        assert level < previous


@given(st.sampled_from(LEVELS), percents)
def test_going_up_is_immediate(previous: MemoryPressureLevel, percent: float) -> None:
    fresh = classify(percent)
    assert classify(percent, previous=previous) >= fresh  # history can only hold a level up
    assert classify(percent, previous=previous) == max(fresh, classify(percent, previous=previous))


@given(st.sampled_from(LEVELS), percents)
def test_leaving_a_level_needs_the_full_band(previous: MemoryPressureLevel, percent: float) -> None:
    """Without hysteresis the history is irrelevant."""
    no_band = PressureThresholds(hysteresis_pct=0)
    assert classify(percent, previous=previous, thresholds=no_band) is classify(
        percent, thresholds=no_band
    )


# --- threshold validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"moderate_pct": 80, "high_pct": 70},
        {"high_pct": 95, "critical_pct": 90},
        {"critical_pct": 101},
        {"moderate_pct": 0},
        {"moderate_pct": -5},
        {"hysteresis_pct": -1},
        {"hysteresis_pct": 70},
        {"psi_full_high_pct": 150},
        {"min_available_mb": -1},
        {"high_pct": math.nan},
        {"critical_pct": math.inf},
        {"moderate_pct": True},
        {"moderate_pct": "70"},
    ],
)
def test_bad_thresholds_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PressureThresholds(**kwargs)  # type: ignore[arg-type]


# --- effective percent ------------------------------------------------------------------------


def test_effective_percent_is_the_worse_of_system_and_budget() -> None:
    assert effective_percent(50, 100) == 50.0
    assert effective_percent(50, 100, tree_bytes=90, budget_bytes=100) == 90.0
    assert effective_percent(50, 100, tree_bytes=10, budget_bytes=100) == 50.0
    assert (
        effective_percent(50, 100, tree_bytes=90) == 50.0
    )  # no budget: the tree alone is no limit
    assert effective_percent(300, 100) == 300.0  # not clamped: over the ceiling shows
    with pytest.raises(ValueError):
        effective_percent(1, 0)


@given(
    st.integers(0, 2**40),
    st.integers(1, 2**40),
    st.integers(0, 2**40),
    st.integers(1, 2**40),
)
def test_effective_percent_bounds(used: int, ceiling: int, tree: int, budget: int) -> None:
    percent = effective_percent(used, ceiling, tree, budget)
    assert percent >= 100 * used / ceiling and percent >= 100 * tree / budget
    assert percent in (100 * used / ceiling, 100 * tree / budget)
