"""Where each cut can go: a frame/keyframe index of a source and the plans built on it.

The editor never guesses timestamps: every cut is snapped to real frame times read from the
source's packets (PyAV demux, no decode: well under a second for a 10-minute 1080p file, and
a few hundred KB of floats). Ranges are half-open frame-index intervals ``[first, end)``, so a
segment's frame count is ``end - first`` and the sum over pieces is exact by construction.
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from montage.video.segments import VideoSegment

# User times are decimal seconds; frame times are rationals turned into floats. A frame this
# close before a requested time counts as "at" it.
TIME_EPSILON_S = 1e-4
SMART_CODECS = frozenset({"h264", "hevc"})
# H.264/HEVC reorder at most 16 frames: a frame's packet is this close to it in decode order.
MAX_REORDER_FRAMES = 18


# What packets joined into one stream must share (rotation: a stream has one display matrix)
_COPY_KEYS = (
    "codec",
    "width",
    "height",
    "pix_fmt",
    "profile",
    "has_audio",
    "sample_rate",
    "rotation",
)


@dataclass(frozen=True)
class SourceFormat:
    """What two sources must share for their packets to be joined without re-encoding."""

    codec: str
    width: int
    height: int
    pix_fmt: str | None
    profile: str | None
    level: int | None
    fps: Fraction
    has_b_frames: bool
    has_audio: bool
    sample_rate: int | None
    channels: int | None
    audio_bit_rate: int | None
    time_base: Fraction
    rotation: int = 0  # display-matrix angle (as ``-display_rotation``): 0, 90, 180 or 270

    def copy_compatible(self, other: SourceFormat) -> bool:
        """True when packets of both can share one output stream (same decoder setup)."""
        return all(getattr(self, k) == getattr(other, k) for k in _COPY_KEYS) and (
            self.channels == other.channels
        )

    def displayed(self) -> SourceFormat:
        """This format as a player shows it (ffmpeg's autorotation applied): rotation 0."""
        from dataclasses import replace

        if self.rotation in (90, 270):
            return replace(self, width=self.height, height=self.width, rotation=0)
        return replace(self, rotation=0)

    def same_picture(self, other: SourceFormat) -> bool:
        """True when no scale/pad/fps/format conversion is needed to match ``other``."""
        return (self.width, self.height, self.pix_fmt, self.fps) == (
            other.width,
            other.height,
            other.pix_fmt,
            other.fps,
        )


@dataclass(frozen=True)
class SourceIndex:
    """Frame and keyframe times of one source, relative to its start (as ``-ss`` counts)."""

    path: Path
    fmt: SourceFormat
    start_offset_s: float  # raw timestamp of time 0 (what concat ``inpoint`` compares with)
    end_s: float  # end of the last frame
    frame_times_s: array[float]
    keyframe_indices: tuple[int, ...]
    frame_dts_s: array[float]  # decode time of each frame's packet (relative), in pts order

    @property
    def frame_count(self) -> int:
        return len(self.frame_times_s)

    @property
    def frame_period_s(self) -> float:
        return 1.0 / float(self.fmt.fps)

    def gap_before_s(self, time_s: float) -> float:
        """Time from the frame before the one at/after ``time_s`` to it (the average period
        at the start): frame gaps of variable-rate sources differ from the average."""
        index = self.first_frame_at_or_after(time_s)
        if 0 < index < self.frame_count:
            return self.frame_times_s[index] - self.frame_times_s[index - 1]
        return self.frame_period_s

    def seconds(self, first: int, frames: int) -> float:
        """Presentation length of ``frames`` frames from index ``first``: their real timing
        where it differs from ``frames / fps`` (variable-rate sources), else that exactly
        (within a time-base tick: timestamps in milliseconds round each end)."""
        real = self.time_of(first + frames) - self.time_of(first)
        nominal = float(frames / self.fmt.fps)
        return nominal if abs(real - nominal) <= float(self.fmt.time_base) + 1e-6 else real

    def time_of(self, index: int) -> float:
        """Presentation time of frame ``index``; ``frame_count`` means the end of the media."""
        return self.end_s if index >= self.frame_count else self.frame_times_s[index]

    def first_frame_at_or_after(self, time_s: float) -> int:
        return bisect.bisect_left(self.frame_times_s, time_s - TIME_EPSILON_S)

    def is_keyframe(self, index: int) -> bool:
        pos = bisect.bisect_left(self.keyframe_indices, index)
        return pos < len(self.keyframe_indices) and self.keyframe_indices[pos] == index

    def keyframe_at_or_before(self, index: int) -> int:
        pos = bisect.bisect_right(self.keyframe_indices, index) - 1
        return self.keyframe_indices[max(pos, 0)]

    def keyframe_at_or_after(self, index: int) -> int:
        """The first keyframe index >= ``index``, or ``frame_count`` when there is none."""
        pos = bisect.bisect_left(self.keyframe_indices, index)
        return self.keyframe_indices[pos] if pos < len(self.keyframe_indices) else self.frame_count

    def keyframe_dts(self, index: int) -> float:
        return self.frame_dts_s[index]

    def decodes_alone_before(self, index: int) -> bool:
        """True when the frames before ``index`` are all decoded before any frame from
        ``index`` on: a stream copy that stops there needs no packet of a later frame.

        Without B-frames every frame qualifies; with them only the ends of the reordered
        runs do (after each P-frame's B-frames). Looks ``MAX_REORDER_FRAMES`` either side."""
        if index <= 0 or index >= self.frame_count:
            return True
        dts = self.frame_dts_s
        before = max(dts[max(0, index - MAX_REORDER_FRAMES) : index])
        return before < self.next_dts(index)

    def next_dts(self, index: int) -> float:
        """Decode time of the first packet, in decode order, of the frames from ``index`` on."""
        return min(self.frame_dts_s[index : index + MAX_REORDER_FRAMES])

    def copy_end_at_or_after(self, index: int) -> int:
        """The first frame index >= ``index`` where a stream copy can stop (see
        ``decodes_alone_before``), or ``frame_count``."""
        while index < self.frame_count and not self.decodes_alone_before(index):
            index += 1
        return index

    def decode_lead_s(self, keyframe: int) -> float:
        """How far decoding runs ahead of presentation from ``keyframe`` on: its pts - dts,
        the reorder delay of B-frames (0 without them; 2 frames for x264's default)."""
        return max(0.0, self.time_of(keyframe) - self.keyframe_dts(keyframe))


def _fps(stream: object) -> Fraction:
    for name in ("average_rate", "guessed_rate", "base_rate"):
        rate = getattr(stream, name, None)
        if rate:
            return Fraction(rate)
    return Fraction(25)


def _format(container: object, path: str | Path) -> SourceFormat:
    from montage.ffmpeg.mp4boxes import mp4_rotations

    video = container.streams.video[0]  # type: ignore[attr-defined]
    is_mp4 = "mp4" in container.format.name  # type: ignore[attr-defined]
    rotation = mp4_rotations(Path(path)).get(video.id, 0) if is_mp4 else 0
    cc = video.codec_context
    audio = container.streams.audio[0] if container.streams.audio else None  # type: ignore[attr-defined]
    level = getattr(cc, "level", None)
    return SourceFormat(
        codec=cc.name,
        width=cc.width,
        height=cc.height,
        pix_fmt=cc.pix_fmt,
        profile=cc.profile or None,
        level=level if isinstance(level, int) and level > 0 else None,
        fps=_fps(video),
        has_b_frames=bool(cc.has_b_frames),
        has_audio=audio is not None,
        sample_rate=audio.codec_context.sample_rate if audio is not None else None,
        channels=audio.codec_context.channels if audio is not None else None,
        audio_bit_rate=(audio.bit_rate or None) if audio is not None else None,
        time_base=Fraction(video.time_base),
        rotation=rotation,
    )


def build_index(
    path: str | Path,
    windows: list[tuple[float, float]] | None = None,
    *,
    duration_s: float | None = None,
) -> SourceIndex:
    """Demux ``path``'s first video stream (packets only) into a ``SourceIndex``.

    With ``windows`` (``(start_s, end_s)`` of the segments), only the packets from the
    keyframe before each start to a little past each end are read: the cost follows the
    edit, not the file (three 10 s cuts of a 10-minute file read ~5 % of it). The index then
    holds those frames only; every segment's range is contiguous in it. The caller validates
    the path first (``probe``), so errors here mean a damaged file; ``duration_s`` is the
    probed duration (the end when no window reaches it).
    """
    import av

    with av.open(str(path), options={"protocol_whitelist": "file"}) as container:
        fmt = _format(container, path)
        start_raw = (container.start_time or 0) / 1_000_000
        packets: dict[float, tuple[bool, float]] = {}
        reached_eof, last_duration = False, 0.0
        for window in _merge(windows) if windows else [None]:
            eof, duration = _read_window(container, window, start_raw, packets)
            if eof:
                reached_eof, last_duration = True, duration
    if not packets:
        raise ValueError(f"{path} has no video frames")
    frames = array("d", sorted(packets))
    end_s = frames[-1] + (last_duration or 1.0 / float(fmt.fps))
    if not reached_eof:
        end_s = max(end_s, duration_s if duration_s is not None else _container_end_s(path))
    kf_idx = tuple(i for i, t in enumerate(frames) if packets[t][0])
    dts = array("d", (packets[t][1] for t in frames))
    return SourceIndex(Path(path), fmt, start_raw, end_s, frames, kf_idx, dts)


# Read this far past a window's end: covers B-frame reordering (x264 allows 16 B-frames,
# 0.53 s at 30 fps) so every frame presented before the end has been seen.
WINDOW_MARGIN_S = 0.6


def _merge(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in sorted(windows):
        if merged and a <= merged[-1][1] + WINDOW_MARGIN_S:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _read_window(
    container: Any,
    window: tuple[float, float] | None,
    start_raw: float,
    packets: dict[float, tuple[bool, float]],
) -> tuple[bool, float]:
    """Add ``{pts: (is_keyframe, dts)}`` of the window's packets; return (hit EOF, last
    packet's duration). Seeks to the keyframe at or before the window's start."""
    video = container.streams.video[0]
    tb = float(video.time_base)  # floats: Fraction arithmetic per packet costs more than demuxing
    if window is not None and window[0] > 0:
        container.seek(int((window[0] + start_raw) / tb), stream=video, backward=True)
    stop_s = math.inf if window is None else window[1] + WINDOW_MARGIN_S
    duration_s, first = 0.0, True
    for packet in container.demux(video):
        if packet.pts is None:
            continue
        pts_s = float(packet.pts * tb) - start_raw
        dts_s = float((packet.dts if packet.dts is not None else packet.pts) * tb) - start_raw
        if first and window is not None and window[0] > 0 and not packet.is_keyframe:
            container.seek(0, stream=video, backward=True)  # seek missed a keyframe: rescan
            return _read_window(container, (0.0, window[1]), start_raw, packets)
        first = False
        packets[pts_s] = (bool(packet.is_keyframe), dts_s)
        duration_s = float(packet.duration * tb) if packet.duration else 0.0
        if dts_s > stop_s:
            return False, duration_s
    return True, duration_s


def _container_end_s(path: str | Path) -> float:
    from montage.ffmpeg.probe import probe

    return probe(path).duration_s


@dataclass(frozen=True)
class FrameRange:
    """Frames ``[first, end)`` of one source."""

    source: SourceIndex
    first: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.first

    @property
    def start_s(self) -> float:
        return self.source.time_of(self.first)

    @property
    def end_s(self) -> float:
        return self.source.time_of(self.end)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def snap(segment: VideoSegment, source: SourceIndex) -> FrameRange:
    """The frames whose presentation time lies in ``[start, end)`` (frame-accurate cut)."""
    first = source.first_frame_at_or_after(segment.start_time)
    end = source.first_frame_at_or_after(segment.end_time)
    if segment.end_time >= source.end_s - TIME_EPSILON_S:
        end = source.frame_count
    if end <= first:
        raise ValueError(
            f"segment [{segment.start_time:g}, {segment.end_time:g}) of {segment.input_file} "
            f"contains no frame (frames there are "
            f"{source.gap_before_s(segment.end_time) * 1000:.1f} ms apart)"
        )
    return FrameRange(source, first, end)


def snap_to_keyframe(frames: FrameRange) -> FrameRange:
    """Copy mode: the start moved back to the keyframe at or before it, and the end moved
    forward to the first frame a stream copy can stop before (``copy_end_at_or_after``).

    Without B-frames the end stays; with them it moves past the rest of a reordered run (at
    most the source's B-frame count, 3 frames with x264's default), because the frames just
    before the requested end are predicted from the P-frame after it: stopping earlier would
    leave them undecodable or drop them. So copy output always covers the requested range."""
    src = frames.source
    return FrameRange(
        src, src.keyframe_at_or_before(frames.first), src.copy_end_at_or_after(frames.end)
    )


def on_keyframe_grid(frames: FrameRange) -> bool:
    """True when a stream copy cuts exactly here: start on a keyframe (within half a frame,
    which snapping already guarantees) and end at the media end or on a keyframe."""
    src = frames.source
    return src.is_keyframe(frames.first) and (
        frames.end >= src.frame_count or src.is_keyframe(frames.end)
    )


@dataclass(frozen=True)
class SmartPlan:
    """One segment cut smartly: re-encode ``head`` and ``tail``, stream-copy ``middle``."""

    head: FrameRange | None
    middle: FrameRange | None
    tail: FrameRange | None


def plan_smart(frames: FrameRange) -> SmartPlan:
    """Split at the first keyframe at/after the start and the last keyframe at/before the end.

    Copying stops at a keyframe (not at the requested end) because with B-frames the frames
    just before the end may reference frames after it; re-encoding that short tail is exact.
    """
    src = frames.source
    k_first = src.keyframe_at_or_after(frames.first)
    k_last = frames.end if frames.end >= src.frame_count else src.keyframe_at_or_before(frames.end)
    if k_first >= k_last:
        return SmartPlan(frames, None, None)

    def part(a: int, b: int) -> FrameRange | None:
        return FrameRange(src, a, b) if b > a else None

    return SmartPlan(part(frames.first, k_first), part(k_first, k_last), part(k_last, frames.end))


def copy_decode_lead_s(plans: list[SmartPlan]) -> float:
    """The largest decode lead of the GOPs these plans copy (0 when none is copied).

    Smart mode gives every piece this lead, so decode times run one frame apart across each
    seam (``montage.video.assemble.build_pieces``)."""
    leads = [p.middle.source.decode_lead_s(p.middle.first) for p in plans if p.middle]
    return max(leads, default=0.0)


def copy_outpoint_s(frames: FrameRange) -> float | None:
    """Concat-demuxer ``outpoint`` (raw timestamps) that ends a stream copy at ``frames.end``.

    The demuxer stops at the first packet whose *decode* time reaches the outpoint, so this
    is the decode time of the first packet (in decode order) of the frames from ``end`` on:
    with B-frames it precedes ``end``'s presentation time, and the frames before ``end`` go
    out whole only if ``end`` is a copy end (``SourceIndex.decodes_alone_before``; keyframes
    of closed GOPs are). None = to the end.
    """
    src = frames.source
    if frames.end >= src.frame_count:
        return None
    return src.next_dts(frames.end) + src.start_offset_s


def can_smart_cut(sources: list[SourceIndex]) -> str | None:
    """Why these sources cannot be smart-cut together, or None when they can."""
    first = sources[0].fmt
    if first.codec not in SMART_CODECS:
        return f"codec {first.codec} is not h264/hevc"
    for other in sources[1:]:
        if not first.copy_compatible(other.fmt) or not math.isclose(
            float(first.fps), float(other.fmt.fps)
        ):
            return f"{other.path} has a different format from {sources[0].path}"
    return None
