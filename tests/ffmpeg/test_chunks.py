"""Chunked processing is exact: same frames, same audio, no seams, nothing left behind.

Real ffmpeg on generated clips; frames and samples are counted by decoding with PyAV.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from montage.errors import ConfigError, FFmpegError, OutputError
from montage.ffmpeg.chunks import (
    ChunkError,
    VideoIndex,
    default_chunk_duration_s,
    plan_chunks,
    process_video_chunks,
    scan_video,
    transcode_in_chunks,
)
from montage.resources import montage_temp_root
from tests.conftest import MakeClip

X264_ARGS = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
AAC_ARGS = ["-c:a", "aac", "-b:a", "96k"]


def _video_frames(path: Path) -> list[int]:
    """Presentation timestamps of every decoded video frame, in order."""
    import av

    with av.open(str(path)) as container:
        return [f.pts for f in container.decode(video=0) if f.pts is not None]


def _audio_frames(path: Path) -> tuple[int, list[int]]:
    """(total decoded samples, pts of every decoded audio frame in samples)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        total, pts = 0, []
        for frame in container.decode(stream):
            total += frame.samples
            if frame.pts is not None:
                pts.append(int(frame.pts * stream.time_base * frame.sample_rate))
        return total, pts


def _grey_frames(path: Path, wanted: set[int]) -> dict[int, object]:
    """Luma planes (numpy) of the decoded frames whose index is in ``wanted``."""
    import av

    out: dict[int, object] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="gray").astype("int16")
    return out


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _ffmpeg_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:  # a chunk's job can end and be reaped between the listing and this read
            if "ffmpeg" in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(scope="module")
def two_minutes(make_clip: MakeClip) -> Path:
    """2 minutes, 320x240 @ 25 fps, a keyframe every 2 s, 48 kHz AAC."""
    return make_clip(duration=120, size="320x240", rate=25, gop=50)


@pytest.fixture(scope="module")
def short_clip(make_clip: MakeClip) -> Path:
    """30 s, 160x120 @ 25 fps, a keyframe every second: quick to cut into 3 chunks."""
    return make_clip(duration=30, size="160x120", rate=25, gop=25)


@pytest.fixture
def out_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "out dir"
    folder.mkdir()
    yield folder
    assert not _ffmpeg_children(), "an ffmpeg child outlived the test"


# --- planning (pure) ----------------------------------------------------------------------


def test_default_chunk_duration_gives_a_few_chunks_for_short_files() -> None:
    assert default_chunk_duration_s(120.0) == 30.0  # a 2-minute file -> 4 chunks
    assert default_chunk_duration_s(3600.0) == 60.0  # long files: a minute each
    assert default_chunk_duration_s(5.0) == 10.0  # never silly-short chunks


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=1, max_value=300), min_size=0, max_size=60),
    tail=st.integers(min_value=1, max_value=300),
    chunk_s=st.floats(min_value=0.5, max_value=30.0),
)
def test_plan_starts_on_keyframes_and_covers_every_frame(
    gaps: list[int], tail: int, chunk_s: float
) -> None:
    fps = 25.0
    keyframes = [0]
    for gap in gaps:
        keyframes.append(keyframes[-1] + gap)
    frame_count = keyframes[-1] + tail
    index = VideoIndex(frame_count, tuple((k, k / fps) for k in keyframes), frame_count / fps, fps)
    plan = plan_chunks(index, chunk_s)
    assert plan.start_frames[0] == 0
    assert set(plan.start_frames) <= set(keyframes)
    assert list(plan.start_frames) == sorted(set(plan.start_frames))
    sizes = plan.frames_per_chunk()
    assert sum(sizes) == frame_count and all(n > 0 for n in sizes)
    for start, nxt in itertools.pairwise(plan.start_times_s):
        assert nxt - start >= chunk_s  # no chunk shorter than asked, except the last


def test_plan_rejects_non_positive_chunk_duration() -> None:
    index = VideoIndex(10, ((0, 0.0),), 0.4, 25.0)
    with pytest.raises(ConfigError):
        plan_chunks(index, 0)


def test_scan_counts_packets_and_keyframes(clip: Path) -> None:
    index = scan_video(clip)
    assert index.frame_count == 100  # 4 s at 25 fps
    assert [k for k, _ in index.keyframes] == [0, 25, 50, 75]  # -g 25
    assert index.duration_s == pytest.approx(4.0, abs=0.001)
    assert index.frame_rate == pytest.approx(25.0)


# --- the exact chunked transcode ------------------------------------------------------------


