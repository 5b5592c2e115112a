"""Copy mode's cut ends on sources with and without B-frames: the output holds exactly the
documented frames (start back to a keyframe, end forward to where decode order catches up),
every packet decodes, no frame lies past the end, and the audio ends with the video."""

from __future__ import annotations

import itertools
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from montage.video.editor import VideoEditor
from montage.video.segments import VideoSegment
from tests.video.test_vfr import Clip, sound_position_s

MakeClip = Callable[..., Path]
RATE = 25
AAC_FRAME_S = 1024 / 48000


class Source:
    """A clip as the checks see it (a plain class: hypothesis prints it by name)."""

    def __init__(self, path: Path, grey: list[Any], packets: list[tuple[int, int, bool]]) -> None:
        self.path = path
        self.grey = grey  # decoded frames, small grey arrays, in presentation order
        self.pts = [p[0] for p in packets]  # packets in presentation order (stream time base)
        self.dts = [p[1] for p in packets]
        self.keyframes = frozenset(i for i, p in enumerate(packets) if p[2])
        self.b_frames = 0

    def __repr__(self) -> str:
        return f"Source({self.path.name}, b_frames={self.b_frames})"


def _read(path: Path, b_frames: int) -> Source:
    import av
    import numpy as np

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted(
            (p.pts, p.dts, bool(p.is_keyframe)) for p in container.demux(stream) if p.size
        )
    with av.open(str(path)) as container:
        grey = [
            f.to_ndarray(format="gray")[::4, ::4].astype(np.int16)
            for f in container.decode(video=0)
        ]
    source = Source(path, grey, packets)
    source.b_frames = b_frames
    return source


@pytest.fixture(scope="module", params=[3, 0], ids=["bf3", "bf0"])
def source(request: pytest.FixtureRequest, make_clip: MakeClip) -> Source:
    """6 s, 25 fps, keyframe every second; x264's default 3 B-frames (fixed runs, pyramid)
    or none."""
    bf = int(request.param)
    extra = ("-bf", str(bf)) + (("-x264-params", "b-adapt=0:b-pyramid=normal") if bf else ())
    return _read(make_clip(duration=6, extra=extra), bf)


def documented_range(src: Source, start_s: float, end_s: float) -> tuple[int, int]:
    """[first, end) frame indices copy mode promises: the keyframe at or before the start;
    the first frame at or after the end before which every earlier frame is decoded (the
    decode-order prefix is exactly the presentation-order prefix)."""
    first = math.ceil(start_s * RATE - 1e-6)
    end = min(len(src.pts), math.ceil(end_s * RATE - 1e-6))
    first = max(k for k in src.keyframes if k <= first)
    while end < len(src.pts) and max(src.dts[:end]) >= min(src.dts[end:]):
        end += 1
    return first, end


def matches(frame: Any, src: Source) -> int:
    import numpy as np

    return int(np.argmin([np.abs(frame - s).mean() for s in src.grey]))


