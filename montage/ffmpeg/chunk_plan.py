"""Where a video is cut into chunks: its keyframe index and the chunk plan made from it.

Pure apart from :func:`scan_video`, which demuxes (no decode). Cuts are made at keyframe
*packet indices*, which is what the segment muxer's ``-segment_frames`` counts, so a plan made
here is exact whatever the timestamps look like (see ``montage.ffmpeg.chunks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from montage.errors import ConfigError, NoVideoStreamError

__all__ = [
    "MAX_CHUNK_S",
    "MIN_CHUNK_S",
    "SHORT_FILE_CHUNKS",
    "ChunkPlan",
    "VideoIndex",
    "default_chunk_duration_s",
    "plan_chunks",
    "scan_video",
]

MIN_CHUNK_S = 10.0  # shorter chunks cost more in per-job startup than they save
MAX_CHUNK_S = 60.0  # longer chunks make a failure expensive and progress coarse
SHORT_FILE_CHUNKS = 4  # a file under 4 x MAX_CHUNK_S is cut into about this many chunks


@dataclass(frozen=True)
class VideoIndex:
    """The first video stream's packets as the segment muxer counts them (decode order)."""

    frame_count: int
    keyframes: tuple[tuple[int, float], ...]  # (packet index, seconds from the first frame)
    duration_s: float
    frame_rate: float | None


@dataclass(frozen=True)
class ChunkPlan:
    """Where the video is cut: the packet index (a keyframe) each chunk starts at."""

    start_frames: tuple[int, ...]
    start_times_s: tuple[float, ...]
    frame_count: int

    @property
    def chunks(self) -> int:
        return len(self.start_frames)

    def frames_per_chunk(self) -> tuple[int, ...]:
        ends = (*self.start_frames[1:], self.frame_count)
        return tuple(end - start for start, end in zip(self.start_frames, ends, strict=True))


def default_chunk_duration_s(duration_s: float) -> float:
    """About a minute per chunk; a short file gets a few chunks rather than one."""
    return max(MIN_CHUNK_S, min(MAX_CHUNK_S, duration_s / SHORT_FILE_CHUNKS))


def scan_video(path: str | Path) -> VideoIndex:
    """Count the first video stream's packets and note its keyframes (demux only, no decode).

    The packet *indices* are what ``-segment_frames`` counts, so cuts made from them are exact
    whatever the timestamps look like.
    """
    import av

    url = "file:" + str(Path(path).resolve())
    with av.open(url, options={"protocol_whitelist": "file"}) as container:
        if not container.streams.video:
            raise NoVideoStreamError(str(path), f"{path} has no video stream to chunk")
        stream = container.streams.video[0]
        tb = stream.time_base
        count, keyframes, first_pts, end_pts = 0, [], None, None
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is not None:
                first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                end = packet.pts + (packet.duration or 0)
                end_pts = end if end_pts is None else max(end_pts, end)
            if packet.is_keyframe:
                keyframes.append((count, packet.pts))
            count += 1
        rate = float(stream.average_rate) if stream.average_rate else None
    origin = first_pts or 0
    span = float((end_pts - origin) * tb) if end_pts is not None and tb is not None else 0.0
    times = tuple(
        (i, float((pts - origin) * tb) if pts is not None and tb else 0.0) for i, pts in keyframes
    )
    return VideoIndex(count, times, span, rate)


def plan_chunks(index: VideoIndex, chunk_duration_s: float) -> ChunkPlan:
    """Start a chunk at the first keyframe at least ``chunk_duration_s`` after the last start.

    A tail shorter than a quarter chunk is merged into the previous chunk.
    """
    if chunk_duration_s <= 0:
        raise ConfigError(f"chunk_duration must be > 0 seconds, got {chunk_duration_s}")
    starts, times = [0], [0.0]
    for frame, time_s in index.keyframes:
        if 0 < frame < index.frame_count and time_s - times[-1] >= chunk_duration_s:
            starts.append(frame)
            times.append(time_s)
    if len(starts) > 1 and index.duration_s - times[-1] < chunk_duration_s / 4:
        starts.pop()
        times.pop()
    return ChunkPlan(tuple(starts), tuple(times), index.frame_count)