def test_two_minute_transcode_is_frame_and_sample_exact(two_minutes: Path, out_dir: Path) -> None:
    out = out_dir / "out.mp4"
    seen: list[tuple[int, int]] = []
    report = transcode_in_chunks(
        two_minutes, out, [*X264_ARGS, *AAC_ARGS], progress=lambda d, t: seen.append((d, t))
    )
    assert report.chunks == 4 and report.audio == "once"
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    src_pts, out_pts = _video_frames(two_minutes), _video_frames(out)
    assert len(out_pts) == len(src_pts) == 3000 == report.output_frames
    steps = {b - a for a, b in itertools.pairwise(out_pts)}
    assert len(steps) == 1, f"uneven video timestamps at a seam: {sorted(steps)[:5]}"

    src_samples, _ = _audio_frames(two_minutes)
    out_samples, audio_pts = _audio_frames(out)
    assert abs(out_samples - src_samples) <= 1024
    gaps = {b - a for a, b in itertools.pairwise(audio_pts)}
    assert gaps == {1024}, f"audio gap or overlap: {sorted(gaps)[:5]}"
    assert _leftovers(out_dir, {"out.mp4"}) == []


def test_seam_frames_are_the_source_frames_in_order(two_minutes: Path, out_dir: Path) -> None:
    """Around each cut the output frame i looks like source frame i, not i +/- 1."""
    out = out_dir / "seams.mp4"
    report = transcode_in_chunks(two_minutes, out, X264_ARGS, chunk_duration=40, audio="none")
    assert report.chunks == 3 and report.audio == "none"
    cuts = [1000, 2000]  # 40 s at 25 fps, keyframes every 50 frames
    wanted = {c + d for c in cuts for d in (-2, -1, 0, 1)}
    src = _grey_frames(two_minutes, {i + d for i in wanted for d in (-1, 0, 1)})
    got = _grey_frames(out, wanted)
    for i in sorted(wanted):
        same = abs(got[i] - src[i]).mean()  # type: ignore[operator]
        shifted = min(abs(got[i] - src[i + d]).mean() for d in (-1, 1))  # type: ignore[operator]
        assert same < shifted, f"output frame {i} matches a neighbour of source frame {i}"


def test_custom_function_processes_every_chunk(
    short_clip: Path, out_dir: Path, ffmpeg_exe: str
) -> None:
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def half_size(chunk_in: Path, chunk_out: Path) -> None:
        with lock:
            calls.append((chunk_in.name, chunk_out.name))
        cmd = [ffmpeg_exe, "-nostdin", "-loglevel", "error", "-i", str(chunk_in),
               "-vf", "scale=80:60", *X264_ARGS, str(chunk_out)]  # fmt: skip
        subprocess.run(cmd, check=True)

    out = out_dir / "small.mp4"
    assert process_video_chunks(short_clip, out, half_size, chunk_duration=10) is True
    assert len(calls) == 3 and len({c for c, _ in calls}) == 3
    assert all(o.endswith(".mp4") for _, o in calls)

    import av

    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height) == (80, 60)
        assert container.streams.audio, "the input's audio was copied"
    assert len(_video_frames(out)) == 750
    assert _audio_frames(out)[0] == _audio_frames(short_clip)[0]  # copied: same samples
    assert _leftovers(out_dir, {"small.mp4"}) == []


@pytest.mark.parametrize("failure", ["raise", "false", "nothing"])
def test_failing_chunk_raises_and_leaves_nothing(
    short_clip: Path, out_dir: Path, failure: str
) -> None:
    def copy_but_fail_second(chunk_in: Path, chunk_out: Path) -> bool:
        if chunk_in.name.startswith("in_00001"):
            if failure == "raise":
                raise RuntimeError("boom")
            return failure != "false"  # "nothing": True without writing
        shutil.copyfile(chunk_in, chunk_out)
        return True

    out = out_dir / "never.mp4"
    with pytest.raises(ChunkError) as info:
        process_video_chunks(short_clip, out, copy_but_fail_second, chunk_duration=10)
    assert info.value.chunk_index == 1
    assert not out.exists()
    assert _leftovers(out_dir, set()) == []


def test_ctrl_c_stops_ffmpeg_jobs_and_cleans_up(two_minutes: Path, out_dir: Path) -> None:
    """KeyboardInterrupt in the caller's thread (from progress) while chunks encode."""

    running: list[int] = []

    def interrupt(done: int, total: int) -> None:
        # the next chunk may still wait for its memory reservation or be starting: Ctrl-C
        # must land while a job runs, so wait (bounded) until one does
        deadline = time.monotonic() + 60
        while not running and time.monotonic() < deadline:
            running.extend(p.pid for p in _ffmpeg_children())
            time.sleep(0.02)
        raise KeyboardInterrupt

    out = out_dir / "interrupted.mp4"
    slow_args = [*X264_ARGS[:2], "-preset", "veryslow"]
    with pytest.raises(KeyboardInterrupt):
        transcode_in_chunks(
            two_minutes, out, slow_args, chunk_duration=10, max_workers=2, progress=interrupt
        )
    assert running, "no ffmpeg job was running when Ctrl-C came"
    assert not any(psutil.pid_exists(pid) for pid in running)
    assert not _ffmpeg_children()
    assert not out.exists()
    assert _leftovers(out_dir, set()) == []


