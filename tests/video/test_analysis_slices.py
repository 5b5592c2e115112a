"""analyze_video's ranges read through slice headers (montage.ffmpeg.slice_input): same result
as reading the whole file, one pass or in ranges; the headers never outlive the job."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import montage.video.analysis as analysis
import montage.video.decode as decode
from montage.ffmpeg.slice_input import SliceSource
from montage.resources import montage_temp_root
from montage.video.analysis import analyze_video
from tests.video.conftest import DURATION_S, FPS


@pytest.fixture(scope="module", params=["plain", "bframes", "plain-no-audio", "bframes-no-audio"])
def variant(request: pytest.FixtureRequest, scenes_clip: Path, ffmpeg_exe: str) -> Path:
    name: str = request.param
    if name == "plain":
        return scenes_clip
    video = ["-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-g", "50"]
    args = video if name.startswith("bframes") else ["-c:v", "copy"]
    args += ["-an"] if name.endswith("no-audio") else ["-c:a", "copy"]
    out = scenes_clip.with_name(f"{name}.mp4")
    subprocess.run([ffmpeg_exe, "-v", "error", "-y", "-i", str(scenes_clip), *args, str(out)],
                   check=True)  # fmt: skip
    return out


@pytest.fixture
def slice_calls(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Seek times of the slice headers made (proves the children read slices)."""
    calls: list[float] = []
    real = SliceSource.input_args

    def spy(self: SliceSource, header: Path, seek_s: float, last_s: float | None) -> Any:
        calls.append(seek_s)
        return real(self, header, seek_s, last_s)

    monkeypatch.setattr(SliceSource, "input_args", spy)
    return calls


def _without_processing(result: analysis.AnalysisResult) -> dict[str, Any]:
    return result.to_dict() | {"processing": None}


def test_sliced_ranges_equal_whole_file_ranges_and_one_pass(
    variant: Path, slice_calls: list[float]
) -> None:
    sliced = analyze_video(variant, ranges=3)
    assert len(slice_calls) == 3
    whole = analyze_video(variant, ranges=3, slice_ranges=False)
    assert len(slice_calls) == 3
    assert _without_processing(sliced) == _without_processing(whole)
    one = analyze_video(variant, ranges=1, slice_ranges=False)
    assert sliced.processing["frames_analyzed"] == one.processing["frames_analyzed"]
    assert one.processing["frames_analyzed"] == int(DURATION_S * FPS)
    assert len(sliced.scene_changes) == len(one.scene_changes) == 4
    for a, b in zip(sliced.scene_changes, one.scene_changes):
        assert abs(a - b) <= 1 / FPS + 1e-6
    assert sliced.motion == pytest.approx(one.motion, abs=0.05)
    assert sliced.audio_rms_db == pytest.approx(one.audio_rms_db, abs=0.05)
    assert sliced.silent_ranges == one.silent_ranges


def test_long_files_are_cut_into_bounded_slices(
    scenes_clip: Path, slice_calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analysis, "SLICE_S", 6.0)
    sliced = analyze_video(scenes_clip)
    assert sliced.processing["ranges"] == 4 and len(slice_calls) == 4
    one = analyze_video(scenes_clip, ranges=1, slice_ranges=False)
    assert sliced.processing["frames_analyzed"] == one.processing["frames_analyzed"]
    for a, b in zip(sliced.scene_changes, one.scene_changes, strict=True):
        assert abs(a - b) <= 1 / FPS + 1e-6
    assert sliced.audio_rms_db == pytest.approx(one.audio_rms_db, abs=0.05)


def test_other_containers_read_the_whole_file(
    scenes_clip: Path, ffmpeg_exe: str, slice_calls: list[float]
) -> None:
    mkv = scenes_clip.with_name("scenes.mkv")
    copy = [ffmpeg_exe, "-v", "error", "-y", "-i", str(scenes_clip), "-c", "copy", str(mkv)]
    subprocess.run(copy, check=True)
    result = analyze_video(mkv, ranges=2)
    assert slice_calls == []
    assert len(result.scene_changes) == 4


def test_non_trivial_edit_lists_read_the_whole_file(
    scenes_clip: Path, slice_calls: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    import montage.ffmpeg.mp4boxes as mp4boxes

    monkeypatch.setattr(mp4boxes, "trivial_edit_lists", lambda path: False)
    analyze_video(scenes_clip, ranges=2)
    assert slice_calls == []


def test_a_range_past_the_end_of_a_short_audio_track_reads_the_whole_file(
    tmp_path: Path, ffmpeg_exe: str, slice_calls: list[float]
) -> None:
    short = tmp_path / "short-audio.mp4"
    subprocess.run([ffmpeg_exe, "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=25:duration=12", "-f", "lavfi", "-i",
                    "sine=duration=3", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
                    "-c:a", "aac", str(short)], check=True)  # fmt: skip
    sliced = analyze_video(short, ranges=3)
    assert len(slice_calls) == 3  # the last two ranges fall back to the whole file
    whole = analyze_video(short, ranges=3, slice_ranges=False)
    assert _without_processing(sliced) == _without_processing(whole)


def _headers() -> list[Path]:
    return sorted(montage_temp_root().glob("montage_slice_*"))


def test_the_source_tables_are_not_held_while_decoding(
    scenes_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import weakref

    sources: list[weakref.ref[SliceSource]] = []
    alive: list[bool] = []
    real_open, real_read = SliceSource.open, decode._read_frames

    def opening(path: Any) -> SliceSource | None:
        source = real_open(path)
        assert source is not None
        sources.append(weakref.ref(source))
        return source

    def reading(stream: Any) -> Iterator[Any]:
        gc.collect()
        alive.append(sources[0]() is not None)
        return real_read(stream)

    monkeypatch.setattr(SliceSource, "open", staticmethod(opening))
    monkeypatch.setattr(decode, "_read_frames", reading)
    analyze_video(scenes_clip, ranges=2)
    assert alive == [False, False]


def test_headers_are_removed_after_success(scenes_clip: Path) -> None:
    analyze_video(scenes_clip, ranges=3)
    assert _headers() == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_headers_are_removed_after_an_error_or_ctrl_c(
    scenes_clip: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    seen: list[list[Path]] = []
    real = decode._read_frames

    def failing(stream: Any) -> Iterator[Any]:
        seen.append(_headers())
        frames = real(stream)
        yield next(frames)
        raise error("stop")

    monkeypatch.setattr(decode, "_read_frames", failing)
    with pytest.raises(error):
        analyze_video(scenes_clip, ranges=2)
    assert seen and all(seen), "the children were reading a slice header"
    assert _headers() == []
