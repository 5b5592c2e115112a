"""Streaming, bounded-memory video analysis: one decode pass, constant memory.

``analyze_video`` decodes the file in ffmpeg children (``video/decode.py``: one per time range,
run through ``memory_safe_ffmpeg``, so they are budgeted, capped and always reaped) that write
tiny grey frames (64x36) and 16 kHz mono PCM to pipes. Python keeps one previous frame and
per-window sums, never the video: memory does not grow with the file's length. Large files
(by the adaptive config) are split into time ranges analysed in parallel, as many at a time as
the memory budget admits; the ranges overlap by one frame so a cut on a
range boundary is still seen, and their results are merged so they match a single pass.

What would grow with the length is the MP4 sample index, which every demuxer loads whole
(~40 bytes per video frame or audio packet, ~13 MiB per hour of 1080p30 + AAC): the probe's copy
is returned to the OS before the decoding starts (and the children's budget reservations reuse
that probe), and an MP4 is cut into ranges of at most ``SLICE_S`` whose children each read a
header describing only their slice (``montage.ffmpeg.slice_input``), so a child's index is
bounded by the slice, not the file. Other files, or MP4s the slicer does not handle, give each
child the whole file (logged at debug level).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from montage.resources import release_freed_memory
from montage.video.decode import (
    AUDIO_RATE,
    RangePlan,
    decode_range,
    frame_rate,
    plan_ranges,
    slice_inputs,
)
from montage.video.inputs import check_unchanged, fingerprint
from montage.video.signals import (
    HighlightCandidate,
    SceneDetector,
    SilenceTracker,
    WindowAccumulator,
    frame_difference,
    rank_highlights,
    rms_dbfs,
)

if TYPE_CHECKING:
    from montage.ffmpeg.probe import MediaInfo
    from montage.ffmpeg.slice_input import SliceSource

ProgressCallback = Callable[[float, str], None]

MIN_RANGE_S = 20.0
SLICE_S = 300.0
"""Longest range read through a slice header: a child's sample index is bounded by it."""


@dataclass
class AnalysisResult:
    """What ``analyze_video`` found; also reads as a dict (``result['scene_changes']``)."""

    path: str
    sha256: str
    media: dict[str, Any]
    window_s: float
    audio_rms_db: list[float]
    silent_ranges: list[tuple[float, float]]
    scene_changes: list[float]
    motion: list[float]
    highlights: list[HighlightCandidate]
    processing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "media": self.media,
            "window_s": self.window_s,
            "audio_rms_db": self.audio_rms_db,
            "silent_ranges": [list(r) for r in self.silent_ranges],
            "scene_changes": self.scene_changes,
            "motion": self.motion,
            "highlights": [h.to_dict() for h in self.highlights],
            "processing": self.processing,
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def keys(self) -> list[str]:
        return list(self.to_dict())


@dataclass
class _RangeResult:
    frames: int = 0
    motion: WindowAccumulator | None = None
    audio: WindowAccumulator | None = None
    cuts: list[float] = field(default_factory=list)
    silent_runs: list[tuple[float, float]] = field(default_factory=list)
    peak_memory_mb: float = 0.0


