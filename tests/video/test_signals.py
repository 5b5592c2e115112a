"""The pure accumulators behind streaming analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from montage.video.signals import (
    FLOOR_DBFS,
    SceneDetector,
    SilenceTracker,
    WindowAccumulator,
    frame_difference,
    rank_highlights,
    rms_dbfs,
)


def test_rms_dbfs_of_full_scale_sine_is_minus_3() -> None:
    samples = np.sin(np.linspace(0, 2 * np.pi * 100, 48000, endpoint=False))
    assert rms_dbfs(float(np.dot(samples, samples)), len(samples)) == pytest.approx(-3.01, abs=0.01)
    assert rms_dbfs(0.0, 100) == FLOOR_DBFS
    assert rms_dbfs(1.0, 0) == FLOOR_DBFS


def test_frame_difference_is_mean_absolute() -> None:
    a = np.zeros((4, 4), dtype=np.uint8)
    b = np.full((4, 4), 200, dtype=np.uint8)
    assert frame_difference(a, b) == 200.0
    assert frame_difference(b, a) == 200.0
    assert frame_difference(a, a) == 0.0


@given(
    st.lists(st.floats(min_value=0, max_value=8), min_size=20, max_size=200),
    st.sets(st.integers(min_value=5, max_value=199), max_size=6),
)
def test_scene_detector_finds_spikes_and_nothing_else(noise: list[float], spikes: set[int]) -> None:
    fps = 25.0
    spikes = {i for i in spikes if i < len(noise)}
    kept: list[int] = []
    for i in sorted(spikes):  # spikes closer than min_scene_s to a kept one are not new cuts
        if not kept or (i - kept[-1]) / fps >= 0.5:
            kept.append(i)
    detector = SceneDetector()
    for i, diff in enumerate(noise):
        detector.push(i / fps, 80.0 if i in spikes else diff)
    assert detector.cuts == [i / fps for i in kept]


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40)), min_size=1, max_size=30))
def test_silence_tracker_matches_a_reference(runs: list[tuple[bool, int]]) -> None:
    block = 0.05
    tracker = SilenceTracker(min_silence_s=0.5)
    t = 0.0
    for silent, blocks in runs:
        for _ in range(blocks):
            tracker.push(t, block, -90.0 if silent else -10.0)
            t += block
    # reference: merge consecutive silent runs, keep those >= 0.5 s
    expected: list[list[float]] = []
    t = 0.0
    current: list[float] | None = None
    for silent, blocks in runs:
        if silent:
            current = current or [t, t]
            current[1] = t + blocks * block
        elif current:
            expected.append(current)
            current = None
        t += blocks * block
    if current:
        expected.append(current)
    expected_ranges = [(a, b) for a, b in expected if b - a >= 0.5 - 1e-9]
    got = tracker.finish()
    assert len(got) == len(expected_ranges)
    for (a, b), (c, d) in zip(got, expected_ranges):
        assert math.isclose(a, c, abs_tol=1e-3) and math.isclose(b, d, abs_tol=1e-3)


def test_window_accumulator_means() -> None:
    acc = WindowAccumulator(1.0)
    acc.add(0.2, 2.0)
    acc.add(0.7, 4.0)
    acc.add(2.5, 9.0)
    assert acc.means() == [3.0, 0.0, 9.0]
    assert acc.means(4) == [3.0, 0.0, 9.0, 0.0]


def test_highlights_prefer_loud_moving_parts_and_never_overlap() -> None:
    audio = [-60.0] * 10 + [-6.0] * 5 + [-60.0] * 15
    motion = [1.0] * 10 + [9.0] * 5 + [1.0] * 15
    ranked = rank_highlights(
        duration_s=30.0,
        window_s=1.0,
        audio_rms_db=audio,
        motion=motion,
        scene_changes=[10.0],
        silent_ranges=[(20.0, 30.0)],
        length_s=5.0,
    )
    assert ranked[0].start == 10.0 and ranked[0].end == 15.0
    assert any("scene change" in r for r in ranked[0].reasons)
    for i, a in enumerate(ranked):
        for b in ranked[i + 1 :]:
            assert a.end <= b.start or b.end <= a.start
    assert all(0 <= c.start < c.end <= 30.0 for c in ranked)
