"""What is in a media file, read with PyAV by demuxing only (never decoding).

Probing must be cheap (milliseconds, a few MB) because every job starts with it, and it
must be safe on files we did not make: ``montage.ffmpeg.input_checks`` refuses missing,
unreadable and playlist-style inputs (hls, concat, dash, ... open *other* files or URLs) unless
the caller says ``trusted=True``, by content and name before opening and by the demuxer PyAV
picked after opening; and PyAV may only use the ``file`` protocol.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from montage.errors import (
    CorruptMediaError,
    NotMediaError,
    NoVideoStreamError,
    UnreadableMediaError,
)
from montage.ffmpeg.input_checks import (
    PLAYLIST_FORMATS,
    PLAYLIST_MAGIC,
    PLAYLIST_SUFFIXES,
    PathLike,
    corrupt_error,
    looks_like_container,
    refuse_format,
    refuse_playlist,
    validate_input_path,
)
from montage.ffmpeg.mp4boxes import mp4_rotations

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.stream import Stream

__all__ = [
    "PLAYLIST_FORMATS",
    "PLAYLIST_MAGIC",
    "PLAYLIST_SUFFIXES",
    "MediaInfo",
    "StreamInfo",
    "keyframe_times",
    "mp4_rotations",
    "probe",
    "refuse_playlist",
    "validate_input_path",
]

_TAIL_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class StreamInfo:
    """One stream's facts. ``rotation`` is ffmpeg's display-matrix angle (counter-clockwise
    degrees, as given to ``-display_rotation``) normalised to 0, 90, 180 or 270."""

    index: int
    kind: str  # "video" | "audio" | "subtitle" | "data"
    codec: str
    width: int | None = None
    height: int | None = None
    rotation: int = 0
    pix_fmt: str | None = None
    frame_rate: float | None = None
    time_base: Fraction | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    bit_rate: int | None = None
    frames: int | None = None
    language: str | None = None  # the stream's language tag (ISO 639-2, e.g. "eng"), if any


@dataclass(frozen=True)
class MediaInfo:
    """A whole file: container name (PyAV's, e.g. ``mov,mp4,m4a,3gp,3g2,mj2``), streams."""

    path: str
    container: str
    duration_s: float
    size_bytes: int
    bit_rate: int | None
    streams: tuple[StreamInfo, ...]

    @property
    def video(self) -> StreamInfo | None:
        """The first video stream (the one ffmpeg picks by default), or None."""
        return next((s for s in self.streams if s.kind == "video"), None)

    @property
    def audio(self) -> StreamInfo | None:
        """The first audio stream, or None."""
        return next((s for s in self.streams if s.kind == "audio"), None)

    @property
    def has_video(self) -> bool:
        return self.video is not None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (Fractions become "num/den" strings)."""
        data = asdict(self)
        data["streams"] = [
            {**s, "time_base": None if s["time_base"] is None else str(s["time_base"])}
            for s in data["streams"]
        ]
        return data


@contextmanager
def _open(path: Path, trusted: bool) -> Iterator[InputContainer]:
    """Open with PyAV through an explicit ``file:`` URL (a name like ``http:x`` or ``-x`` is a
    file) and only the file protocol unless trusted; map PyAV's errors to ours."""
    import av

    options = {} if trusted else {"protocol_whitelist": "file"}
    try:
        container = av.open("file:" + str(path), mode="r", options=options)
    except PermissionError as exc:
        raise UnreadableMediaError(str(path), f"{path}: cannot be opened ({exc})") from exc
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if looks_like_container(path):
            raise CorruptMediaError(
                str(path),
                f"{path} is a media file but cannot be read ({exc}); it is truncated or "
                f"damaged: copy it again or repair it (e.g. remux with ffmpeg)",
            ) from exc
        raise NotMediaError(
            str(path), f"{path} is not a video or audio file FFmpeg can read ({exc})"
        ) from exc
    try:
        yield container
    finally:
        container.close()


def _rate(stream: Stream) -> float | None:
    for name in ("average_rate", "guessed_rate", "base_rate"):
        value = getattr(stream, name, None)
        if value:
            return float(value)
    return None


def _language(stream: Stream) -> str | None:
    language = stream.metadata.get("language")
    return language if language and language != "und" else None


def _tag_name(stream: Stream) -> str:
    """A name for a stream no decoder knows: an mp4/mov ``tmcd`` track says "timecode"."""
    return "timecode" if "timecode" in stream.metadata else "unknown"


def _stream_info(stream: Stream, rotations: dict[int, int]) -> StreamInfo:
    kind = stream.type if stream.type in ("video", "audio", "subtitle") else "data"
    ctx: Any = stream.codec_context
    tb = stream.time_base
    common: dict[str, Any] = {
        "index": stream.index,
        "kind": kind,
        "codec": (ctx.name if ctx is not None else None) or _tag_name(stream),
        "time_base": Fraction(tb) if tb else None,
        "duration_s": float(stream.duration * tb) if stream.duration and tb else None,
        "bit_rate": (getattr(ctx, "bit_rate", None) or None) if ctx is not None else None,
        "frames": stream.frames or None,
        "language": _language(stream),
    }
    if kind == "video":
        return StreamInfo(
            **common,
            width=ctx.width or None,
            height=ctx.height or None,
            rotation=rotations.get(stream.id, 0),
            pix_fmt=ctx.pix_fmt,
            frame_rate=_rate(stream),
        )
    if kind == "audio":
        return StreamInfo(
            **common, sample_rate=ctx.sample_rate or None, channels=ctx.channels or None
        )
    return StreamInfo(**common)


def _duration_s(container: InputContainer, streams: tuple[StreamInfo, ...]) -> float:
    if container.duration and container.duration > 0:
        return container.duration / 1_000_000
    durations = [s.duration_s for s in streams if s.duration_s]
    return max(durations, default=0.0)


def _check_tail(path: Path, container: InputContainer, duration_s: float) -> None:
    """Raise CorruptMediaError when the last packets stop well before the stated duration.

    A file cut short keeps its header's duration; one seek near the end and a few packets
    read show whether the data is really there (mp4 index entries past EOF, mkv cut, ...).
    """
    import av

    names = set(container.format.name.split(","))
    if not container.streams or duration_s <= 0 or names & (PLAYLIST_FORMATS | {"mpegts"}):
        return
    stream = container.streams.video[0] if container.streams.video else container.streams[0]
    if not stream.time_base:
        return
    start_s = (container.start_time or 0) / 1_000_000
    target_s = start_s + max(0.0, duration_s - 2 * _TAIL_TOLERANCE_S)
    end_s = -math.inf
    try:
        container.seek(int(target_s / stream.time_base), stream=stream, backward=True)
    except (av.error.FFmpegError, OSError):
        return  # not seekable (a trusted playlist, a pipe-like format): cannot check cheaply
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                end_s = max(end_s, float((packet.pts + (packet.duration or 0)) * stream.time_base))
    except (av.error.FFmpegError, OSError) as exc:
        raise corrupt_error(path, f"reading its end failed: {exc}") from exc
    stated_end_s = start_s + duration_s
    if end_s < stated_end_s - max(_TAIL_TOLERANCE_S, 0.1 * duration_s):
        found = "no packets" if end_s == -math.inf else f"packets end at {end_s - start_s:.2f} s"
        raise corrupt_error(path, f"it says {duration_s:.2f} s but {found}")


def probe(path: PathLike, *, trusted: bool = False, require_video: bool = False) -> MediaInfo:
    """Container, duration, size, bit rate and per-stream facts of ``path`` (demux only)."""
    p = validate_input_path(path)
    if not trusted:
        refuse_playlist(p)
    with _open(p, trusted) as container:
        if not trusted:
            refuse_format(p, container)
        rotations = mp4_rotations(p) if "mp4" in container.format.name else {}
        streams = tuple(_stream_info(s, rotations) for s in container.streams)
        if not streams:
            raise NotMediaError(str(p), f"{p} has no audio or video streams")
        duration_s = _duration_s(container, streams)
        _check_tail(p, container, duration_s)
        info = MediaInfo(
            path=str(p),
            container=container.format.name,
            duration_s=duration_s,
            size_bytes=p.stat().st_size,
            bit_rate=container.bit_rate or None,
            streams=streams,
        )
    if require_video and not info.has_video:
        raise NoVideoStreamError(
            str(p),
            f"{p} has no video stream (only {', '.join(s.kind for s in streams)}); "
            f"give a video file",
        )
    video = info.video
    if require_video and video is not None and not (video.width and video.height):
        # a stream the demuxer announced but never saw a whole picture of: an MPEG-TS cut off
        # in its first frame (its tables come first), ...; decoding it would fail in ffmpeg
        raise corrupt_error(
            p,
            f"its video stream {video.index} ({video.codec}) has no complete picture, "
            f"so it cannot be decoded",
        )
    if require_video and _is_still_image(info):
        raise NotMediaError(
            str(p), f"{p} is a still image ({info.container}), not a video; give a video file"
        )
    return info


def _is_still_image(info: MediaInfo) -> bool:
    """A picture (png, jpeg, ... whatever its name says): an image demuxer and no duration."""
    names = set(info.container.split(","))
    image_demuxer = "image2" in names or any(n.endswith("_pipe") for n in names)
    return image_demuxer and info.duration_s <= 0


def keyframe_times(path: PathLike, *, trusted: bool = False) -> list[float]:
    """Seconds (from the file's start) of every keyframe of the first video stream, sorted.

    Read from packet flags and pts: no decoding, so a 10-minute 1080p file takes well
    under a second. Times are relative to the container start, as ``-ss`` counts them.
    """
    import av

    p = validate_input_path(path)
    if not trusted:
        refuse_playlist(p)
    with _open(p, trusted) as container:
        if not trusted:
            refuse_format(p, container)
        if not container.streams.video:
            raise NoVideoStreamError(str(p), f"{p} has no video stream, so it has no keyframes")
        stream = container.streams.video[0]
        tb = stream.time_base
        start_s = (container.start_time or 0) / 1_000_000
        times: list[float] = []
        try:
            for packet in container.demux(stream):
                if packet.is_keyframe and packet.pts is not None and tb is not None:
                    times.append(round(float(packet.pts * tb) - start_s, 6))
        except (av.error.FFmpegError, OSError) as exc:
            raise corrupt_error(p, f"demuxing failed after {len(times)} keyframes: {exc}") from exc
    return sorted(times)