def decode_errors(ffmpeg: str, path: Path) -> str:
    run = subprocess.run(
        [ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    return run.stderr.strip()


def check_output(ffmpeg: str, src: Source, out: Path, wanted: list[tuple[int, int]]) -> None:
    import av

    with av.open(str(out)) as container:
        video_packets = sum(1 for p in container.demux(video=0) if p.size)
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
        times = [float(f.pts * f.time_base) for f in frames]
        grey = [f.to_ndarray(format="gray")[::4, ::4].astype("int16") for f in frames]
    expected = [i for a, b in wanted for i in range(a, b)]
    assert [matches(g, src) for g in grey] == expected
    assert video_packets == len(frames)  # nothing left over that does not decode
    assert decode_errors(ffmpeg, out) == ""
    steps = [round((b - a) * RATE, 3) for a, b in itertools.pairwise(times)]
    assert steps == [1.0] * len(steps)  # one frame period apart: no overlap at the seams
    with av.open(str(out)) as container:
        audio = list(container.decode(audio=0))
    audio_end = float(audio[-1].pts * audio[-1].time_base) + audio[-1].samples / 48000
    assert abs(audio_end - (times[-1] + 1 / RATE)) <= AAC_FRAME_S


cut_end = st.integers(min_value=29, max_value=149).map(lambda i: i / RATE + 0.013)


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(end_s=cut_end)
def test_copy_end_holds_exactly_the_documented_frames(
    ffmpeg_exe: str, source: Source, tmp_path_factory: pytest.TempPathFactory, end_s: float
) -> None:
    out = tmp_path_factory.mktemp("copy_end") / "out.mp4"
    start_s = 1.0 + 3 / RATE
    first, end = documented_range(source, start_s, end_s)
    report = VideoEditor().extract_and_concatenate_efficient(
        source.path, [VideoSegment(start_s, end_s, source.path)], out, mode="copy"
    )
    requested_end = math.ceil(end_s * RATE - 1e-6)
    assert 0 <= end - min(requested_end, 150) <= source.b_frames
    assert report.segments[0].actual_start_s == pytest.approx(first / RATE)
    assert report.segments[0].actual_end_s == pytest.approx(end / RATE)
    check_output(ffmpeg_exe, source, out, [(first, end)])


def test_copy_of_several_ranges_ends_each_exactly(
    ffmpeg_exe: str, source: Source, tmp_path: Path
) -> None:
    cuts = [(1.0, 1.4), (2.1, 2.9), (0.3, 5.1)]
    segments = [VideoSegment(a, b, source.path) for a, b in cuts]
    out = tmp_path / "several.mp4"
    report = VideoEditor().extract_and_concatenate_efficient(
        source.path, segments, out, mode="copy"
    )
    wanted = [documented_range(source, a, b) for a, b in cuts]
    spans = [t for s in report.segments for t in (s.actual_start_s, s.actual_end_s)]
    assert spans == pytest.approx([i / RATE for a, b in wanted for i in (a, b)])
    check_output(ffmpeg_exe, source, out, wanted)


@pytest.mark.xfail(
    strict=True,
    reason="open GOPs: the B-frames shown just before a later keyframe are decoded after it "
    "from the GOP before, which a copy starting at that keyframe does not hold (not fixed: "
    "a clean start would be the previous IDR frame, often the file's first)",
)
def test_copy_from_an_open_gop_keyframe_decodes_cleanly(
    ffmpeg_exe: str, make_clip: MakeClip, tmp_path: Path
) -> None:
    extra = ("-preset", "medium", "-bf", "3", "-x264-params", "open-gop=1:b-adapt=0:scenecut=0")
    src = make_clip(duration=6, gop=26, extra=extra)
    out = tmp_path / "open_gop.mp4"
    VideoEditor().extract_and_concatenate_efficient(
        src, [VideoSegment(1.04, 2.5, src)], out, mode="copy"
    )
    assert decode_errors(ffmpeg_exe, out) == ""


def test_a_second_listing_only_where_the_cut_points_differ(source: Source, tmp_path: Path) -> None:
    """Each concat input opens every source again (its whole sample index: ~+8 MiB and tens of
    ms for 10 minutes of 1080p), so the sound gets its own listing only where a video cut
    point lies before the range's end (B-frames); without them both come from one."""
    from montage.ffmpeg.binary import ffmpeg_path
    from montage.video.assemble import build_copy
    from montage.video.cutting import build_index, snap
    from montage.video.runner import WorkDir

    index = build_index(source.path)
    ranges = [snap(VideoSegment(a, b, source.path), index) for a, b in [(1.0, 1.4), (2.1, 2.9)]]
    plan = build_copy(ffmpeg_path(), WorkDir(tmp_path), ranges, tmp_path / "out.mp4")
    (job,) = plan.jobs
    assert job.cmd.count("-i") == (2 if source.b_frames else 1), job.cmd
    assert "0:v:0" in job.cmd and ("1:a:0?" if source.b_frames else "0:a:0?") in job.cmd


SYNC_CUTS = [(1.0, 1.6), (2.2, 2.8), (3.1, 3.9), (0.5, 1.2), (4.0, 4.6), (2.0, 2.7)]


@pytest.fixture(scope="module")
def noisy_source(
    request: pytest.FixtureRequest, ffmpeg_exe: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int]:
    """6 s, 25 fps, a keyframe every second, white-noise sound (every instant unique)."""
    bf = int(request.param)
    out = tmp_path_factory.mktemp("noisy") / f"bf{bf}.mp4"
    subprocess.run(
        [ffmpeg_exe, "-v", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=6",
         "-f", "lavfi", "-i", "anoisesrc=d=6:c=white:seed=7:a=0.5:r=48000",
         "-c:v", "libx264", "-g", "25", "-bf", str(bf), "-c:a", "aac", "-shortest", str(out)],
        check=True,
    )  # fmt: skip
    return out, bf


@pytest.mark.parametrize("mode", ["copy", "accurate"])
@pytest.mark.parametrize("noisy_source", [0, 3], indirect=True, ids=["bf0", "bf3"])
def test_the_sound_stays_in_sync_across_joins(
    noisy_source: tuple[Path, int], mode: str, tmp_path: Path
) -> None:
    """Mid-segment, the sound heard is the source's sound at the frame shown (±25 ms), at
    every join (accurate mode, which cuts the sound to the sample, checks the measure). Copy
    mode used to fall further behind at each join: -16 to -101 ms over these 5 joins without
    B-frames, -83 to -411 ms with 3 (``pieces.COPY_AUDIO_BSF``)."""
    path, _ = noisy_source
    out = tmp_path / "joined.mp4"
    report = VideoEditor().extract_and_concatenate_efficient(
        path, [VideoSegment(a, b, path) for a, b in SYNC_CUTS], out, mode=mode
    )
    src, joined = Clip(path), Clip(out)
    picture_t0 = min(joined.times[:8])
    offsets_ms, placed = [], 0.0
    for segment in report.segments:
        length = segment.actual_end_s - segment.actual_start_s
        shown = segment.actual_start_s + length / 2  # the source instant mid-segment
        at = picture_t0 + placed + length / 2
        heard = sound_position_s(joined, at, src, shown, search_s=1.0)
        offsets_ms.append(round((heard - shown) * 1000, 1))
        placed += length
    assert all(abs(offset) <= 25 for offset in offsets_ms), offsets_ms
