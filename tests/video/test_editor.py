"""VideoEditor on real generated clips: durations, exact frames, the right frames, A/V sync,
crossfades, flat memory in the segment count, mixed sources, and refusals that leave nothing."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from montage.errors import MediaNotFoundError, OutputError
from montage.ffmpeg.watch import peak_rss_bytes
from montage.video.editor import EditReport, VideoEditor
from montage.video.segments import SegmentClampedWarning, VideoSegment

MakeClip = Callable[..., Path]
AAC_FRAME_S = 1024 / 48000


def grey_frames(path: Path) -> list[Any]:
    """Every decoded video frame as a small grey int16 array (testsrc2 changes every frame)."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return [
            f.to_ndarray(format="gray")[::4, ::4].astype(np.int16)
            for f in container.decode(video=0)
        ]


def frame_times(path: Path) -> list[float]:
    import av

    with av.open(str(path)) as container:
        return [float(f.pts * f.time_base) for f in container.decode(video=0)]


def av_durations(path: Path) -> tuple[float, float]:
    """(video seconds = frames / rate, audio seconds = decoded samples / rate)."""
    import av

    with av.open(str(path)) as container:
        rate = float(container.streams.video[0].average_rate)
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(f.samples for f in container.decode(audio=0))
        audio_s = samples / stream.codec_context.sample_rate
    return frames / rate, audio_s


def best_match(frame: Any, source: list[Any]) -> int:
    import numpy as np

    return int(np.argmin([np.abs(frame - s).mean() for s in source]))


def assert_segments_match_source(out: Path, src: Path, report: EditReport) -> None:
    """First and last frame of each segment are the source's frames at those times."""
    source, output = grey_frames(src), grey_frames(out)
    times = frame_times(src)
    period = times[1] - times[0]
    assert len(output) == report.expected_frames
    pos = 0
    for seg in report.segments:
        first = next(i for i, t in enumerate(times) if t >= seg.requested_start_s - 1e-4)
        end = next((i for i, t in enumerate(times) if t >= seg.requested_end_s - 1e-4), len(times))
        assert seg.actual_start_s == pytest.approx(times[first], abs=1e-6)
        assert best_match(output[pos], source) == first, f"segment {seg.index} first frame"
        last = pos + (end - first) - 1
        assert best_match(output[last], source) == end - 1, f"segment {seg.index} last frame"
        pos = last + 1
    assert pos == len(output)
    assert period > 0


def no_leftovers(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if ".montage-" in p.name] == []


@pytest.fixture(scope="module")
def editor() -> VideoEditor:
    return VideoEditor()


@pytest.fixture(scope="module")
def src6(make_clip: MakeClip) -> Path:
    """6 s, 25 fps, keyframe every second, no B-frames."""
    return make_clip(duration=6)


@pytest.fixture(scope="module")
def src_bframes(make_clip: MakeClip) -> Path:
    """6 s with B-frames (dts != pts), keyframe every second."""
    return make_clip(duration=6, extra=("-bf", "2"))


def three(src: Path) -> list[VideoSegment]:
    return [VideoSegment(0.5, 1.5, src), VideoSegment(2.2, 3.52, src), VideoSegment(4.0, 6.0, src)]


