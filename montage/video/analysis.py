"""Streaming, bounded-memory video analysis: one decode pass, constant memory.

``analyze_video`` decodes the file in ffmpeg children (run through ``memory_safe_ffmpeg``, so
they are budgeted, capped and always reaped) that write tiny grey frames (64x36) and 16 kHz mono
PCM to pipes. Python keeps one previous frame and per-window sums, never the video: memory does
not grow with the file's length. Large files (by the adaptive config) are split into time
ranges analysed in parallel, as many at a time as the memory budget admits; the ranges overlap
by one frame so a cut on a range boundary is still seen, and their results are merged so they
match a single pass.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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

ProgressCallback = Callable[[float, str], None]

FRAME_W, FRAME_H = 64, 36
AUDIO_RATE = 16000
AUDIO_BLOCK_S = 0.05
MIN_RANGE_S = 20.0


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
) -> AnalysisResult:
    """Analyse a video in one streaming pass; see the module docstring for how memory stays flat.

    ``ranges`` forces the number of parallel time ranges (default: from the adaptive config).
    ``fast=True`` decodes keyframes only: scene changes and motion at keyframe resolution.
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
    spans = _split(info, n_ranges)
    keyframes = keyframe_times(path) if fast else None
    tracker = _Progress(progress, _expected_frames(info, keyframes))

    before = _fingerprint(path)
    with memory_guard(memory_limit_mb) as guard:
        digest: list[str] = []
        hasher = threading.Thread(target=lambda: digest.append(_sha256(path)), daemon=True)
        hasher.start()
        workers = max(1, min(config.max_workers, len(spans)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="montage-analyze") as pool:
            parts = list(
                pool.map(
                    lambda span: _analyze_range(
                        info, span, window_s, keyframes, scene_threshold, tracker
                    ),
                    spans,
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


def _fingerprint(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


def _check_complete(info: MediaInfo, before: tuple[int, int], frames: int, expected: int) -> None:
    """A file that changed or ended early while being read must not yield a 'result'."""
    from montage.errors import CorruptMediaError

    if _fingerprint(Path(info.path)) != before:
        raise CorruptMediaError(
            info.path,
            f"{info.path} changed or disappeared while it was being analysed; "
            "analyse a copy that nothing else is writing",
        )
    if expected and frames < expected - max(2, round(0.01 * expected)):
        raise CorruptMediaError(
            info.path,
            f"{info.path}: decoding ended after {frames} of {expected} frames; "
            "the file is truncated or damaged (re-copy or re-encode it)",
        )


def _range_count(duration_s: float, chunked: bool, workers: int) -> int:
    if not chunked or duration_s < 2 * MIN_RANGE_S:
        return 1
    return max(1, min(workers, int(duration_s // MIN_RANGE_S)))


def _frame_rate(info: MediaInfo) -> Fraction:
    video = info.video
    fps = video.frame_rate if video and video.frame_rate else 25.0
    return Fraction(fps).limit_denominator(1001)


def _split(info: MediaInfo, n: int) -> list[tuple[float, float]]:
    """Frame-aligned [start, end) spans covering the file."""
    fps = _frame_rate(info)
    total_frames = max(1, round(info.duration_s * fps))
    bounds = [round(total_frames * k / n) for k in range(n + 1)]
    return [(float(bounds[k] / fps), float(bounds[k + 1] / fps)) for k in range(n)]


def _expected_frames(info: MediaInfo, keyframes: list[float] | None) -> int:
    if keyframes is not None:
        return max(1, len(keyframes))
    return max(1, round(info.duration_s * _frame_rate(info)))


class _Progress:
    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self._callback, self._total, self._done = callback, total, 0
        self.total = total
        self._lock = threading.Lock()

    def add(self, frames: int) -> None:
        if self._callback is None:
            return
        with self._lock:
            self._done += frames
            done = self._done
        self._callback(min(1.0, done / self._total), f"analysed {done}/{self._total} frames")


def _analyze_range(
    info: MediaInfo,
    span: tuple[float, float],
    window_s: float,
    keyframes: list[float] | None,
    scene_threshold: float,
    tracker: _Progress,
) -> _RangeResult:
    result = _RangeResult(motion=WindowAccumulator(window_s), audio=WindowAccumulator(window_s))
    _video_pass(info, span, keyframes, scene_threshold, result, tracker)
    if info.has_audio:
        _audio_pass(info, span, result)
    return result


def _video_pass(
    info: MediaInfo,
    span: tuple[float, float],
    keyframes: list[float] | None,
    scene_threshold: float,
    result: _RangeResult,
    tracker: _Progress,
) -> None:
    from montage.ffmpeg.binary import ffmpeg_path
    from montage.ffmpeg.process import memory_safe_ffmpeg

    fps = _frame_rate(info)
    start, end = span
    lead = float(1 / fps) if start > 0 and keyframes is None else 0.0
    seek = max(0.0, start - lead)
    cmd = [ffmpeg_path(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    if keyframes is not None:
        cmd += ["-skip_frame", "nokey"]
    cmd += [*_seek_args(seek, end, info), "-i", f"file:{info.path}", "-map", "0:v:0"]
    cmd += ["-vf", f"scale={FRAME_W}:{FRAME_H}:flags=area,format=gray"]
    cmd += (
        ["-fps_mode", "passthrough"]
        if keyframes is not None
        else ["-fps_mode", "cfr", "-r", str(fps)]
    )
    cmd += ["-f", "rawvideo", "pipe:1"]
    times = _frame_times(seek, fps, keyframes, start, end)
    detector = SceneDetector(threshold=scene_threshold)
    motion = result.motion
    assert motion is not None
    previous = None
    with memory_safe_ffmpeg(
        cmd, video_path=info.path, name="analyze-video", stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        pending = 0
        for index, frame in enumerate(_read_frames(proc.stdout)):
            time_s = next(times)
            if previous is not None:
                diff = frame_difference(frame, previous)
                if time_s >= start - 1e-9 and not detector.push(time_s, diff):
                    motion.add(time_s, diff)
            previous = frame
            if time_s >= start - 1e-9:
                result.frames += 1
                pending += 1
            if pending >= 50 or index == 0:
                tracker.add(pending)
                pending = 0
        tracker.add(pending)
        proc.wait()
    result.cuts = list(detector.cuts)
    result.peak_memory_mb = max(result.peak_memory_mb, proc.peak_memory_mb)


def _seek_args(seek: float, end: float, info: MediaInfo) -> list[str]:
    args = []
    if seek > 0:
        args += ["-ss", f"{seek:.6f}"]
    if end < info.duration_s - 1e-6:
        args += ["-t", f"{end - seek:.6f}"]
    return args


def _frame_times(
    seek: float, fps: Fraction, keyframes: list[float] | None, start: float, end: float
) -> Iterator[float]:
    if keyframes is not None:
        yield from (k for k in keyframes if start - 1e-6 <= k < end - 1e-6)
        while True:  # more frames than keyframes seen: extrapolate (never hit on clean files)
            yield end
    index = 0
    while True:
        yield round(seek + float(index / fps), 6)
        index += 1


def _read_frames(stream: IO[bytes]) -> Iterator[Any]:
    import numpy as np

    size = FRAME_W * FRAME_H
    buffer = bytearray(size)
    view = memoryview(buffer)
    while True:
        filled = 0
        while filled < size:
            n = stream.readinto(view[filled:])  # type: ignore[attr-defined]
            if not n:
                return
            filled += n
        yield np.frombuffer(buffer, dtype=np.uint8).copy()


def _audio_pass(info: MediaInfo, span: tuple[float, float], result: _RangeResult) -> None:
    import numpy as np

    from montage.ffmpeg.binary import ffmpeg_path
    from montage.ffmpeg.process import memory_safe_ffmpeg

    # align to audio blocks so parallel ranges cut the same blocks as a single pass
    start = round(span[0] / AUDIO_BLOCK_S) * AUDIO_BLOCK_S
    end = (
        span[1]
        if span[1] >= info.duration_s - 1e-6
        else round(span[1] / AUDIO_BLOCK_S) * AUDIO_BLOCK_S
    )
    cmd = [ffmpeg_path(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    cmd += [*_seek_args(start, end, info), "-i", f"file:{info.path}", "-map", "0:a:0", "-vn"]
    cmd += ["-ac", "1", "-ar", str(AUDIO_RATE), "-f", "s16le", "pipe:1"]
    block_bytes = int(AUDIO_RATE * AUDIO_BLOCK_S) * 2
    audio = result.audio
    assert audio is not None
    silence = SilenceTracker(min_silence_s=0.0)
    offset = 0
    with memory_safe_ffmpeg(
        cmd,
        video_path=info.path,
        name="analyze-audio",
        stdout=subprocess.PIPE,
        reserve_mb=64.0,
    ) as proc:
        assert proc.stdout is not None
        while True:
            data = proc.stdout.read(block_bytes)
            if not data:
                break
            samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64)
            samples /= 32768.0
            t = start + offset / AUDIO_RATE
            sq = float(np.dot(samples, samples))
            audio.add(t, sq, len(samples))
            silence.push(t, len(samples) / AUDIO_RATE, rms_dbfs(sq, len(samples)))
            offset += len(samples)
        proc.wait()
    result.silent_runs = silence.finish()
    result.peak_memory_mb = max(result.peak_memory_mb, proc.peak_memory_mb)


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
