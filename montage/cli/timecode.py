"""Parsing of the times and ranges people type: ``90``, ``1:30``, ``01:02:03.250``, ``10-40``."""

from __future__ import annotations

import math
import re

_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")


def parse_time(text: str) -> float:
    """Seconds from ``SS[.mmm]``, ``MM:SS[.mmm]`` or ``HH:MM:SS[.mmm]``; ValueError otherwise."""
    value = text.strip()
    match = _CLOCK.match(value)
    if match:
        hours, minutes, seconds = match.groups()
        if (int(minutes) >= 60 and hours is not None) or float(seconds) >= 60:
            raise ValueError(f"invalid time {text!r}: minutes and seconds must be below 60")
        return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    try:
        seconds_value = float(value)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use seconds (90.5), MM:SS (1:30) or HH:MM:SS.mmm"
        ) from None
    if not math.isfinite(seconds_value) or seconds_value < 0:
        raise ValueError(f"invalid time {text!r}: must be a finite number of seconds >= 0")
    return seconds_value


def parse_range(text: str) -> tuple[float, float]:
    """``START-END`` (each a time as above) -> (start_s, end_s) with start < end."""
    parts = text.split("-")
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise ValueError(f"invalid segment {text!r}: use START-END, e.g. 10-40 or 1:00-1:30")
    start, end = parse_time(parts[0]), parse_time(parts[1])
    if not start < end:
        raise ValueError(f"invalid segment {text!r}: the end must be after the start")
    return start, end


def format_time(seconds: float) -> str:
    """``H:MM:SS.mmm`` (or ``M:SS.mmm`` under an hour) for display."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = rest / 1000
    return f"{hours}:{minutes:02d}:{secs:06.3f}" if hours else f"{minutes}:{secs:06.3f}"
