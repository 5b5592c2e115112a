"""VideoSegment: validated on construction, immutable, clamped or refused past the media end."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from montage.video.segments import END_TOLERANCE_S, SegmentClampedWarning, VideoSegment

finite = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(start=finite, length=st.floats(min_value=1e-3, max_value=1e5))
def test_valid_segments_keep_their_times(start: float, length: float) -> None:
    end = start + length
    if end <= start:  # float rounding ate the length
        return
    seg = VideoSegment(start, end, "in.mp4")
    assert (seg.start_time, seg.end_time) == (start, end)
    assert seg.duration == pytest.approx(end - start)
    assert isinstance(seg.start_time, float)


@given(bad=st.sampled_from([math.nan, math.inf, -math.inf]), which=st.sampled_from([0, 1]))
def test_non_finite_times_are_refused_by_name(bad: float, which: int) -> None:
    times = [1.0, 2.0]
    times[which] = bad
    with pytest.raises(ValueError, match="start_time" if which == 0 else "end_time"):
        VideoSegment(times[0], times[1], "in.mp4")


@given(value=st.one_of(st.booleans(), st.text(max_size=4), st.none(), st.lists(st.integers())))
def test_non_numbers_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="start_time must be a number"):
        VideoSegment(value, 5.0, "in.mp4")  # type: ignore[arg-type]


@given(start=st.floats(max_value=-1e-9, min_value=-1e9))
def test_negative_start_is_refused(start: float) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        VideoSegment(start, 10.0, "in.mp4")


@given(start=finite, back=st.floats(min_value=0, max_value=1e3))
def test_reversed_or_empty_range_is_refused(start: float, back: float) -> None:
    with pytest.raises(ValueError, match="must be after start_time"):
        VideoSegment(start, start - back, "in.mp4")


@pytest.mark.parametrize("path", ["", 3, None])
def test_bad_input_file_is_refused(path: object) -> None:
    with pytest.raises(ValueError, match="input_file"):
        VideoSegment(0, 1, path)  # type: ignore[arg-type]


def test_segments_are_immutable_hashable_and_accept_paths() -> None:
    seg = VideoSegment(1, 2, Path("/x/in.mp4"), segment_id="a")
    assert seg.input_file == "/x/in.mp4" and seg.path == Path("/x/in.mp4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.start_time = 5  # type: ignore[misc]
    assert seg == VideoSegment(1.0, 2.0, "/x/in.mp4", "a")
    assert len({seg, VideoSegment(1.0, 2.0, "/x/in.mp4", "a")}) == 1


@given(start=st.floats(0, 9), length=st.floats(0.01, 20), media=st.floats(9.5, 15))
def test_clamp_never_passes_the_media_end(start: float, length: float, media: float) -> None:
    seg = VideoSegment(start, start + length, "in.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SegmentClampedWarning)
        clamped = seg.clamp_to(media)
    assert clamped.end_time <= media
    assert clamped.start_time == seg.start_time
    assert clamped.end_time == min(seg.end_time, media)


def test_clamp_warns_or_refuses_when_strict() -> None:
    seg = VideoSegment(2, 12, "in.mp4", segment_id="intro")
    with pytest.warns(SegmentClampedWarning, match="intro.*past the end"):
        assert seg.clamp_to(10).end_time == 10
    with pytest.raises(ValueError, match="ends at 12 s, past the end"):
        seg.clamp_to(10, strict=True)
    assert seg.clamp_to(20) is seg


def test_clamp_within_tolerance_is_silent_even_when_strict() -> None:
    seg = VideoSegment(0, 10 + END_TOLERANCE_S / 2, "in.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seg.clamp_to(10, strict=True).end_time == 10


def test_segment_starting_after_the_end_cannot_be_clamped() -> None:
    with pytest.raises(ValueError, match="at or after the end"):
        VideoSegment(10, 11, "in.mp4").clamp_to(10)