def test_failing_ffmpeg_chunk_raises_and_leaves_nothing(short_clip: Path, out_dir: Path) -> None:
    out = out_dir / "bad.mp4"
    with pytest.raises(FFmpegError):
        transcode_in_chunks(short_clip, out, ["-c:v", "libx264", "-crf", "-5"], chunk_duration=10)
    assert _leftovers(out_dir, set()) == []


def test_awkward_file_names(short_clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / 'it\'s a "folder" ünï 100%'
    folder.mkdir()
    src = folder / "-clip 'quoted' \"double\" ünïcødé.mp4"
    shutil.copyfile(short_clip, src)
    out = folder / "-out 'é' \"x\".mp4"
    report = transcode_in_chunks(src, out, [*X264_ARGS, *AAC_ARGS], chunk_duration=10)
    assert report.chunks == 3 and report.output_frames == 750
    assert sorted(p.name for p in folder.iterdir()) == sorted([src.name, out.name])
    # a "%" in the folder sends the chunks to the per-process temp folder: cleaned there too
    assert not list(montage_temp_root().glob(".montage-chunks-*"))


def test_input_without_audio(make_clip: MakeClip, out_dir: Path) -> None:
    src = make_clip(duration=12, size="160x120", audio=False, gop=25)
    report = transcode_in_chunks(src, out_dir / "mute.mp4", X264_ARGS, chunk_duration=5)
    assert report.audio == "absent" and report.chunks == 3  # 0, 5, 10 s (2 s tail kept)
    assert report.output_frames == report.input_frames == 300


# --- refusals -----------------------------------------------------------------------------


def test_refuses_to_write_over_the_input(short_clip: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    shutil.copyfile(short_clip, src)
    before = src.read_bytes()
    with pytest.raises(OutputError):
        transcode_in_chunks(src, src, X264_ARGS)
    with pytest.raises(OutputError):
        transcode_in_chunks(src, tmp_path / "." / "in.mp4", X264_ARGS)
    assert src.read_bytes() == before


def test_refuses_existing_output_unless_overwrite(short_clip: Path, out_dir: Path) -> None:
    out = out_dir / "exists.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError):
        transcode_in_chunks(short_clip, out, X264_ARGS, audio="none", overwrite=False)
    assert out.read_bytes() == b"precious"
    # the library default, like Python libraries: replaced, but only by a complete new file
    report = transcode_in_chunks(short_clip, out, X264_ARGS, audio="copy", chunk_duration=15)
    assert report.output_frames == 750 and out.stat().st_size > 1000


@pytest.mark.parametrize(
    "args",
    [["-map", "0:v"], ["-t", "5"], ["-ss", "1"], ["-filter_complex", "[0:v]null"]],
)
def test_refuses_options_that_cut_or_remap(
    short_clip: Path, out_dir: Path, args: list[str]
) -> None:
    with pytest.raises(ConfigError):
        transcode_in_chunks(short_clip, out_dir / "x.mp4", [*X264_ARGS, *args])


def test_refuses_unknown_audio_mode(short_clip: Path, out_dir: Path) -> None:
    with pytest.raises(ConfigError):
        transcode_in_chunks(short_clip, out_dir / "x.mp4", X264_ARGS, audio="per-chunk")
    with pytest.raises(ConfigError):
        process_video_chunks(short_clip, out_dir / "x.mp4", lambda a, b: None, audio="once")


def test_b_frames_in_and_out_stay_exact(make_clip: MakeClip, out_dir: Path) -> None:
    """B-frames reorder packets (pts != dts, edit lists in mp4): cuts and joins stay exact."""
    src = make_clip(duration=20, size="160x120", gop=30, extra=("-preset", "veryfast"))
    import av

    with av.open(str(src)) as container:
        reordered = any(p.pts != p.dts for p in container.demux(video=0) if p.size)
    assert reordered, "the source should have B-frames"
    out = out_dir / "bframes.mp4"
    args = ["-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac"]
    report = transcode_in_chunks(src, out, args, chunk_duration=5)
    assert report.chunks == 4
    src_pts, out_pts = _video_frames(src), _video_frames(out)
    assert len(out_pts) == len(src_pts) == 500
    assert len({b - a for a, b in itertools.pairwise(out_pts)}) == 1
    _, audio_pts = _audio_frames(out)
    assert {b - a for a, b in itertools.pairwise(audio_pts)} == {1024}
