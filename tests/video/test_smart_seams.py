"""Smart mode's timestamps where re-encoded pieces meet stream-copied GOPs.

A copied GOP of a source with B-frames decodes ahead of its presentation (dts = pts - the
reorder delay); a re-encoded edge piece without B-frames does not (dts = pts). Joined as they
were, the copied piece's first decode times landed on the edge piece's last ones and the muxer
squeezed them one tick apart, which a CFR re-encode turned into duplicated and dropped frames.

The criterion (CFR sources): every output packet's dts is exactly one frame period after the
previous one (within one tick of the output time base), and no dts is after its pts. A stream
whose reorder delay is constant needs no other step: reordering moves pts, never dts spacing.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from montage.video.assemble import floor_us
from montage.video.editor import EditReport, VideoEditor
from montage.video.segments import VideoSegment
from tests.video.test_editor import assert_segments_match_source, frame_times

MakeClip = Callable[..., Path]
FPS = 25

# x264 B-frame settings of the sources: reorder delay 2 (the default -bf 3 with a B-pyramid),
# 1 (one B-frame, no pyramid) and 0 (no B-frames)
BFRAMES = {
    "bf3": ("-bf", "3"),
    "bf1": ("-bf", "1", "-x264-params", "b-pyramid=none"),
    "bf0": ("-bf", "0"),
}


def packets(path: Path) -> list[tuple[int, int]]:
    """(dts, pts) of every video packet, in decode order, in the stream's time base."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [(p.dts, p.pts) for p in container.demux(stream) if p.size > 0]


def frame_period(path: Path) -> tuple[Fraction, Fraction]:
    """(seconds, ticks of the time base) between two frames of the video stream."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        seconds = 1 / Fraction(stream.average_rate)
        return seconds, seconds / Fraction(stream.time_base)


def dts_faults(path: Path) -> list[str]:
    """Where the output breaks the module's criterion (empty when it holds)."""
    period = frame_period(path)[1]
    pkts = packets(path)
    faults = [f"packet {i}: dts {d} after pts {p}" for i, (d, p) in enumerate(pkts) if d > p]
    for i, ((a, _), (b, _)) in enumerate(itertools.pairwise(pkts)):
        if abs((b - a) - period) > 1:
            faults.append(f"packets {i}->{i + 1}: dts step {b - a} ticks, a frame is {period}")
    return faults


def cfr_reencode_frames(ffmpeg: str, path: Path, tmp_path: Path) -> int:
    """Frames of a plain constant-frame-rate re-encode of ``path`` (what a downstream tool does)."""
    import av

    out = tmp_path / f"cfr-{path.stem}.mp4"
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(path)]
    cmd += ["-map", "0:v:0", "-c:v", "libx264", "-preset", "ultrafast", "-fps_mode", "cfr"]
    subprocess.run([*cmd, str(out)], check=True)
    with av.open(str(out)) as container:
        return sum(1 for _ in container.decode(video=0))


def assert_clean_seams(ffmpeg: str, out: Path, report: EditReport, tmp_path: Path) -> None:
    assert report.mode == "smart", report.fallback_reason
    assert dts_faults(out) == []
    times = frame_times(out)
    assert len(times) == report.expected_frames
    period = float(frame_period(out)[0])
    assert times == pytest.approx([i * period for i in range(len(times))], abs=1e-3)
    assert cfr_reencode_frames(ffmpeg, out, tmp_path) == report.expected_frames


@pytest.fixture(scope="module")
def editor() -> VideoEditor:
    return VideoEditor()


@pytest.fixture(scope="module", params=sorted(BFRAMES))
def src(request: pytest.FixtureRequest, make_clip: MakeClip) -> Path:
    """6 s, 25 fps, a keyframe every second, with the B-frame setting of the param."""
    return make_clip(duration=6, extra=BFRAMES[request.param])


def test_copied_gops_and_reencoded_edges_share_one_dts_offset(
    editor: VideoEditor, src: Path, ffmpeg_exe: str, tmp_path: Path
) -> None:
    """Three segments, none starting or ending on a keyframe: heads, copied middles, tails."""
    segments = [VideoSegment(0.36, 2.6, src), VideoSegment(3.1, 4.5, src)]
    segments.append(VideoSegment(4.72, 5.88, src))
    out = tmp_path / "smart.mp4"
    report = editor.extract_and_concatenate_efficient(src, segments, out, mode="smart")
    assert report.expected_frames == 56 + 35 + 29
    assert_clean_seams(ffmpeg_exe, out, report, tmp_path)
    assert_segments_match_source(out, src, report)


