"""Incremental signal accumulators for streaming analysis (pure: numbers in, numbers out).

Analysis decodes a file once as a stream of tiny grey frames and mono PCM blocks. These
accumulators consume that stream one frame / one block at a time and keep only per-window
aggregates, so memory stays constant however long the file is. They know nothing of ffmpeg.

Scene cuts: the mean absolute difference of consecutive 64x36 grey frames (0-255). A cut is a
frame whose difference is above ``threshold`` *and* several times the recent typical difference
(so steady fast motion is not a cut), at least ``min_scene_s`` after the previous cut.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

SILENCE_DBFS = -50.0
"""RMS below this (dBFS) counts as silence."""

MIN_SILENCE_S = 0.5
"""Shorter quiet stretches are pauses, not silent ranges."""

FLOOR_DBFS = -120.0
"""The level reported for digital silence (log of zero)."""


def rms_dbfs(sum_squares: float, count: int) -> float:
    """RMS in dBFS of samples normalised to [-1, 1]; ``FLOOR_DBFS`` for silence or no samples."""
    if count <= 0 or sum_squares <= 0.0:
        return FLOOR_DBFS
    return max(FLOOR_DBFS, 10.0 * math.log10(sum_squares / count))


@dataclass
class SceneDetector:
    """Detects hard cuts from per-frame differences, one frame at a time."""

    threshold: float = 30.0
    ratio: float = 3.0
    min_scene_s: float = 0.5
    history: int = 15
    cuts: list[float] = field(default_factory=list)
    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=15))

    def push(self, time_s: float, diff: float) -> bool:
        """Feed the difference between the frame at ``time_s`` and the one before it."""
        typical = sorted(self._recent)[len(self._recent) // 2] if self._recent else 0.0
        is_cut = (
            diff >= self.threshold
            and diff >= self.ratio * max(typical, 1.0)
            and (not self.cuts or time_s - self.cuts[-1] >= self.min_scene_s)
        )
        if is_cut:
            self.cuts.append(time_s)
        else:
            self._recent.append(diff)
        return is_cut


@dataclass
class WindowAccumulator:
    """Sums a per-sample quantity into fixed windows of ``window_s`` seconds."""

    window_s: float
    sums: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def add(self, time_s: float, value: float, count: int = 1) -> None:
        index = max(0, int(time_s / self.window_s))
        while len(self.sums) <= index:
            self.sums.append(0.0)
            self.counts.append(0)
        self.sums[index] += value
        self.counts[index] += count

    def means(self, length: int | None = None) -> list[float]:
        n = len(self.sums) if length is None else length
        out = []
        for i in range(n):
            count = self.counts[i] if i < len(self.counts) else 0
            out.append(self.sums[i] / count if count else 0.0)
        return out


@dataclass
class SilenceTracker:
    """Finds silent ranges from consecutive audio blocks (start, duration, dBFS)."""

    threshold_dbfs: float = SILENCE_DBFS
    min_silence_s: float = MIN_SILENCE_S
    ranges: list[tuple[float, float]] = field(default_factory=list)
    _start: float | None = None
    _end: float = 0.0

    def push(self, start_s: float, duration_s: float, level_dbfs: float) -> None:
        if level_dbfs < self.threshold_dbfs:
            if self._start is None:
                self._start = start_s
            self._end = start_s + duration_s
        else:
            self._close()

    def finish(self) -> list[tuple[float, float]]:
        self._close()
        return self.ranges

    def _close(self) -> None:
        if self._start is not None and self._end - self._start >= self.min_silence_s - 1e-6:
            self.ranges.append((round(self._start, 3), round(self._end, 3)))
        self._start = None


def frame_difference(current: npt.NDArray[np.uint8], previous: npt.NDArray[np.uint8]) -> float:
    """Mean absolute difference of two grey frames, 0-255."""
    import numpy as np

    return float(np.mean(np.abs(current.astype(np.int16) - previous.astype(np.int16))))


@dataclass(frozen=True)
class HighlightCandidate:
    """A stretch worth showing: usable directly as a ``VideoSegment``."""

    start: float
    end: float
    score: float
    reasons: tuple[str, ...]

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_segment(self, input_file: str, segment_id: str | None = None) -> object:
        from montage.video.segments import VideoSegment

        return VideoSegment(self.start, self.end, input_file, segment_id=segment_id)

    def to_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "end": self.end,
            "score": self.score,
            "reasons": list(self.reasons),
        }


def _zscores(values: Sequence[float]) -> list[float]:
    if not values:
        return []
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    std = math.sqrt(var)
    if std < 1e-9:
        return [0.0] * len(values)
    return [(v - mean) / std for v in values]


def rank_highlights(
    *,
    duration_s: float,
    window_s: float,
    audio_rms_db: Sequence[float],
    motion: Sequence[float],
    scene_changes: Sequence[float],
    silent_ranges: Sequence[tuple[float, float]],
    length_s: float = 5.0,
    max_candidates: int = 10,
) -> list[HighlightCandidate]:
    """Score sliding stretches of ``length_s`` and return the best non-overlapping ones.

    A stretch scores for loud audio and strong motion (z-scores against the whole file), for
    starting on a scene change (a natural entry point) and loses for silence.
    """
    if duration_s <= 0:
        return []
    length_s = min(length_s, duration_s)
    n = max(len(audio_rms_db), len(motion))
    audio_z = _zscores([a if a > FLOOR_DBFS else SILENCE_DBFS - 10 for a in audio_rms_db])
    motion_z = _zscores(list(motion))
    per_window = [
        (audio_z[i] if i < len(audio_z) else 0.0) + (motion_z[i] if i < len(motion_z) else 0.0)
        for i in range(n)
    ]
    step = max(window_s, 0.5)
    starts = [0.0]
    while starts[-1] + step + length_s <= duration_s + 1e-6:
        starts.append(round(starts[-1] + step, 6))
    starts.extend(c for c in scene_changes if c + min(1.0, length_s) <= duration_s)
    scored = [
        _score(
            s,
            length_s,
            duration_s,
            window_s,
            per_window,
            audio_rms_db,
            motion,
            scene_changes,
            silent_ranges,
        )
        for s in sorted(set(starts))
    ]
    return _pick_diverse(scored, sorted(scene_changes), max_candidates)


SAME_SCENE_PENALTY = 1.0
"""Score lost per already-chosen candidate in the same scene, so a reel shows several scenes."""


def _pick_diverse(
    scored: list[HighlightCandidate], cuts: list[float], max_candidates: int
) -> list[HighlightCandidate]:
    """Greedy: best adjusted score first, never overlapping, spread across scenes."""

    def scene_of(c: HighlightCandidate) -> int:
        return sum(1 for cut in cuts if cut <= c.start + 1e-6)

    chosen: list[HighlightCandidate] = []
    remaining = list(scored)
    while remaining and len(chosen) < max_candidates:
        used = [scene_of(c) for c in chosen]
        best = max(remaining, key=lambda c: c.score - SAME_SCENE_PENALTY * used.count(scene_of(c)))
        chosen.append(best)
        remaining = [c for c in remaining if c.end <= best.start or c.start >= best.end]
    return chosen


def _score(
    start: float,
    length_s: float,
    duration_s: float,
    window_s: float,
    per_window: Sequence[float],
    audio_rms_db: Sequence[float],
    motion: Sequence[float],
    scene_changes: Sequence[float],
    silent_ranges: Sequence[tuple[float, float]],
) -> HighlightCandidate:
    end = min(duration_s, start + length_s)
    first, last = int(start / window_s), max(int(start / window_s), math.ceil(end / window_s) - 1)
    idx = [i for i in range(first, last + 1) if i < len(per_window)]
    base = sum(per_window[i] for i in idx) / len(idx) if idx else 0.0
    reasons: list[str] = []
    loudest = max((audio_rms_db[i] for i in idx if i < len(audio_rms_db)), default=FLOOR_DBFS)
    if loudest > SILENCE_DBFS:
        reasons.append(f"audio up to {loudest:.1f} dBFS")
    peak_motion = max((motion[i] for i in idx if i < len(motion)), default=0.0)
    if peak_motion > 0:
        reasons.append(f"motion {peak_motion:.1f}")
    bonus = 0.0
    if any(abs(c - start) < 1e-6 for c in scene_changes):
        bonus += 0.5
        reasons.append(f"starts on a scene change at {start:.2f} s")
    silent = sum(max(0.0, min(end, b) - max(start, a)) for a, b in silent_ranges)
    if silent > 0:
        bonus -= 2.0 * silent / max(end - start, 1e-9)
        reasons.append(f"{silent:.1f} s silent")
    score = round(base + bonus, 4)
    return HighlightCandidate(round(start, 3), round(end, 3), score, tuple(reasons))
