"""Variable-frame-rate sources in re-encodes (accurate, smart, crossfades): every frame is kept
once at its own time, and the sound stays with the picture across seams."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from montage.video.cutting import build_index
from montage.video.editor import EditReport, VideoEditor
from montage.video.segments import VideoSegment

AAC_FRAME_S = 1024 / 48000
SAMPLE_RATE = 48000


class Clip:
    """A source as the checks see it (a plain class: hypothesis prints it by name)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.grey, self.times = decoded(path)
        self.audio_t0, self.audio = audio(path)

    def __repr__(self) -> str:
        return f"Clip({self.path.name})"


@pytest.fixture(scope="module")
def vfr(tmp_path_factory: pytest.TempPathFactory, ffmpeg_exe: str) -> Clip:
    """4 s: 2 s at 25 fps then 2 s at 50 fps (average 37.5), one stream with
    ``-fps_mode passthrough``; keyframe every 25 frames; white noise as sound (no two
    moments sound alike, so the sound's position can be found)."""
    out = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    src = "testsrc2=size=320x240:duration=2:rate="
    cmd = [ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    cmd += ["-f", "lavfi", "-i", src + "25", "-f", "lavfi", "-i", src + "50"]
    cmd += ["-f", "lavfi", "-i", f"anoisesrc=d=4:c=white:seed=7:a=0.5:r={SAMPLE_RATE}"]
    cmd += ["-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-map", "2:a"]
    cmd += ["-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25"]
    cmd += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", str(out)]
    subprocess.run(cmd, check=True)
    return Clip(out)


def decoded(path: Path) -> tuple[list[Any], list[float]]:
    import av
    import numpy as np

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        grey = [f.to_ndarray(format="gray")[::4, ::4].astype(np.int16) for f in frames]
        return grey, [float(f.pts * f.time_base) for f in frames]


def audio(path: Path) -> tuple[float, Any]:
    import av
    import numpy as np

    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    t0 = float(frames[0].pts * frames[0].time_base)
    return t0, np.concatenate([f.to_ndarray()[0] for f in frames])


def best_match(frame: Any, clip: Clip) -> int:
    import numpy as np

    return int(np.argmin([np.abs(frame - s).mean() for s in clip.grey]))


def sound_position_s(
    out: Clip, at_s: float, src: Clip, near_s: float, search_s: float = 0.2
) -> float:
    """Where in ``src`` the output's sound at ``at_s`` comes from (searched ±``search_s`` of
    ``near_s``, to the sample)."""
    import numpy as np

    i = round((at_s - out.audio_t0) * SAMPLE_RATE)
    window = out.audio[i : i + 2400]
    lo = max(0, round((near_s - search_s - src.audio_t0) * SAMPLE_RATE))
    hay = src.audio[lo : lo + round(2 * search_s * SAMPLE_RATE) + len(window)]
    return src.audio_t0 + (lo + int(np.argmax(np.correlate(hay, window, "valid")))) / SAMPLE_RATE


def wanted(src: Clip, start_s: float, end_s: float) -> list[int]:
    return [i for i, t in enumerate(src.times) if start_s - 1e-4 <= t < end_s - 1e-4]


def check_timing(src: Clip, out_path: Path, cuts: list[tuple[float, float]]) -> None:
    """Each segment's frames once, in order, at their source spacing; each segment starts
    where the previous one's last frame ends; sound at every segment start is the source's
    sound there; the sound ends with the picture."""
    out = Clip(out_path)
    expected = [wanted(src, a, b) for a, b in cuts]
    assert [best_match(g, src) for g in out.grey] == list(itertools.chain(*expected))
    end_of = [*src.times[1:], 4.0]
    offset, pos = out.times[0], 0
    for frames in expected:
        for i in frames:
            assert out.times[pos] == pytest.approx(
                offset + src.times[i] - src.times[frames[0]], abs=1e-3
            )
            pos += 1
        at, source_s = offset, src.times[frames[0]]
        assert sound_position_s(out, at, src, source_s) == pytest.approx(source_s, abs=1e-3)
        offset += end_of[frames[-1]] - src.times[frames[0]]
    audio_end = out.audio_t0 + len(out.audio) / SAMPLE_RATE
    assert abs(audio_end - offset) <= AAC_FRAME_S


def test_the_source_is_variable_rate_and_the_index_reads_its_real_times(vfr: Clip) -> None:
    index = build_index(vfr.path)
    assert index.frame_count == 150
    assert list(index.frame_times_s) == pytest.approx(vfr.times, abs=1e-6)
    assert index.gap_before_s(1.0) == pytest.approx(0.04)
    assert index.gap_before_s(3.0) == pytest.approx(0.02)
    assert index.seconds(40, 20) == pytest.approx(0.4 + 0.2)  # 10 frames at 25, 10 at 50 fps


cut_s = st.integers(min_value=0, max_value=195).map(lambda i: i / 50 + 0.007)


@pytest.mark.parametrize("mode", ["accurate", "smart"])
@settings(
    max_examples=5,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # an edit per example: no shrinking
)
@given(a=cut_s, b=cut_s, c=cut_s, d=cut_s)
def test_reencodes_keep_each_frame_once_at_its_time(
    vfr: Clip,
    tmp_path_factory: pytest.TempPathFactory,
    mode: str,
    a: float,
    b: float,
    c: float,
    d: float,
) -> None:
    (a, b), (c, d) = sorted((a, b)), sorted((c, d))
    cuts = [(a, b + 0.1), (c, d + 0.1)]
    out = tmp_path_factory.mktemp("vfr_cut") / "out.mp4"
    segments = [VideoSegment(x, y, vfr.path) for x, y in cuts]
    report = VideoEditor().extract_and_concatenate_efficient(vfr.path, segments, out, mode=mode)
    assert report.mode == mode, report.fallback_reason
    check_timing(vfr, out, cuts)
    assert report.expected_frames == sum(len(wanted(vfr, x, y)) for x, y in cuts)
    assert report.output_duration_s == pytest.approx(report.expected_duration_s, abs=0.03)


def test_a_cut_across_the_rate_change(vfr: Clip, tmp_path: Path) -> None:
    cuts = [(1.0, 2.9), (2.5, 3.7), (0.1, 0.6)]  # 1.0 and 2.5 are keyframes
    out = tmp_path / "across.mp4"
    segments = [VideoSegment(x, y, vfr.path) for x, y in cuts]
    report: EditReport = VideoEditor().extract_and_concatenate_efficient(
        vfr.path, segments, out, mode="accurate"
    )
    check_timing(vfr, out, cuts)
    # real lengths, not frames / average rate (1.9 s here holds 70 frames, 1.87 s at 37.5)
    assert report.expected_duration_s == pytest.approx(1.9 + 1.2 + 0.48, abs=1e-6)


def test_crossfades_of_a_variable_rate_source_keep_the_sound_with_the_picture(
    vfr: Clip, tmp_path: Path
) -> None:
    """The fades are made at the average rate (constant); the bodies keep their own times."""
    cuts = [(0.5, 2.5), (3.1, 4.0), (1.0, 1.8)]
    out = tmp_path / "fades.mp4"
    segments = [VideoSegment(x, y, vfr.path) for x, y in cuts]
    report = VideoEditor().extract_and_concatenate_efficient(
        vfr.path, segments, out, apply_transitions=True, transition_duration=0.4
    )
    lengths = 2.0 + 0.9 + 0.8
    assert report.expected_duration_s == pytest.approx(lengths - 2 * 0.4, abs=0.021)
    result = Clip(out)
    assert result.times == sorted(set(result.times))  # no two frames at one time
    video_end = result.times[-1] + 0.04  # the last frame is at 25 fps
    assert report.output_duration_s == pytest.approx(report.expected_duration_s, abs=0.03)
    audio_end = result.audio_t0 + len(result.audio) / SAMPLE_RATE
    assert abs(audio_end - video_end) <= AAC_FRAME_S
    # the last segment's body starts after its fade-in, at source 1.4 s: sound and picture
    shown = [best_match(g, vfr) for g in result.grey]
    at_s = result.times[shown.index(vfr.times.index(1.4))]
    assert sound_position_s(result, at_s, vfr, 1.4) == pytest.approx(1.4, abs=1e-3)


def test_millisecond_timestamps_of_a_constant_rate_keep_the_nominal_length(
    make_clip: Callable[..., Path],
) -> None:
    """Matroska rounds times to the millisecond: 29.97 fps frames are 33 or 34 ms apart
    there, which is not a variable rate; a piece is then ``frames / fps`` long exactly."""
    index = build_index(make_clip(duration=2, rate="30000/1001", ext="mkv", audio=False))
    assert index.fmt.time_base == Fraction(1, 1000)
    real = [index.time_of(i + 7) - index.time_of(i) for i in range(30)]
    assert max(abs(r - 7 * 1001 / 30000) for r in real) > 1e-4  # the rounding is there
    assert all(index.seconds(i, 7) == 7 * 1001 / 30000 for i in range(30))
