"""Subtitle and data (timecode) streams through every edit mode, with real ffmpeg.

The sources carry cues "cue N" shown from 0.5 N s for 0.4 s (``tests.subtitled``). After an
edit the output's subtitle track must hold exactly the cues shown inside the cuts, clipped to
them and moved to where each segment sits in the output; streams that cannot be kept are
dropped with a warning naming them, and nothing ever fails because of them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from montage.ffmpeg.probe import MediaInfo, StreamInfo, probe
from montage.video import subtitles
from montage.video.editor import EditReport, VideoEditor
from montage.video.segments import VideoSegment
from tests.subtitled import make_subtitled

STEP_S, LENGTH_S = 0.5, 0.4
SPANS = ((1.2, 2.3), (3.0, 4.0))  # the first cut starts inside "cue 2" (1.0-1.4)
TOLERANCE_S = 0.021
_READ = ("-hide_banner", "-loglevel", "error", "-i")  # ASS carries 10 ms steps; mov_text ms

SOURCES = {  # name: (suffix, subtitle codec)
    "mov_text": (".mp4", "mov_text"),
    "srt": (".mkv", "srt"),
    "ass": (".mkv", "ass"),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, ffmpeg_exe: str) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("subtitled")
    made = {
        name: make_subtitled(ffmpeg_exe, folder / f"{name}{suffix}", codec=codec)
        for name, (suffix, codec) in SOURCES.items()
    }
    made["timecode"] = make_subtitled(
        ffmpeg_exe, folder / "timecode.mp4", codec="mov_text", timecode="01:00:00:00"
    )
    return made


def _cues(ffmpeg_exe: str, path: Path) -> list[tuple[float, float, str]]:
    """The output's first subtitle track as (start, end, text), read back by ffmpeg as SRT."""
    text = subprocess.run(
        [ffmpeg_exe, *_READ, str(path), "-map", "0:s:0", "-f", "srt", "-"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout

    def secs(t: str) -> float:
        h, m, s = t.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    pattern = re.compile(r"(\S+) --> (\S+)\n(.+)")
    return [(secs(a), secs(b), body.strip()) for a, b, body in pattern.findall(text)]


def _expected(report: EditReport, gap_s: float = 0.0) -> list[tuple[float, float, str]]:
    """The source cues inside each cut (as the report says it was made), clipped and moved."""
    out: list[tuple[float, float, str]] = []
    offset = 0.0
    for seg in report.segments:
        a, b = seg.actual_start_s, seg.actual_end_s
        for n in range(100):
            start, end = n * STEP_S, n * STEP_S + LENGTH_S
            lo, hi = max(start, a), min(end, b)
            if hi - lo >= 0.005:
                out.append((lo - a + offset, hi - a + offset, f"cue {n}"))
        offset += b - a - gap_s
    return sorted(out)


def _assert_cues(actual: list[tuple[float, float, str]], expected: list[tuple[float, float, str]]):
    assert [c[2] for c in actual] == [c[2] for c in expected]
    for (a0, a1, text), (e0, e1, _) in zip(actual, expected):
        assert a0 == pytest.approx(e0, abs=TOLERANCE_S), text
        assert a1 == pytest.approx(e1, abs=TOLERANCE_S), text


def _segments(path: Path) -> list[VideoSegment]:
    return [VideoSegment(a, b, path) for a, b in SPANS]


@pytest.mark.parametrize("mode", ["copy", "accurate", "smart"])
@pytest.mark.parametrize(
    ("name", "suffix", "codec"),
    [
        ("mov_text", ".mp4", "mov_text"),
        ("srt", ".mkv", "srt"),
        ("ass", ".mkv", "ssa"),
        ("srt", ".mp4", "mov_text"),
        ("mov_text", ".mkv", "srt"),
    ],
)
def test_text_subtitles_are_kept_and_cut_in_every_mode(
    sources: dict[str, Path],
    tmp_path: Path,
    ffmpeg_exe: str,
    mode: str,
    name: str,
    suffix: str,
    codec: str,
) -> None:
    src = sources[name]
    out = tmp_path / f"out{suffix}"
    report = VideoEditor().extract_and_concatenate_efficient(src, _segments(src), out, mode=mode)
    assert report.mode == mode
    assert report.warnings == ()
    subs = [s for s in probe(out).streams if s.kind == "subtitle"]
    assert [(s.codec, s.language) for s in subs] == [(codec, "eng")]
    cues = _cues(ffmpeg_exe, out)
    _assert_cues(cues, _expected(report))
    assert cues[0][2] == "cue 2" and cues[0][0] == pytest.approx(0.0, abs=TOLERANCE_S)


def test_an_ass_source_keeps_its_styles_in_mkv(
    sources: dict[str, Path], tmp_path: Path, ffmpeg_exe: str
) -> None:
    out = tmp_path / "styled.mkv"
    VideoEditor().extract_and_concatenate_efficient(
        sources["ass"], _segments(sources["ass"]), out, mode="accurate"
    )
    dumped = subprocess.run(
        [ffmpeg_exe, *_READ, str(out), "-map", "0:s:0", "-c", "copy", "-f", "ass", "-"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "[V4+ Styles]" in dumped and "Style: Default" in dumped


def test_cues_follow_the_crossfades(
    sources: dict[str, Path], tmp_path: Path, ffmpeg_exe: str
) -> None:
    src = sources["srt"]
    out = tmp_path / "faded.mkv"
    report = VideoEditor().extract_and_concatenate_efficient(
        src, _segments(src), out, mode="accurate", apply_transitions=True, transition_duration=0.2
    )
    # the second segment starts 0.2 s earlier in the output: its head is under the fade
    expected = _expected(report, gap_s=0.2)
    _assert_cues(_cues(ffmpeg_exe, out), expected)


def test_a_join_of_sources_with_different_text_subtitles_keeps_one_track(
    sources: dict[str, Path], tmp_path: Path, ffmpeg_exe: str
) -> None:
    a, b = sources["mov_text"], sources["ass"]
    out = tmp_path / "joined.mp4"
    segments = [VideoSegment(*SPANS[0], a), VideoSegment(*SPANS[1], b)]
    report = VideoEditor().extract_and_concatenate_efficient(a, segments, out, mode="accurate")
    assert report.warnings == ()
    _assert_cues(_cues(ffmpeg_exe, out), _expected(report))


def test_a_source_without_subtitles_drops_the_track_with_a_warning(
    sources: dict[str, Path], tmp_path: Path, clip: Path
) -> None:
    out = tmp_path / "mixed.mp4"
    segments = [VideoSegment(*SPANS[0], sources["srt"]), VideoSegment(0.5, 1.5, clip)]
    report = VideoEditor().extract_and_concatenate_efficient(
        sources["srt"], segments, out, mode="accurate"
    )
    assert [s.kind for s in probe(out).streams] == ["video", "audio"]
    (warning,) = report.warnings
    assert "subtitle stream #2 (srt) of srt.mkv not kept" in warning
    assert clip.name in warning


@pytest.mark.parametrize("mode", ["copy", "accurate", "smart"])
def test_a_timecode_track_never_fails_and_is_reported(
    sources: dict[str, Path], tmp_path: Path, mode: str
) -> None:
    src = sources["timecode"]
    out = tmp_path / "tc.mp4"
    report = VideoEditor().extract_and_concatenate_efficient(src, _segments(src), out, mode=mode)
    assert [s.kind for s in probe(out).streams] == ["video", "audio", "subtitle"]
    (warning,) = report.warnings
    assert warning.startswith("data stream #3 (timecode) of timecode.mp4 not kept")
    video = probe(out).video
    assert video is not None and video.rotation == 0  # (version-1 tkhd: was read as 270)


def test_no_cue_inside_the_cuts_drops_the_track_with_a_warning(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    src = sources["srt"]
    out = tmp_path / "quiet.mkv"
    # 0.42-0.48 s lies between "cue 0" (ends 0.4) and "cue 1" (starts 0.5)
    segments = [VideoSegment(0.42, 0.48, src)]
    report = VideoEditor().extract_and_concatenate_efficient(src, segments, out, mode="accurate")
    assert [s.kind for s in probe(out).streams] == ["video", "audio"]
    assert report.warnings == ("subtitle track 1 not kept: no cue falls inside the cuts",)


def _info(name: str, *streams: tuple[str, str]) -> MediaInfo:
    return MediaInfo(
        path=f"/media/{name}",
        container="matroska,webm",
        duration_s=10.0,
        size_bytes=1,
        bit_rate=None,
        streams=tuple(StreamInfo(i, kind, codec) for i, (kind, codec) in enumerate(streams)),
    )


def test_bitmap_subtitles_are_dropped_with_a_warning_naming_them() -> None:
    pgs = _info(
        "film.mkv", ("video", "h264"), ("subtitle", "hdmv_pgs_subtitle"), ("subtitle", "ass")
    )
    choice = subtitles.choose([pgs], Path("out.mkv"))
    assert [t.position for t in choice.tracks] == [1]
    (warning,) = choice.warnings
    assert warning.startswith("subtitle stream #1 (hdmv_pgs_subtitle) of film.mkv not kept")
    assert "bitmap" in warning


def test_an_output_without_text_subtitles_drops_them_with_a_warning() -> None:
    src = _info("a.mkv", ("video", "h264"), ("subtitle", "subrip"))
    choice = subtitles.choose([src], Path("out.ts"))
    assert choice.tracks == ()
    assert "a .ts output cannot hold text subtitles" in choice.warnings[0]


_TIMES = st.integers(min_value=0, max_value=2_000).map(lambda cs: cs / 100)


@given(
    cues=st.lists(st.tuples(_TIMES, _TIMES), max_size=20),
    cut=st.tuples(_TIMES, _TIMES),
    shift=st.integers(min_value=0, max_value=3_000).map(lambda cs: cs / 100),
)
def test_cut_events_keep_exactly_the_visible_part_of_each_cue(
    cues: list[tuple[float, float]], cut: tuple[float, float], shift: float
) -> None:
    start, end = sorted(cut)
    lines = [
        f"Dialogue: 0,{subtitles.format_time(a)},{subtitles.format_time(b)},Default,,0,0,0,,c{i}"
        for i, (a, b) in enumerate(cues)
    ]
    kept = subtitles.cut_events(lines, start, end, shift - start)
    expected = []
    for i, (a, b) in enumerate(cues):
        lo, hi = max(a, start), min(b, end)
        if hi - lo >= 0.005:
            expected.append((round(lo - start + shift, 2), round(hi - start + shift, 2), f"c{i}"))
    got = []
    for line in kept:
        fields = line.split(",", 9)
        a, b = subtitles.parse_time(fields[1]), subtitles.parse_time(fields[2])
        got.append((round(a, 2), round(b, 2), fields[9]))
    assert got == expected
