"""``VideoSegment``: one validated ``[start, end)`` range of one media file.

Segments are value objects: immutable, hashable and checked when made, so a NaN or a
reversed range is reported where the user wrote it, not as an obscure ffmpeg failure
minutes later. Times are seconds from the file's start, as ``ffmpeg -ss`` counts them.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, replace
from numbers import Real
from pathlib import Path

# A segment ending this little past the media's end is clamped silently: container
# durations are rounded, and a user who asks for "to the end" often writes the rounded value.
END_TOLERANCE_S = 1e-3


class SegmentClampedWarning(UserWarning):
    """A segment reached past the end of its media and was shortened to fit."""


def _seconds(name: str, value: object) -> float:
    """``value`` as a finite float, or a ValueError that names it (bools and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    return seconds


@dataclass(frozen=True)
class VideoSegment:
    """The part of ``input_file`` from ``start_time`` (inclusive) to ``end_time`` (exclusive)."""

    start_time: float
    end_time: float
    input_file: str | os.PathLike[str]
    segment_id: str | int | None = None

    def __post_init__(self) -> None:
        start_s = _seconds("start_time", self.start_time)
        end_s = _seconds("end_time", self.end_time)
        if start_s < 0:
            raise ValueError(f"start_time must be >= 0, got {self.start_time!r}")
        if end_s <= start_s:
            raise ValueError(
                f"end_time ({self.end_time!r}) must be after start_time ({self.start_time!r})"
            )
        if not isinstance(self.input_file, (str, os.PathLike)):
            raise ValueError(f"input_file must be a path, got {self.input_file!r}")
        path = os.fspath(self.input_file)
        if not isinstance(path, str) or not path:
            raise ValueError(f"input_file must be a non-empty path, got {self.input_file!r}")
        object.__setattr__(self, "start_time", start_s)
        object.__setattr__(self, "end_time", end_s)
        object.__setattr__(self, "input_file", path)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.end_time - self.start_time

    @property
    def path(self) -> Path:
        """``input_file`` as a ``Path``."""
        return Path(os.fspath(self.input_file))

    def clamp_to(self, duration_s: float, *, strict: bool = False) -> VideoSegment:
        """This segment made to fit media ``duration_s`` long.

        Ends slightly past the end (within ``END_TOLERANCE_S``) are clamped silently; further
        ones are clamped with a ``SegmentClampedWarning``, or refused with ValueError when
        ``strict``. A segment starting at or after the end cannot be clamped and is refused.
        """
        media_s = _seconds("duration_s", duration_s)
        if self.start_time >= media_s:
            raise ValueError(
                f"segment {self._label()} starts at {self.start_time:g} s, at or after the end "
                f"of {self.input_file} ({media_s:g} s)"
            )
        if self.end_time <= media_s:
            return self
        if self.end_time - media_s > END_TOLERANCE_S:
            message = (
                f"segment {self._label()} ends at {self.end_time:g} s, past the end of "
                f"{self.input_file} ({media_s:g} s)"
            )
            if strict:
                raise ValueError(message)
            warnings.warn(f"{message}; clamped to {media_s:g} s", SegmentClampedWarning, 2)
        return replace(self, end_time=media_s)

    def _label(self) -> str:
        if self.segment_id is not None:
            return repr(self.segment_id)
        return f"[{self.start_time:g}, {self.end_time:g})"
