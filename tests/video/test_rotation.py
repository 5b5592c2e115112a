"""Rotated sources (phone videos: a display matrix, not turned pixels) through every mode.

Stream-copied GOPs keep their stored orientation, and MPEG-TS pieces drop the matrix, so
the editor decodes without autorotation and puts the matrix back on the output; sources with
different rotations are decoded upright instead. Checked as a player sees it: ffmpeg's own
autorotating decode of the output against that of the source.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from montage.ffmpeg.probe import probe
from montage.video.cutting import SourceFormat
from montage.video.editor import VideoEditor
from montage.video.pieces import Target
from montage.video.segments import VideoSegment
from tests.conftest import MakeClip


def rotated(ffmpeg_exe: str, clip: Path, degrees: int, out: Path) -> Path:
    cmd = [ffmpeg_exe, "-v", "error", "-y", "-display_rotation", str(degrees), "-i", str(clip)]
    subprocess.run([*cmd, "-c", "copy", str(out)], check=True)
    return out


def upright_frames(ffmpeg_exe: str, path: Path, start_s: float = 0.0, count: int = 0) -> Any:
    """Grey frames as a player shows them: ffmpeg's default decode, which autorotates."""
    import numpy as np

    video = probe(path).video
    assert video is not None and video.width and video.height
    w, h = video.width, video.height
    if video.rotation in (90, 270):
        w, h = h, w
    cmd = [ffmpeg_exe, "-v", "error", "-ss", f"{start_s:.3f}", "-i", str(path), "-map", "0:v:0"]
    cmd += ["-frames:v", str(count)] if count else []
    cmd += ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "gray", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w).astype(np.int16)


@pytest.fixture(scope="module")
def turned(make_clip: MakeClip, ffmpeg_exe: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    clip = make_clip(duration=6, gop=25)
    return rotated(ffmpeg_exe, clip, 90, tmp_path_factory.mktemp("rot") / "turned.mp4")


@pytest.mark.parametrize("mode", ["copy", "accurate", "smart"])
def test_a_rotated_source_stays_upright_in_every_mode(
    mode: str, turned: Path, ffmpeg_exe: str, tmp_path: Path
) -> None:
    segments = [VideoSegment(0.52, 2.28, turned), VideoSegment(3.12, 4.68, turned)]
    out = tmp_path / f"{mode}.mp4"
    report = VideoEditor().extract_and_concatenate_efficient(turned, segments, out, mode=mode)
    assert report.mode == mode
    video = probe(out).video
    assert video is not None
    assert (video.width, video.height, video.rotation) == (320, 240, 90)
    frames = upright_frames(ffmpeg_exe, out)
    assert frames.shape[1:] == (320, 240)  # portrait, as the source is shown
    if mode == "copy":
        return  # starts at the keyframe before 0.52 s: compared frame by frame elsewhere
    assert len(frames) == report.expected_frames == 44 + 39
    for first, seg in ((0, segments[0]), (44, segments[1])):
        source = upright_frames(ffmpeg_exe, turned, seg.start_time, 1)[0]
        assert abs(frames[first] - source).mean() < 6, (mode, seg)


def test_sources_with_different_rotations_are_joined_upright(
    turned: Path, make_clip: MakeClip, tmp_path: Path, ffmpeg_exe: str
) -> None:
    flat = make_clip(duration=6, gop=25)
    segments = [VideoSegment(0.52, 2.28, turned), VideoSegment(1.0, 2.0, flat)]
    out = tmp_path / "mixed.mp4"
    report = VideoEditor().extract_and_concatenate_efficient(turned, segments, out)
    assert report.mode == "accurate"  # one display matrix cannot describe both
    video = probe(out).video
    assert video is not None
    assert (video.width, video.height, video.rotation) == (240, 320, 0)
    frames = upright_frames(ffmpeg_exe, out)
    assert frames.shape == (44 + 25, 320, 240)
    source = upright_frames(ffmpeg_exe, turned, 0.52, 1)[0]
    assert abs(frames[0] - source).mean() < 6


def _fmt(width: int, height: int, rotation: int) -> SourceFormat:
    from fractions import Fraction

    return SourceFormat(
        "h264", width, height, "yuv420p", "High", 40, Fraction(25), True, True, 48000, 2,
        128000, Fraction(1, 12800), rotation,
    )  # fmt: skip


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_one_rotation_keeps_stored_pixels_and_the_matrix(rotation: int) -> None:
    first = _fmt(1920, 1080, rotation)
    target = Target.for_sources(first, [first, _fmt(1920, 1080, rotation)])
    assert (target.width, target.height, target.rotation) == (1920, 1080, rotation)
    assert target.input_args() == ["-noautorotate"]


@pytest.mark.parametrize(("first_rotation", "size"), [(90, (1080, 1920)), (180, (1920, 1080))])
def test_mixed_rotations_decode_upright_to_the_first_ones_shape(
    first_rotation: int, size: tuple[int, int]
) -> None:
    first = _fmt(1920, 1080, first_rotation)
    target = Target.for_sources(first, [first, _fmt(1920, 1080, 0)])
    assert ((target.width, target.height), target.rotation) == (size, 0)
    assert target.autorotate and target.input_args() == []
    assert not first.copy_compatible(_fmt(1920, 1080, 0))


def test_crossfades_of_a_rotated_source_stay_upright(
    turned: Path, ffmpeg_exe: str, tmp_path: Path
) -> None:
    segments = [VideoSegment(0.52, 2.28, turned), VideoSegment(3.12, 4.68, turned)]
    out = tmp_path / "faded.mp4"
    VideoEditor().extract_and_concatenate_efficient(
        turned, segments, out, apply_transitions=True, transition_duration=0.4
    )
    video = probe(out).video
    assert video is not None
    assert (video.width, video.height, video.rotation) == (320, 240, 90)
    frames = upright_frames(ffmpeg_exe, out)
    assert frames.shape[1:] == (320, 240)
    source = upright_frames(ffmpeg_exe, turned, 0.52, 1)[0]
    assert abs(frames[0] - source).mean() < 6