def analyze_video(
    video_path: str | Path,
    window_s: float = 1.0,
    memory_limit_mb: float | None = None,
    progress: ProgressCallback | None = None,
    fast: bool = False,
    *,
    ranges: int | None = None,
    highlight_length_s: float = 5.0,
    scene_threshold: float = 30.0,
    slice_ranges: bool = True,
) -> AnalysisResult:
    """Analyse a video in one streaming pass; see the module docstring for how memory stays flat.

    ``ranges`` forces the number of parallel time ranges (default: from the adaptive config).
    ``fast=True`` decodes keyframes only: scene changes and motion at keyframe resolution.
    ``slice_ranges=False`` gives every child the whole file (``SliceSource``: the default cuts
    an MP4 into ranges of at most ``SLICE_S`` whose children each load only their slice's index).
    """
    from montage.adaptive import get_safe_processing_config
    from montage.ffmpeg.probe import keyframe_times, probe
    from montage.memory.monitor import memory_guard

    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
    started = time.monotonic()
    info = probe(video_path, require_video=True)
    path = Path(info.path)
    config = get_safe_processing_config(path, memory_limit_mb=memory_limit_mb, operation="analyze")
    n_ranges = ranges or _range_count(info.duration_s, config.use_chunking, config.max_workers)
    keyframes = keyframe_times(path) if fast else None
    slices = _slice_source(info) if slice_ranges else None
    if slices is not None and ranges is None:
        n_ranges = max(n_ranges, math.ceil(info.duration_s / SLICE_S - 1e-9))
    spans = plan_ranges(info, n_ranges, keyframes)  # reads the moov box (edit lists)
    before = fingerprint(path)
    with slice_inputs(slices, spans) as inputs:
        del slices  # its tables are written into the headers: free them before decoding
        release_freed_memory()  # the probes read the whole sample index: give those pages back
        tracker = _Progress(progress, _expected_frames(info, keyframes))
        workers = max(1, min(config.max_workers, len(spans)))
        threads = _decoder_threads(workers)
        with memory_guard(memory_limit_mb) as guard:
            digest: list[str] = []
            hasher = threading.Thread(target=lambda: digest.append(_sha256(path)), daemon=True)
            hasher.start()
            with ThreadPoolExecutor(workers, thread_name_prefix="montage-analyze") as pool:
                parts = list(
                    pool.map(
                        lambda job: _analyze_range(
                            info, job[0], window_s, scene_threshold, threads, tracker, job[1]
                        ),
                        zip(spans, inputs),
                    )
                )
            hasher.join()
            peak_mb = max(guard.peak_memory_mb, *(p.peak_memory_mb for p in parts))
    _check_complete(info, before, sum(p.frames for p in parts), tracker.total if not fast else 0)
    return _merge(
        info,
        digest[0],
        window_s,
        parts,
        highlight_length_s,
        processing={
            "chunked": len(spans) > 1,
            "ranges": len(spans),
            "workers": workers,
            "fast": fast,
            "peak_memory_mb": round(peak_mb, 1),
            "frames_analyzed": sum(p.frames for p in parts),
            "elapsed_s": round(time.monotonic() - started, 3),
            "ffmpeg_profile": str(getattr(config.ffmpeg_profile, "value", config.ffmpeg_profile)),
        },
    )


def _slice_source(info: MediaInfo) -> SliceSource | None:
    """The file as slices for the children, if it is an MP4/MOV the slicer handles."""
    from montage.ffmpeg.mp4boxes import trivial_edit_lists
    from montage.ffmpeg.slice_input import SliceSource

    if "mp4" not in info.container.split(",") or not trivial_edit_lists(Path(info.path)):
        return None  # the slices keep timestamps under -advanced_editlist 0 only
    return SliceSource.open(info.path)


def _check_complete(info: MediaInfo, before: tuple[int, int], frames: int, expected: int) -> None:
    """A file that changed or ended early while being read must not yield a 'result'."""
    from montage.errors import CorruptMediaError

    check_unchanged(
        {Path(info.path): before}, "analysed; analyse a copy that nothing else is writing"
    )
    if expected and frames < expected - max(2, round(0.01 * expected)):
        raise CorruptMediaError(
            info.path,
            f"{info.path}: decoding ended after {frames} of {expected} frames; "
            "the file is truncated or damaged (re-copy or re-encode it)",
        )


