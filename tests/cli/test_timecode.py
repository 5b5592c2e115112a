"""Times and ranges as people type them on the command line."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from montage.cli.timecode import format_time, parse_range, parse_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("90.5", 90.5), ("1:30", 90.0), ("01:02:03.250", 3723.25), ("0:00:10", 10.0)],
)
def test_parse_time_forms(text: str, seconds: float) -> None:
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-5", "nan", "inf", "1:75", "1:2:3:4", "10s"])
def test_parse_time_rejects_nonsense_with_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid time"):
        parse_time(text)


def test_parse_range_rejects_reversed_and_malformed() -> None:
    assert parse_range("1:00-1:30") == (60.0, 90.0)
    with pytest.raises(ValueError, match="after the start"):
        parse_range("40-10")
    with pytest.raises(ValueError, match="START-END"):
        parse_range("10")
    with pytest.raises(ValueError, match="START-END"):
        parse_range("10-20-30")


@given(st.floats(min_value=0, max_value=10 * 3600, allow_nan=False, allow_infinity=False))
def test_format_then_parse_round_trips_to_the_millisecond(seconds: float) -> None:
    assert math.isclose(parse_time(format_time(seconds)), seconds, abs_tol=0.0006)


@given(
    st.floats(min_value=0, max_value=5000, allow_nan=False),
    st.floats(min_value=0.001, max_value=5000, allow_nan=False),
)
def test_any_ordered_pair_parses_back(start: float, length: float) -> None:
    text = f"{format_time(start)}-{format_time(start + length)}"
    a, b = parse_range(text)
    assert a < b
    assert math.isclose(a, start, abs_tol=0.0006)