def test_copy_mode_snaps_starts_to_keyframes(
    editor: VideoEditor, src6: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy.mp4"
    report = editor.extract_and_concatenate_efficient(src6, three(src6), out, mode="copy")
    assert report.mode == "copy" and report.ffmpeg_runs == 1
    assert [s.actual_start_s for s in report.segments] == pytest.approx([0.0, 2.0, 4.0])
    # [0, 1.52) + [2.0, 3.52) + [4, 6): ends snap to the next frame boundary
    assert report.expected_duration_s == pytest.approx(1.52 + 1.52 + 2.0)
    assert report.output_duration_s == pytest.approx(report.expected_duration_s, abs=0.05)
    assert len(grey_frames(out)) == 126
    no_leftovers(tmp_path)


@pytest.mark.parametrize("mode", ["accurate", "smart"])
def test_exact_frames_and_the_right_frames(
    editor: VideoEditor, src6: Path, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / f"{mode}.mp4"
    report = editor.extract_and_concatenate_efficient(src6, three(src6), out, mode=mode)
    assert report.mode == mode, report.fallback_reason
    assert report.expected_frames == 25 + 33 + 50
    assert report.output_duration_s == pytest.approx(108 / 25, abs=0.03)
    assert_segments_match_source(out, src6, report)
    video_s, audio_s = av_durations(out)
    assert abs(video_s - audio_s) < AAC_FRAME_S
    no_leftovers(tmp_path)


def test_smart_cut_with_bframes_is_exact(
    editor: VideoEditor, src_bframes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "smart_b.mp4"
    segments = [VideoSegment(0.36, 2.6, src_bframes), VideoSegment(3.1, 5.5, src_bframes)]
    report = editor.extract_and_concatenate_efficient(src_bframes, segments, out, mode="auto")
    assert report.mode == "smart", report.fallback_reason
    assert report.expected_frames == 56 + 60
    assert_segments_match_source(out, src_bframes, report)


def test_auto_copies_when_cuts_are_on_keyframes(
    editor: VideoEditor, src6: Path, tmp_path: Path
) -> None:
    out = tmp_path / "auto.mp4"
    segments = [VideoSegment(1.0, 2.0, src6), VideoSegment(3.0, 6.0, src6)]
    report = editor.extract_and_concatenate_efficient(src6, segments, out)
    assert report.mode == "copy"
    assert len(grey_frames(out)) == 25 + 75
    assert report.segments[0].actual_start_s == pytest.approx(1.0)


def test_auto_falls_back_to_accurate_for_other_codecs(
    editor: VideoEditor, make_clip: MakeClip, tmp_path: Path
) -> None:
    src = make_clip(duration=3, vcodec="mpeg4", gop=25)
    report = editor.extract_and_concatenate_efficient(
        src, [VideoSegment(0.3, 1.3, src), VideoSegment(1.5, 2.9, src)], tmp_path / "o.mp4"
    )
    assert report.mode == "accurate"
    assert report.fallback_reason is not None and "mpeg4" in report.fallback_reason
    assert len(grey_frames(tmp_path / "o.mp4")) == 25 + 35


def test_transitions_give_the_expected_duration(
    editor: VideoEditor, src6: Path, tmp_path: Path
) -> None:
    out = tmp_path / "xfade.mp4"
    fractions: list[float] = []
    report = editor.extract_and_concatenate_efficient(
        src6,
        three(src6),
        out,
        apply_transitions=True,
        transition_duration=0.4,
        progress=lambda f, _m: fractions.append(f),
    )
    # 108 frames - 2 crossfades of 10 frames
    assert report.expected_frames == 108 - 2 * 10
    assert len(grey_frames(out)) == 88
    assert report.output_duration_s == pytest.approx(4.32 - 2 * 0.4, abs=0.03)
    video_s, audio_s = av_durations(out)
    assert abs(video_s - audio_s) < AAC_FRAME_S
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 3


def test_mixed_sources_are_normalised_to_the_first(
    editor: VideoEditor, make_clip: MakeClip, tmp_path: Path
) -> None:
    import av

    a = make_clip(duration=3)
    b = make_clip(duration=3, size="160x120", rate=30, sample_rate=44100, tone=880)
    out = tmp_path / "mixed.mp4"
    segments = [VideoSegment(0.2, 1.2, a), VideoSegment(0.5, 2.0, b), VideoSegment(2.0, 3.0, a)]
    report = editor.extract_and_concatenate_efficient(a, segments, out, mode="auto")
    assert report.mode == "accurate"
    assert report.expected_frames == 25 + round(1.5 * 25) + 25
    assert report.output_duration_s == pytest.approx(report.expected_duration_s, abs=0.05)
    with av.open(str(out)) as container:
        v, s = container.streams.video[0], container.streams.audio[0]
        assert (v.codec_context.width, v.codec_context.height) == (320, 240)
        assert float(v.average_rate) == pytest.approx(25)
        assert s.codec_context.sample_rate == 48000
    assert len(grey_frames(out)) == report.expected_frames
    video_s, audio_s = av_durations(out)
    assert abs(video_s - audio_s) < AAC_FRAME_S


_PEAK_SCRIPT = """
import json, sys
from montage.video.editor import VideoEditor
from montage.video.segments import VideoSegment
src, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
segs = [VideoSegment(i * 0.5 + 0.02, i * 0.5 + 0.5, src) for i in range(50)]
segs = segs if count == 50 else segs[::20]
r = VideoEditor().extract_and_concatenate_efficient(src, segs, out, mode="accurate")
print(json.dumps({"frames": r.expected_frames, "peak_mb": r.peak_memory_mb}))
"""


@dataclass
class _Sampled:
    """What ``_run_sampled`` saw of a run: its stdout and its tree, every 20 ms."""

    stdout: str
    parent_mb: float = 0.0  # the Python process's peak RSS
    most_children: int = 0  # the most ffmpeg children alive in one sample
    encode_peaks_mb: dict[int, float] = field(default_factory=dict)  # video piece pid -> VmHWM


def _run_sampled(argv: list[str]) -> _Sampled:
    """Run ``argv`` and watch its tree from outside every 20 ms.

    Each video piece encode's peak is its kernel high-water mark (``VmHWM``), kept until it
    exits: ``ru_maxrss`` would count the RSS each child inherits from the Python that forked
    it, and sampled RSS catches a job of a few samples nearer its peak by chance.
    """
    import subprocess
    import threading

    import psutil

    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = _Sampled("")
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(child.pid)
        while not done.is_set():
            try:
                kids = root.children(recursive=True)
                seen.parent_mb = max(seen.parent_mb, root.memory_info().rss / 1048576)
            except psutil.Error:
                break
            seen.most_children = max(seen.most_children, len(kids))
            for kid in kids:
                try:
                    encode = "-frames:v" in kid.cmdline()
                except psutil.Error:
                    continue
                peak = peak_rss_bytes(kid.pid) / 1048576
                if encode and peak > 0:
                    seen.encode_peaks_mb[kid.pid] = max(seen.encode_peaks_mb.get(kid.pid, 0), peak)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate(timeout=300)
    done.set()
    sampler.join()
    assert child.returncode == 0, stderr[-2000:]
    seen.stdout = stdout
    return seen


def test_fifty_segments_peak_like_three(make_clip: MakeClip, tmp_path: Path) -> None:
    """Each edit runs in a fresh Python watched from outside; the pieces are equal, only their
    count differs, so nothing may grow with it: one ffmpeg at a time, the parent's own memory,
    and the size of each piece's encode.

    Not the largest encode of each edit against each other: identical 12-frame encodes peak
    anywhere between ~58 and ~77 MiB in a full run (x264's threads and malloc arenas), so the
    largest of 50 exceeds the largest of 3 by chance alone (two CI runs: 55 vs 63, 60 vs 70).
    """
    import json
    import statistics
    import sys

    src = make_clip(duration=26)
    runs = {}
    for count in (3, 50):
        out = tmp_path / f"edit{count}.mp4"
        argv = [sys.executable, "-c", _PEAK_SCRIPT, str(src), str(out), str(count)]
        runs[count] = _run_sampled(argv)
        report = json.loads(runs[count].stdout.strip().splitlines()[-1])
        assert len(grey_frames(out)) == 12 * count == report["frames"]
    summary = {
        count: (run.parent_mb, run.most_children, sorted(run.encode_peaks_mb.values()))
        for count, run in runs.items()
    }
    print(f"3 vs 50 segments (parent MiB, most children, encode peaks MiB): {summary}")
    # one job at a time (a job being reaped can still show beside the next one's start)
    assert runs[3].most_children <= 2 and runs[50].most_children <= 2, summary
    assert runs[50].parent_mb == pytest.approx(runs[3].parent_mb, rel=0.15), summary
    # every encode lives a few samples; a loaded machine may let one pass unseen
    assert len(runs[3].encode_peaks_mb) >= 2 and len(runs[50].encode_peaks_mb) >= 25, summary
    # a typical encode of the 50 is no larger than the 3's largest: a job's memory does not
    # grow with the count (an encode seen only early in its life reads low, hence the median)
    largest_of_3 = max(runs[3].encode_peaks_mb.values())
    assert largest_of_3 > 5
    assert statistics.median(runs[50].encode_peaks_mb.values()) <= 1.15 * largest_of_3, summary


# --- refusals: clear errors, no output ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [((-1.0, 2.0), ">= 0"), ((3.0, 2.0), "after start_time"), ((float("nan"), 2.0), "finite")],
)
def test_bad_segments_are_refused_where_written(args: tuple[float, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VideoSegment(args[0], args[1], "in.mp4")


def test_refusals_leave_no_output(editor: VideoEditor, src6: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    run = editor.extract_and_concatenate_efficient
    with pytest.raises(ValueError, match="empty"):
        run(src6, [], out)
    with pytest.raises(ValueError, match="past the end"):
        run(src6, [VideoSegment(5.0, 9.0, src6)], out, strict=True)
    with pytest.raises(ValueError, match="at or after the end"):
        run(src6, [VideoSegment(7.0, 9.0, src6)], out)
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaNotFoundError):
        run(missing, [VideoSegment(0, 1, missing)], out)
    with pytest.raises(ValueError, match="mode"):
        run(src6, [VideoSegment(0, 1, src6)], out, mode="fast")
    with pytest.raises(ValueError, match="transition_duration"):
        run(src6, three(src6), out, apply_transitions=True, transition_duration=float("nan"))
    with pytest.raises(ValueError, match="shorter than"):
        run(src6, three(src6), out, apply_transitions=True, transition_duration=0.9)
    assert list(tmp_path.iterdir()) == []


def test_segments_past_the_end_are_clamped_with_a_warning(
    editor: VideoEditor, src6: Path, tmp_path: Path
) -> None:
    out = tmp_path / "clamped.mp4"
    with pytest.warns(SegmentClampedWarning):
        report = editor.extract_and_concatenate_efficient(
            src6, [VideoSegment(5.0, 9.0, src6)], out, mode="accurate"
        )
    assert report.segments[0].actual_end_s == pytest.approx(6.0)
    assert len(grey_frames(out)) == 25


def test_output_that_is_the_input_is_refused(
    editor: VideoEditor, make_clip: MakeClip, tmp_path: Path
) -> None:
    src = tmp_path / "in.mp4"
    src.write_bytes(make_clip(duration=2).read_bytes())
    before = src.read_bytes()
    link, hard = tmp_path / "link.mp4", tmp_path / "hard.mp4"
    link.symlink_to(src)
    os.link(src, hard)
    for target in (src, link, hard, tmp_path / "." / "in.mp4"):
        with pytest.raises(OutputError, match="is the input"):
            editor.extract_and_concatenate_efficient(src, [VideoSegment(0, 1, src)], target)
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.mp4", "in.mp4", "link.mp4"]


def test_existing_output_is_kept_or_replaced_whole(
    editor: VideoEditor, src6: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exists.mp4"
    out.write_bytes(b"precious")
    segments = [VideoSegment(1.0, 2.0, src6)]
    with pytest.raises(OutputError, match="exists"):
        editor.extract_and_concatenate_efficient(src6, segments, out, overwrite=False)
    assert out.read_bytes() == b"precious"

    def boom(fraction: float, _message: str) -> None:
        if fraction > 0.3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        editor.extract_and_concatenate_efficient(src6, three(src6), out, progress=boom)
    assert out.read_bytes() == b"precious"
    no_leftovers(tmp_path)
    editor.extract_and_concatenate_efficient(src6, segments, out)
    assert len(grey_frames(out)) == 25


def test_seed_import_path_and_example(src6: Path, tmp_path: Path) -> None:
    from src.providers.video_processor import VideoEditor as SeedEditor
    from src.providers.video_processor import VideoSegment as SeedSegment

    segments = [SeedSegment(1, 2, str(src6)), SeedSegment(3, 4, str(src6))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = SeedEditor().extract_and_concatenate_efficient(
            str(src6), segments, str(tmp_path / "seed.mp4")
        )
    assert report.output_duration_s == pytest.approx(2.0, abs=0.05)
    assert report.to_dict()["mode"] == "copy"


def test_windowed_index_agrees_with_a_full_scan(src_bframes: Path) -> None:
    from montage.video.cutting import build_index

    full = build_index(src_bframes)
    part = build_index(src_bframes, [(1.3, 2.1), (4.2, 6.0)])
    assert full.frame_count == 150 and full.end_s == pytest.approx(6.0)
    assert part.frame_count < full.frame_count
    assert set(part.frame_times_s) <= set(full.frame_times_s)
    assert part.end_s == pytest.approx(full.end_s)  # the last window reached the end
    assert part.time_of(part.first_frame_at_or_after(1.3)) == pytest.approx(1.32)
    assert part.time_of(part.keyframe_at_or_before(part.first_frame_at_or_after(1.3))) == 1.0
    for index in part.keyframe_indices:
        t = part.time_of(index)
        assert full.keyframe_dts(full.first_frame_at_or_after(t)) == part.keyframe_dts(index)


@pytest.mark.slow
def test_smart_cut_of_hevc_is_exact(
    editor: VideoEditor, make_clip: MakeClip, tmp_path: Path
) -> None:
    src = make_clip(duration=3, vcodec="libx265", extra=("-x265-params", "log-level=error"))
    out = tmp_path / "hevc.mp4"
    segments = [VideoSegment(0.3, 1.6, src), VideoSegment(2.1, 3.0, src)]
    report = editor.extract_and_concatenate_efficient(src, segments, out, mode="smart")
    assert report.mode == "smart", report.fallback_reason
    assert report.expected_frames == 32 + 22  # frames 8..39 and 53..74
    assert_segments_match_source(out, src, report)


@pytest.mark.slow
def test_smart_verifies_seam_windows_on_long_outputs(
    editor: VideoEditor, src6: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import montage.video.verify as verify_module

    monkeypatch.setattr(verify_module, "VERIFY_FULL_MAX_S", 0.0)
    out = tmp_path / "windows.mp4"
    report = editor.extract_and_concatenate_efficient(src6, three(src6), out, mode="smart")
    assert report.mode == "smart", report.fallback_reason
    assert report.ffmpeg_runs > 9  # pieces + join + one decode per seam
    assert len(grey_frames(out)) == 108


def test_smart_falls_back_to_accurate_when_the_join_does_not_decode(
    editor: VideoEditor, src6: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import montage.video.encoding as encoding_module
    from montage.video.pieces import EncodeSettings

    def wrong_codec(_source: object, enc: EncodeSettings) -> EncodeSettings:
        return dataclasses.replace(enc, encoder="mpeg4")  # not what the copied GOPs are

    monkeypatch.setattr(encoding_module, "smart_settings", wrong_codec)
    out = tmp_path / "fallback.mp4"
    report = editor.extract_and_concatenate_efficient(src6, three(src6), out, mode="smart")
    assert report.mode == "accurate"
    assert report.fallback_reason is not None and "verification" in report.fallback_reason
    assert_segments_match_source(out, src6, report)
    no_leftovers(tmp_path)
