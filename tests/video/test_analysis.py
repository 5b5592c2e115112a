"""analyze_video on real generated media: cuts, silence, ranges, fast mode, bounded memory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from montage.errors import InvalidMediaError, NoVideoStreamError
from montage.video.analysis import analyze_video
from montage.video.sample import scene_starts
from tests.video.conftest import DURATION_S, FPS


def test_finds_every_cut_within_one_frame_and_no_other(scenes_clip: Path) -> None:
    result = analyze_video(scenes_clip)
    expected = scene_starts(DURATION_S)[1:]
    assert len(result.scene_changes) == len(expected), result.scene_changes
    for found, cut in zip(result.scene_changes, expected):
        assert abs(found - cut) <= 1 / FPS + 1e-6


def test_finds_the_silent_gap(scenes_clip: Path) -> None:
    result = analyze_video(scenes_clip)
    starts = scene_starts(DURATION_S)
    silent_start, silent_end = starts[1], starts[2]  # the second scene has no sound
    assert len(result.silent_ranges) == 1
    (a, b) = result.silent_ranges[0]
    assert abs(a - silent_start) <= 0.1 and abs(b - silent_end) <= 0.1
    # windows inside the gap are quiet, the loudest scene is loud
    assert max(result.audio_rms_db[6:7]) < -50
    assert max(result.audio_rms_db) > -25


def test_parallel_ranges_give_the_same_result_as_one_pass(scenes_clip: Path) -> None:
    one = analyze_video(scenes_clip, ranges=1)
    three = analyze_video(scenes_clip, ranges=3)
    assert three.processing["ranges"] == 3 and three.processing["chunked"] is True
    assert len(one.scene_changes) == len(three.scene_changes)
    for a, b in zip(one.scene_changes, three.scene_changes):
        assert abs(a - b) <= 1 / FPS + 1e-6
    assert one.silent_ranges == three.silent_ranges
    assert one.processing["frames_analyzed"] == three.processing["frames_analyzed"]
    assert one.processing["frames_analyzed"] == int(DURATION_S * FPS)
    for m1, m3 in zip(one.motion, three.motion):
        assert m1 == pytest.approx(m3, abs=0.05)


def test_result_reads_as_dict_and_serialises(scenes_clip: Path) -> None:
    result = analyze_video(scenes_clip)
    data = json.loads(json.dumps(result.to_dict()))
    assert result["scene_changes"] == data["scene_changes"]
    assert data["sha256"] == hashlib.sha256(scenes_clip.read_bytes()).hexdigest()
    assert len(data["audio_rms_db"]) == len(data["motion"]) == int(DURATION_S)
    assert data["media"]["duration_s"] == pytest.approx(DURATION_S, abs=0.1)
    assert data["processing"]["peak_memory_mb"] > 0


def test_highlights_are_usable_segments(scenes_clip: Path) -> None:
    result = analyze_video(scenes_clip, highlight_length_s=3.0)
    assert result.highlights
    best = result.highlights[0]
    segment = best.to_segment(str(scenes_clip))
    assert segment.duration == pytest.approx(3.0)
    silent_start, silent_end = scene_starts(DURATION_S)[1:3]
    assert not (silent_start <= best.start < silent_end), "best highlight is in the silent scene"


def test_fast_mode_decodes_keyframes_only(make_clip: object, scenes_clip: Path) -> None:
    result = analyze_video(scenes_clip, fast=True)
    assert result.processing["fast"] is True
    assert 0 < result.processing["frames_analyzed"] < DURATION_S * FPS / 10


def test_a_single_source_clip_has_no_cuts(clip: Path) -> None:
    assert analyze_video(clip).scene_changes == []


def test_progress_is_reported_and_reaches_one(scenes_clip: Path) -> None:
    seen: list[float] = []
    analyze_video(scenes_clip, progress=lambda fraction, message: seen.append(fraction))
    assert seen and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


def test_bad_inputs_raise_typed_errors(tmp_path: Path, make_clip: object) -> None:
    with pytest.raises(InvalidMediaError, match=r"missing\.mp4"):
        analyze_video(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    with pytest.raises(InvalidMediaError, match=r"notes\.mp4"):
        analyze_video(text)
    with pytest.raises(ValueError, match="window_s"):
        analyze_video(tmp_path / "x.mp4", window_s=0)


def test_audio_only_file_is_refused(tmp_path: Path, ffmpeg_exe: str) -> None:
    import subprocess

    out = tmp_path / "tone.m4a"
    subprocess.run(
        [
            ffmpeg_exe,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-c:a",
            "aac",
            str(out),
        ],
        check=True,
    )
    with pytest.raises(NoVideoStreamError):
        analyze_video(out)


def test_the_file_is_probed_once_per_purpose_not_per_range(
    scenes_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe loads the whole sample index (+16 MiB for an hour): the ffmpeg children's budget
    reservation reuses the analysis' probe instead of probing again in each range's thread."""
    import montage.ffmpeg.probe as probe_module

    calls: list[str] = []
    real = probe_module.probe

    def counting(path: object, **kwargs: object) -> object:
        calls.append(str(path))
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(probe_module, "probe", counting)
    analyze_video(scenes_clip, ranges=3)
    assert len(calls) == 2, calls  # analyze_video's own + the adaptive config's


def test_skipping_ffmpegs_edit_list_rewrite_changes_nothing(
    scenes_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ffmpeg's own mp4 (AAC priming edit): ``-advanced_editlist 0`` gives the same result."""
    import montage.video.decode as decode
    from montage.ffmpeg.probe import probe

    plans = decode.plan_ranges(probe(scenes_clip), 2)
    assert all(plan.plain_edits for plan in plans)
    assert "-advanced_editlist" in decode._command(probe(scenes_clip), plans[1], 1, None)
    plain = analyze_video(scenes_clip, ranges=2)
    monkeypatch.setattr(decode, "_plain_edits", lambda info: False)
    default = analyze_video(scenes_clip, ranges=2)
    assert plain.to_dict() | {"processing": None} == default.to_dict() | {"processing": None}