@pytest.mark.parametrize(
    ("rate", "ext"), [("30000/1001", "mp4"), ("30000/1001", "mkv"), ("24000/1001", "mov")]
)
def test_other_containers_and_rates(
    editor: VideoEditor,
    make_clip: MakeClip,
    ffmpeg_exe: str,
    tmp_path: Path,
    rate: str,
    ext: str,
) -> None:
    """Sources whose frame period is not a whole number of ticks (mkv: milliseconds)."""
    src = make_clip(duration=6, rate=rate, ext=ext, gop=30, extra=BFRAMES["bf3"])
    segments = [VideoSegment(0.36, 2.6, src), VideoSegment(3.1, 5.5, src)]
    out = tmp_path / "smart.mp4"
    report = editor.extract_and_concatenate_efficient(src, segments, out, mode="smart")
    assert_clean_seams(ffmpeg_exe, out, report, tmp_path)
    assert_segments_match_source(out, src, report)


@pytest.mark.parametrize("first", [0.0, 1.0])
def test_an_output_starting_with_a_copied_gop(
    editor: VideoEditor, make_clip: MakeClip, ffmpeg_exe: str, tmp_path: Path, first: float
) -> None:
    """The first piece copied (the output starts on a keyframe), re-encoded tails after it."""
    src = make_clip(duration=6, extra=BFRAMES["bf3"])
    segments = [VideoSegment(first, 2.48, src), VideoSegment(3.0, 4.2, src)]
    out = tmp_path / "copied-first.mp4"
    report = editor.extract_and_concatenate_efficient(src, segments, out, mode="smart")
    assert_clean_seams(ffmpeg_exe, out, report, tmp_path)
    assert_segments_match_source(out, src, report)


def test_sources_with_different_reorder_delays(
    editor: VideoEditor, make_clip: MakeClip, ffmpeg_exe: str, tmp_path: Path
) -> None:
    """Copied GOPs of two sources joined (same profile, delay 2 and 0) keep one dts offset."""
    extra_b = ("-x264-params", "bframes=3:b-pyramid=normal:cabac=1:8x8dct=1", "-profile:v", "high")
    extra_0 = ("-x264-params", "bframes=0:cabac=1:8x8dct=1", "-profile:v", "high")
    with_b, without = make_clip(duration=4, extra=extra_b), make_clip(duration=4, extra=extra_0)
    segments = [VideoSegment(0.2, 2.6, with_b), VideoSegment(0.4, 3.2, without)]
    segments.append(VideoSegment(1.3, 3.6, with_b))
    out = tmp_path / "mixed.mp4"
    report = editor.extract_and_concatenate_efficient(with_b, segments, out, mode="smart")
    assert_clean_seams(ffmpeg_exe, out, report, tmp_path)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=149), min_size=4, max_size=4, unique=True).map(
        sorted
    )
)
def test_any_frame_cuts_keep_one_dts_offset(
    editor: VideoEditor, make_clip: MakeClip, ffmpeg_exe: str, tmp_path: Path, cuts: list[int]
) -> None:
    """Two segments cut at any frames of a B-frame source: same criterion, exact frames."""
    src = make_clip(duration=6, extra=BFRAMES["bf3"])
    a, b, c, d = (i / FPS for i in cuts)
    segments = [VideoSegment(a, b, src), VideoSegment(c, d, src)]
    out = tmp_path / f"any-{'-'.join(map(str, cuts))}.mp4"
    report = editor.extract_and_concatenate_efficient(src, segments, out, mode="smart")
    assert report.expected_frames == (cuts[1] - cuts[0]) + (cuts[3] - cuts[2])
    assert_clean_seams(ffmpeg_exe, out, report, tmp_path)


@pytest.mark.slow
def test_hevc_seams_keep_one_dts_offset(
    editor: VideoEditor, make_clip: MakeClip, ffmpeg_exe: str, tmp_path: Path
) -> None:
    """x265's default GOPs run 2 frames ahead too; its edge pieces are encoded without."""
    src = make_clip(duration=4, vcodec="libx265", extra=("-x265-params", "log-level=error"))
    segments = [VideoSegment(0.3, 2.6, src), VideoSegment(3.1, 3.9, src)]  # copies [1, 2)
    out = tmp_path / "hevc.mp4"
    report = editor.extract_and_concatenate_efficient(src, segments, out, mode="smart")
    assert_clean_seams(ffmpeg_exe, out, report, tmp_path)
    assert_segments_match_source(out, src, report)


@given(
    frames=st.integers(min_value=0, max_value=10**7),
    rate=st.sampled_from([Fraction(30000, 1001), Fraction(24000, 1001), Fraction(25)]),
)
def test_outpoints_round_down_to_the_microsecond(frames: int, rate: Fraction) -> None:
    """A concat outpoint (whole microseconds) never passes the keyframe dts it stands for,
    and never drops below the microsecond holding it (so it stays past the packet before)."""
    exact = Fraction(frames) / rate
    text = f"{floor_us(float(exact)):.6f}"  # as concat_list_text writes it
    micro = Fraction(text)
    assert micro <= exact
    assert exact - micro < Fraction(1, 1_000_000)