def _range_count(duration_s: float, chunked: bool, workers: int) -> int:
    """As many ranges as the budget's workers and the length allow.

    Measured on 2 cores (benchmarks/results/analysis.md): 2 single-threaded ranges take 0.6x
    the wall and 0.9x the CPU of one frame-threaded child. (An MP4 is cut further, into
    ``SLICE_S`` ranges, when its children read slice headers: ``analyze_video``.)
    """
    if not chunked or duration_s < 2 * MIN_RANGE_S:
        return 1
    return max(1, min(workers, int(duration_s // MIN_RANGE_S)))


def _decoder_threads(workers: int) -> int:
    """Auto (0) for one child; else split the cores so parallel ranges don't oversubscribe."""
    from montage.ffmpeg.profiles import cpu_count

    if workers <= 1:
        return 0
    return max(1, cpu_count() // workers)


def _expected_frames(info: MediaInfo, keyframes: list[float] | None) -> int:
    if keyframes is not None:
        return max(1, len(keyframes))
    return max(1, round(info.duration_s * frame_rate(info)))


class _Progress:
    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self._callback, self._total, self._done = callback, total, 0
        self.total = total
        self._lock = threading.Lock()

    def add(self, frames: int) -> None:
        if self._callback is None or frames <= 0:
            return
        with self._lock:
            self._done += frames
            done = self._done
        self._callback(min(1.0, done / self._total), f"analysed {done}/{self._total} frames")


def _analyze_range(
    info: MediaInfo,
    plan: RangePlan,
    window_s: float,
    scene_threshold: float,
    threads: int,
    tracker: _Progress,
    input_args: list[str] | None = None,
) -> _RangeResult:
    """Cuts and motion from the frames, RMS and silence from the audio, for one range."""
    result = _RangeResult(motion=WindowAccumulator(window_s), audio=WindowAccumulator(window_s))
    motion, audio = result.motion, result.audio
    assert motion is not None and audio is not None
    detector = SceneDetector(threshold=scene_threshold)
    silence = SilenceTracker(min_silence_s=0.0)
    previous: list[Any] = []
    pending = [0]

    def on_frame(time_s: float, frame: Any) -> None:
        if previous:
            diff = frame_difference(frame, previous[0])
            if time_s >= plan.start - 1e-9 and not detector.push(time_s, diff):
                motion.add(time_s, diff)
        previous[:] = [frame]
        if time_s >= plan.start - 1e-9:
            result.frames += 1
            pending[0] += 1
            if pending[0] >= 50:
                tracker.add(pending[0])
                pending[0] = 0

    def on_audio(start_s: float, samples: Any) -> None:
        sum_squares = float(samples @ samples)
        audio.add(start_s, sum_squares, len(samples))
        silence.push(start_s, len(samples) / AUDIO_RATE, rms_dbfs(sum_squares, len(samples)))

    result.peak_memory_mb = decode_range(
        info, plan, threads=threads, on_frame=on_frame,
        on_audio=on_audio if info.has_audio else None, input_args=input_args,
    )  # fmt: skip
    tracker.add(pending[0])
    result.cuts = list(detector.cuts)
    result.silent_runs = silence.finish()
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _merge(
    info: MediaInfo,
    sha256: str,
    window_s: float,
    parts: list[_RangeResult],
    highlight_length_s: float,
    processing: dict[str, Any],
) -> AnalysisResult:
    n_windows = max(1, math.ceil(info.duration_s / window_s - 1e-9))
    motion, audio = WindowAccumulator(window_s), WindowAccumulator(window_s)
    for part in parts:
        for merged, own in ((motion, part.motion), (audio, part.audio)):
            assert own is not None
            for i, (s, c) in enumerate(zip(own.sums, own.counts)):
                if c:
                    merged.add(i * window_s + window_s / 2, s, c)
    motion_means = [round(m, 3) for m in motion.means(n_windows)]
    audio_db = [
        round(rms_dbfs(audio.sums[i], audio.counts[i]), 2) if i < len(audio.sums) else -120.0
        for i in range(n_windows)
    ]
    cuts = _dedupe_cuts(sorted(c for p in parts for c in p.cuts))
    silent = _merge_runs(sorted(r for p in parts for r in p.silent_runs))
    highlights = rank_highlights(
        duration_s=info.duration_s,
        window_s=window_s,
        audio_rms_db=audio_db,
        motion=motion_means,
        scene_changes=cuts,
        silent_ranges=silent,
        length_s=highlight_length_s,
    )
    return AnalysisResult(
        path=info.path,
        sha256=sha256,
        media=info.to_dict(),
        window_s=window_s,
        audio_rms_db=audio_db,
        silent_ranges=silent,
        scene_changes=[round(c, 4) for c in cuts],
        motion=motion_means,
        highlights=highlights,
        processing=processing,
    )


def _dedupe_cuts(cuts: list[float], min_gap_s: float = 0.5) -> list[float]:
    out: list[float] = []
    for cut in cuts:
        if not out or cut - out[-1] >= min_gap_s:
            out.append(cut)
    return out


def _merge_runs(
    runs: list[tuple[float, float]], min_silence_s: float = 0.5, gap_s: float = 0.06
) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] <= gap_s:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(round(a, 3), round(b, 3)) for a, b in merged if b - a >= min_silence_s - 1e-6]
