"""The editor's encoder choice: preset/CRF from the caller, lean defaults, memory limits.

What x264 really did is read back from the output: x264 writes its settings into the stream
(an SEI "x264 - core ... options: ... subme=1 ... crf=18.0"), so these tests check the encoded
file, not the command line we built.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from montage.video import encoding
from montage.video.editor import VideoEditor
from montage.video.encoding import PRESETS, EncoderChoice, encoder_defaults
from montage.video.segments import VideoSegment

MakeClip = Callable[..., Path]
SUBME = {"ultrafast": 0, "superfast": 1, "veryfast": 2, "faster": 4, "medium": 7}


@pytest.fixture(scope="module")
def src6(make_clip: MakeClip) -> Path:
    """6 s, 25 fps, keyframe every second."""
    return make_clip(duration=6)


def segments(src: Path) -> list[VideoSegment]:
    return [VideoSegment(0.5, 1.5, src), VideoSegment(2.2, 3.52, src), VideoSegment(4.0, 6.0, src)]


def x264_options(path: Path) -> list[dict[str, str]]:
    """The options of every x264 SEI in ``path`` (one per re-encoded piece)."""
    found = re.findall(rb"x264 - core \d+.*? options: ([^\x00]*)", path.read_bytes())
    return [dict(kv.split("=", 1) for kv in opts.decode().split() if "=" in kv) for opts in found]


def frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# ----------------------------------------------------------------- validation


@given(st.text(max_size=12).filter(lambda s: s.strip().lower() not in PRESETS))
@settings(max_examples=50, deadline=None)
def test_unknown_presets_are_refused(preset: str) -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        VideoEditor(preset=preset)


@given(st.sampled_from(PRESETS), st.integers(0, 51))
@settings(max_examples=30, deadline=None)
def test_every_preset_and_crf_in_range_is_accepted(preset: str, crf: int) -> None:
    editor = VideoEditor(preset=preset.upper(), crf=crf)
    assert editor.encoder == EncoderChoice(preset, crf)


@given(
    st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=52),
        st.floats().filter(lambda x: not (math.isfinite(x) and x == int(x) and 0 <= x <= 51)),
        st.booleans(),
        st.text(max_size=3),
    )
)
@settings(max_examples=60, deadline=None)
def test_bad_crf_is_refused(crf: Any) -> None:
    with pytest.raises(ValueError, match="crf must be a whole number from 0 to 51"):
        VideoEditor(crf=crf)


def test_bad_choice_per_call_writes_nothing(src6: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.mp4"
    with pytest.raises(ValueError, match="preset"):
        VideoEditor().extract_and_concatenate_efficient(
            src6, segments(src6), out, mode="accurate", preset="fastest"
        )
    with pytest.raises(ValueError, match="crf"):
        VideoEditor().extract_and_concatenate_efficient(src6, segments(src6), out, crf=99)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- precedence


def test_call_over_editor_over_context_over_default() -> None:
    default = EncoderChoice()
    assert encoding.base_settings(default).preset == encoding.DEFAULT_PRESET == "ultrafast"
    assert encoding.base_settings(default).crf == encoding.DEFAULT_CRF == 18
    with encoder_defaults(preset="medium", crf=30):
        context = encoding.current_defaults()
        with encoder_defaults(crf=22):  # nested: only crf changes
            assert encoding.current_defaults() == EncoderChoice("medium", 22)
        assert context == EncoderChoice("medium", 30)
        editor = EncoderChoice(preset="veryfast")
        call = EncoderChoice(crf=10)
        assert call.over(editor).over(context) == EncoderChoice("veryfast", 10)
    assert encoding.current_defaults() == EncoderChoice()


@given(st.sampled_from(PRESETS))
@settings(max_examples=10, deadline=None)
def test_lookahead_and_threads_are_bounded(preset: str) -> None:
    from montage.ffmpeg.profiles import X264_PRESETS

    enc = encoding.base_settings(EncoderChoice(preset))
    assert enc.rc_lookahead == min(encoding.MAX_LOOKAHEAD, X264_PRESETS[preset][2])
    assert 1 <= enc.threads <= encoding.MAX_THREADS


# ----------------------------------------------------------------- real encodes


def test_default_accurate_edit_uses_ultrafast_crf18(src6: Path, tmp_path: Path) -> None:
    out = tmp_path / "default.mp4"
    report = VideoEditor().extract_and_concatenate_efficient(
        src6, segments(src6), out, mode="accurate"
    )
    assert report.encoder is not None
    assert report.encoder["preset"] == "ultrafast" and report.encoder["crf"] == 18
    options = x264_options(out)
    assert options, "no x264 settings in the output"
    for opts in options:
        assert opts["subme"] == str(SUBME["ultrafast"]) and opts["crf"] == "18.0"
    assert frame_count(out) == report.expected_frames == 25 + 33 + 50


@pytest.mark.parametrize(
    ("mode", "preset", "crf"), [("accurate", "superfast", 30), ("smart", "veryfast", 24)]
)
def test_chosen_preset_and_crf_reach_the_encoder(
    src6: Path, tmp_path: Path, mode: str, preset: str, crf: int
) -> None:
    out = tmp_path / f"{mode}.mp4"
    editor = VideoEditor(preset="medium", crf=40)  # the call's choice wins
    report = editor.extract_and_concatenate_efficient(
        src6, segments(src6), out, mode=mode, preset=preset, crf=crf
    )
    assert report.mode == mode, report.fallback_reason
    assert report.encoder is not None and report.encoder["preset"] == preset
    ours = [o for o in x264_options(out) if o.get("crf") == f"{crf}.0"]
    assert ours, x264_options(out)
    for opts in ours:
        assert opts["subme"] == str(SUBME[preset])
        if mode == "smart":  # short pieces: one thread, no B-frames
            assert opts["threads"] == "1" and opts["bframes"] == "0"
    assert frame_count(out) == report.expected_frames == 25 + 33 + 50


def test_copy_reports_no_encoder(src6: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy.mp4"
    report = VideoEditor(preset="slow").extract_and_concatenate_efficient(
        src6, segments(src6), out, mode="copy"
    )
    assert report.mode == "copy" and report.encoder is None


def test_context_defaults_reach_an_editor_made_inside(src6: Path, tmp_path: Path) -> None:
    out = tmp_path / "ctx.mp4"
    with encoder_defaults(preset="veryfast", crf=35):
        report = VideoEditor().extract_and_concatenate_efficient(
            src6, [VideoSegment(0.5, 2.0, src6)], out, mode="accurate"
        )
    assert report.encoder is not None
    assert (report.encoder["preset"], report.encoder["crf"]) == ("veryfast", 35)
    assert all(o["crf"] == "35.0" for o in x264_options(out))


# ----------------------------------------------------------------- memory limits


def _config(level: str, available_mb: float, size: tuple[int, int] = (1920, 1080)) -> Any:
    from montage.adaptive import MediaFacts, plan_processing
    from montage.memory.pressure import MemoryPressureLevel

    return plan_processing(
        available_mb=available_mb,
        memory_limit_mb=max(available_mb, 1.0),
        level=MemoryPressureLevel(level),
        cores=2,
        facts=MediaFacts(width=size[0], height=size[1], pix_fmt="yuv420p"),
    )


def _source(path: Path) -> Any:
    from montage.video.cutting import build_index

    return build_index(path)


@given(
    preset=st.sampled_from(PRESETS),
    level=st.sampled_from(["low", "moderate", "high", "critical"]),
    available_mb=st.floats(50, 4000),
)
@settings(max_examples=60, deadline=None)
def test_memory_pressure_only_ever_lowers_the_settings(
    src1080: Any, preset: str, level: str, available_mb: float
) -> None:
    from montage.adaptive import HEADROOM_FRACTION
    from montage.ffmpeg.profiles import FFmpegMemoryProfile, predict_peak_mb, profile_settings

    config = _config(level, available_mb)
    wanted = encoding.base_settings(EncoderChoice(preset))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("montage.adaptive.get_safe_processing_config", lambda *a, **k: config)
        got = encoding.fit_to_memory(wanted, src1080, None)
    assert PRESETS.index(got.preset) <= PRESETS.index(wanted.preset)
    assert got.threads <= wanted.threads and got.rc_lookahead <= wanted.rc_lookahead
    assert got.crf == wanted.crf  # quality target kept; only speed/memory knobs move
    if config.ffmpeg_profile is not FFmpegMemoryProfile.HIGH:
        knobs = profile_settings(config.ffmpeg_profile)
        assert PRESETS.index(got.preset) <= PRESETS.index(knobs.preset)
        assert got.rc_lookahead <= knobs.rc_lookahead
    usable = config.available_mb * (1 - HEADROOM_FRACTION)
    peak = predict_peak_mb(
        (1920, 1080),
        config.ffmpeg_profile,
        preset=got.preset,
        threads=got.threads,
        rc_lookahead=got.rc_lookahead,
    )
    assert peak <= usable or got.preset == "ultrafast"


@pytest.fixture(scope="module")
def src1080(make_clip: MakeClip) -> Any:
    return _source(make_clip(duration=1, size="1920x1080", rate=10, audio=False, gop=5))


def test_critical_pressure_encodes_ultrafast_and_stays_exact(
    src6: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config("critical", 100.0, size=(320, 240))
    monkeypatch.setattr("montage.adaptive.get_safe_processing_config", lambda *a, **k: config)
    out = tmp_path / "critical.mp4"
    report = VideoEditor(preset="medium").extract_and_concatenate_efficient(
        src6, segments(src6), out, mode="accurate"
    )
    assert report.encoder is not None
    assert report.encoder["preset"] == "ultrafast" and report.encoder["threads"] == 1
    assert all(o["subme"] == "0" for o in x264_options(out))
    assert frame_count(out) == report.expected_frames == 25 + 33 + 50


def test_cli_presets_match_the_library() -> None:
    """Every re-encoding command offers exactly the presets the editor accepts."""
    import click

    from montage.cli.app import app

    for name in ("extract", "highlights", "demo"):
        command = app.commands[name]
        (option,) = [p for p in command.params if p.name == "preset"]
        assert isinstance(option.type, click.Choice)
        assert tuple(option.type.choices) == PRESETS, name
