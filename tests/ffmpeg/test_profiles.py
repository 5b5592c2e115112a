"""Profiles and the peak-memory model: the orderings callers rely on, and one real measurement.

The budget admits ffmpeg children by ``predict_peak_mb``; stepping down with ``cheaper()`` must
really lower the prediction, and the prediction must track a real ffmpeg's ``ru_maxrss``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from montage.ffmpeg.profiles import (
    FFmpegMemoryProfile,
    ProfileSettings,
    bytes_per_pixel,
    cheaper,
    predict_peak_mb,
    profile_for_level,
    profile_settings,
)
from tests.conftest import polled_peak_mb

P = FFmpegMemoryProfile
PROFILES = list(P)
OPERATIONS = ["encode", "decode", "copy", "analyze"]
PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"]

sizes = st.tuples(st.integers(16, 4096), st.integers(16, 2304))
codecs = st.sampled_from(["libx264", "libx265", "mpeg4"])


def test_cheaper_chain_walks_down_to_minimal() -> None:
    chain = [P.HIGH]
    while (step := cheaper(chain[-1])) is not None:
        chain.append(step)
    assert chain == [P.HIGH, P.BALANCED, P.LOW, P.MINIMAL]
    assert cheaper("low") is P.MINIMAL
    assert cheaper(P.MINIMAL) is None


def test_profile_for_level_maps_pressure_to_profile() -> None:
    from montage.memory.pressure import MemoryPressureLevel as L

    expected = {L.LOW: P.HIGH, L.MODERATE: P.BALANCED, L.HIGH: P.LOW, L.CRITICAL: P.MINIMAL}
    for level, profile in expected.items():
        assert profile_for_level(level) is profile
        assert profile_for_level(level.value) is profile
    assert profile_for_level("CRITICAL") is P.MINIMAL
    with pytest.raises(ValueError, match="bogus"):
        profile_for_level("bogus")


def test_profile_values_and_minimal_knobs() -> None:
    assert [p.value for p in PROFILES] == ["minimal", "low", "balanced", "high"]
    assert P("balanced") is P.BALANCED
    minimal = profile_settings("minimal")
    assert isinstance(minimal, ProfileSettings)
    assert (minimal.encoder_threads, minimal.decoder_threads, minimal.filter_threads) == (1, 1, 1)
    assert (minimal.preset, minimal.rc_lookahead) == ("ultrafast", 0)
    high = profile_settings(P.HIGH)
    assert high.encoder_threads == 0 and high.decoder_threads == 0  # auto


def test_cheaper_profiles_have_no_larger_knobs() -> None:
    for profile in PROFILES[1:]:
        lower = profile_settings(cheaper(profile) or profile)
        upper = profile_settings(profile)
        assert lower.rc_lookahead <= upper.rc_lookahead
        assert lower.max_muxing_queue_size <= upper.max_muxing_queue_size
        assert PRESETS.index(lower.preset) <= PRESETS.index(upper.preset)
        for knob in ("encoder_threads", "decoder_threads", "filter_threads"):
            low_n, up_n = getattr(lower, knob), getattr(upper, knob)
            assert up_n == 0 or 0 < low_n <= up_n, knob  # 0 (auto) is the most


@settings(max_examples=150, deadline=None)
@given(size=sizes, operation=st.sampled_from(OPERATIONS), codec=codecs)
def test_cheaper_profile_never_predicts_more(
    size: tuple[int, int], operation: str, codec: str
) -> None:
    for profile in PROFILES[1:]:
        lower = cheaper(profile)
        assert lower is not None
        assert predict_peak_mb(size, lower, operation, codec=codec) <= predict_peak_mb(
            size, profile, operation, codec=codec
        )


@settings(max_examples=200, deadline=None)
@given(
    size=sizes,
    grow=st.tuples(st.integers(0, 2000), st.integers(0, 1200)),
    profile=st.sampled_from([*PROFILES, None]),
    operation=st.sampled_from(OPERATIONS),
    codec=codecs,
    threads=st.one_of(st.none(), st.integers(0, 32)),
    preset=st.one_of(st.none(), st.sampled_from(PRESETS)),
)
def test_higher_resolution_never_predicts_less(
    size: tuple[int, int],
    grow: tuple[int, int],
    profile: P | None,
    operation: str,
    codec: str,
    threads: int | None,
    preset: str | None,
) -> None:
    bigger = (size[0] + grow[0], size[1] + grow[1])
    kwargs = {"codec": codec, "threads": threads, "preset": preset}
    small_mb = predict_peak_mb(size, profile, operation, **kwargs)  # type: ignore[arg-type]
    big_mb = predict_peak_mb(bigger, profile, operation, **kwargs)  # type: ignore[arg-type]
    assert 0 < small_mb <= big_mb


@settings(max_examples=150, deadline=None)
@given(
    size=sizes,
    threads=st.integers(1, 31),
    lookahead=st.integers(0, 59),
    preset=st.sampled_from(PRESETS),
    codec=st.sampled_from(["libx264", "libx265"]),
)
def test_more_threads_or_lookahead_never_predict_less(
    size: tuple[int, int], threads: int, lookahead: int, preset: str, codec: str
) -> None:
    def peak(t: int, la: int) -> float:
        return predict_peak_mb(size, None, codec=codec, preset=preset, threads=t, rc_lookahead=la)

    assert peak(threads, lookahead) <= peak(threads + 1, lookahead)
    assert peak(threads, lookahead) <= peak(threads, lookahead + 1)


def test_slower_presets_and_x265_cost_more_at_1080p() -> None:
    peaks = [predict_peak_mb(None, None, preset=p, threads=2) for p in PRESETS]
    assert peaks == sorted(peaks)
    assert peaks[-1] > 2 * peaks[0]
    # x265 carries a large fixed cost (measured 330 MiB vs x264's ~130 at ultrafast 1080p)
    x264 = predict_peak_mb(None, None, preset="ultrafast")
    assert predict_peak_mb(None, None, codec="libx265", preset="ultrafast") > 2 * x264


def test_operations_order_and_copy_is_resolution_independent() -> None:
    hd = {op: predict_peak_mb((1920, 1080), P.LOW, op) for op in OPERATIONS}
    assert hd["copy"] < hd["decode"] <= hd["analyze"] < hd["encode"]
    assert predict_peak_mb((3840, 2160), P.LOW, "copy") == hd["copy"]
    with pytest.raises(ValueError, match="operation"):
        predict_peak_mb(None, P.LOW, "transmogrify")


def test_media_info_tuple_and_none_agree() -> None:
    video = SimpleNamespace(width=1920, height=1080, pix_fmt="yuv420p")
    media = SimpleNamespace(video=video)
    for op in OPERATIONS:
        from_tuple = predict_peak_mb((1920, 1080), P.BALANCED, op)
        assert predict_peak_mb(media, P.BALANCED, op) == pytest.approx(from_tuple)
        assert predict_peak_mb(None, P.BALANCED, op) == pytest.approx(from_tuple)
    deep = SimpleNamespace(video=SimpleNamespace(width=1920, height=1080, pix_fmt="yuv444p10le"))
    assert predict_peak_mb(deep, P.BALANCED, "decode") > predict_peak_mb(
        media, P.BALANCED, "decode"
    )


def test_bytes_per_pixel() -> None:
    assert bytes_per_pixel("yuv420p") == 1.5
    assert bytes_per_pixel("rgba") == 4.0
    assert bytes_per_pixel("yuv420p12le") == 3.0  # unknown deep format: 16-bit samples
    assert bytes_per_pixel(None) == 1.5


@pytest.mark.parametrize("profile", [P.MINIMAL, P.HIGH])
def test_prediction_within_35_pct_of_real_encode(
    profile: P, make_clip: object, ffmpeg_exe: str, tmp_path: Path
) -> None:
    clip = make_clip(duration=2.0, size="640x360", rate=30)  # type: ignore[operator]
    knobs = profile_settings(profile)
    argv = [ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if knobs.decoder_threads:
        argv += ["-threads", str(knobs.decoder_threads)]
    argv += ["-i", str(clip), "-c:v", "libx264", "-preset", knobs.preset]
    if knobs.encoder_threads:
        argv += ["-threads", str(knobs.encoder_threads)]
    out = tmp_path / "out.mp4"
    argv += ["-x264-params", f"rc-lookahead={knobs.rc_lookahead}", "-c:a", "aac", str(out)]
    measured_mb = polled_peak_mb(argv)
    predicted_mb = predict_peak_mb((640, 360), profile, "encode")
    assert out.stat().st_size > 1000
    assert abs(predicted_mb - measured_mb) <= 0.35 * measured_mb, (predicted_mb, measured_mb)
