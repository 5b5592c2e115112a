"""Subtitle and data streams of an edit: which are kept, cut to the segments, muxed in.

Text subtitles (``mov_text``, ``subrip``, ``ass``, ``webvtt``) are kept in every mode: each
segment's cues are read (a small subtitle-only demux per segment, from ``LOOKBACK_S`` before
its start so a cue already on screen at the cut is seen), clipped to the segment, moved to
where the segment sits in the output, and the whole track is muxed into the finished video in
one stream-copy pass. Cues are carried as ASS events (10 ms steps), so an ``ass`` source keeps
its styles in an mkv; an mp4/mov output gets ``mov_text``, an mkv ``ass`` or ``srt`` (as the
source), a webm ``webvtt``.

Output subtitle track k is the k-th subtitle stream of every source. Where that cannot be kept
(a bitmap subtitle, a source without a k-th subtitle stream, an output format without text
subtitles, a track with no cue inside the cuts) it is dropped with a warning naming the stream;
so are data streams (timecode ``tmcd`` and the like: they are not cut). Never an ffmpeg error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from montage.ffmpeg.probe import MediaInfo
from montage.ffmpeg.streams import (
    MP4_LIKE,
    TEXT_SUBTITLE_CODECS,
    data_warnings,
    label,
    text_subtitle_codec,
)
from montage.video.pieces import base_args, file_url
from montage.video.runner import Job, WorkDir

LOOKBACK_S = 30.0  # a cue that started this long before a cut is still found
EXTRACT_WEIGHT = 0.002
_TIME = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})(?:\.(\d{1,3}))?$")


@dataclass(frozen=True)
class Track:
    """One output subtitle track: the ``position``-th subtitle stream of every source."""

    position: int
    codec: str  # the output's subtitle codec
    language: str | None


@dataclass(frozen=True)
class Piece:
    """One segment as the subtitles see it: source seconds (from the container start) and
    where the segment starts in the output."""

    path: Path
    start_offset_s: float  # the source container's start time (raw timestamps = this + t)
    start_s: float
    end_s: float
    out_start_s: float


@dataclass(frozen=True)
class StreamChoice:
    tracks: tuple[Track, ...]
    warnings: tuple[str, ...]


def choose(sources: Sequence[MediaInfo], out: Path) -> StreamChoice:
    """Which subtitle tracks ``out`` gets from ``sources`` (distinct, in order of use), and a
    warning for every subtitle or data stream that is not kept."""
    warnings = [warning for info in sources for warning in data_warnings(info)]
    subs = [[s for s in info.streams if s.kind == "subtitle"] for info in sources]
    tracks: list[Track] = []
    for k, first in enumerate(subs[0]):
        column = [
            (info, streams[k] if k < len(streams) else None) for info, streams in zip(sources, subs)
        ]
        codec = text_subtitle_codec(out, first.codec)
        bitmap = [
            (i, s) for i, s in column if s is not None and s.codec not in TEXT_SUBTITLE_CODECS
        ]
        missing = [i for i, s in column if s is None]
        if bitmap:
            why = f"{bitmap[0][1].codec} is a bitmap subtitle; only text subtitles are cut"
        elif missing:
            why = f"{Path(missing[0].path).name} has no subtitle stream {k + 1} to join it with"
        elif codec is None:
            why = f"a {out.suffix} output cannot hold text subtitles (use .mkv or .mp4)"
        else:
            tracks.append(Track(k, codec, first.language))
            continue
        warnings += [f"{label(s, i)} not kept: {why}" for i, s in column if s is not None]
    for info, streams in zip(sources[1:], subs[1:]):
        for stream in streams[len(subs[0]) :]:
            warnings.append(
                f"{label(stream, info)} not kept: {Path(sources[0].path).name} (the first "
                f"source) has no subtitle stream {streams.index(stream) + 1}"
            )
    return StreamChoice(tuple(tracks), tuple(warnings))


def extract_cmd(ffmpeg: str, piece: Piece, position: int, out: Path) -> list[str]:
    """The ``position``-th subtitle stream of ``piece``'s source around the piece, as ASS with
    the source's own timestamps (``-copyts``)."""
    seek_s = max(0.0, piece.start_offset_s + piece.start_s - LOOKBACK_S)
    read_s = piece.start_offset_s + piece.end_s - seek_s + 1.0
    cmd = [*base_args(ffmpeg), "-copyts"]
    cmd += ["-ss", f"{seek_s:.6f}"] if seek_s > 0 else []
    cmd += ["-t", f"{read_s:.6f}", "-i", file_url(piece.path)]
    return [*cmd, "-map", f"0:s:{position}", "-c:s", "ass", "-f", "ass", str(out)]


def extract_jobs(
    ffmpeg: str, work: WorkDir, tracks: Sequence[Track], pieces: Sequence[Piece]
) -> tuple[list[Job], list[list[Path]]]:
    """One small job per piece and track; ``files[t][i]`` is track t's cues of piece i."""
    jobs: list[Job] = []
    files: list[list[Path]] = []
    for track in tracks:
        row = []
        for piece in pieces:
            path = work.name(f"subs{track.position}_", ".ass")
            cmd = extract_cmd(ffmpeg, piece, track.position, path)
            jobs.append(Job(cmd, f"subtitles-{path.stem}", EXTRACT_WEIGHT, 0.0))
            row.append(path)
        files.append(row)
    return jobs, files


def parse_time(text: str) -> float:
    """ASS ``H:MM:SS.cc`` as seconds."""
    match = _TIME.match(text.strip())
    if match is None:
        raise ValueError(f"not an ASS time: {text!r}")
    h, m, s, frac = match.groups()
    return int(h) * 3600 + int(m) * 60 + int(s) + (int(frac.ljust(3, "0")) / 1000 if frac else 0)


def format_time(seconds: float) -> str:
    cs = max(0, round(seconds * 100))
    return f"{cs // 360000}:{cs // 6000 % 60:02d}:{cs // 100 % 60:02d}.{cs % 100:02d}"


def split_ass(text: str) -> tuple[str, list[str]]:
    """An ASS file as its header (everything before the first event) and its Dialogue lines."""
    header: list[str] = []
    events: list[str] = []
    for line in text.splitlines():
        if line.startswith("Dialogue:"):
            events.append(line)
        elif not events:
            header.append(line)
    return "\n".join(header) + "\n", events


def cut_events(events: Sequence[str], start_s: float, end_s: float, shift_s: float) -> list[str]:
    """The events showing within ``[start_s, end_s)``, clipped to it and moved by ``shift_s``."""
    kept = []
    for line in events:
        fields = line[len("Dialogue:") :].split(",", 9)
        if len(fields) < 10:
            continue
        a, b = parse_time(fields[1]), parse_time(fields[2])
        a, b = max(a, start_s), min(b, end_s)
        if b - a < 0.005:
            continue
        fields[1], fields[2] = format_time(a + shift_s), format_time(b + shift_s)
        if parse_time(fields[2]) > parse_time(fields[1]):
            kept.append("Dialogue:" + ",".join(fields))
    return kept


def build_track(files: Sequence[Path], pieces: Sequence[Piece]) -> str | None:
    """One output track's ASS text from its per-piece extractions; None when no cue is left."""
    header = ""
    events: list[tuple[float, str]] = []
    for path, piece in zip(files, pieces):
        text = path.read_text(encoding="utf-8", errors="replace")
        head, lines = split_ass(text)
        header = header or head
        first_s = piece.start_offset_s + piece.start_s
        last_s = piece.start_offset_s + piece.end_s
        for line in cut_events(lines, first_s, last_s, piece.out_start_s - first_s):
            events.append((parse_time(line.split(",", 2)[1]), line))
    if not events or not header.strip():
        return None
    events.sort(key=lambda e: e[0])
    return header + "\n".join(line for _, line in events) + "\n"


def mux_cmd(
    ffmpeg: str,
    video: Path,
    tracks: Sequence[tuple[Track, Path]],
    out: Path,
    *,
    timescale: int | None,
) -> list[str]:
    """``video`` (every video and audio stream copied) with the subtitle tracks added."""
    cmd = [*base_args(ffmpeg), "-i", file_url(video)]
    for _, path in tracks:
        cmd += ["-i", file_url(path)]
    cmd += ["-map", "0:v", "-map", "0:a?"]
    for n in range(len(tracks)):
        cmd += ["-map", f"{n + 1}:s:0"]
    cmd += ["-c", "copy"]
    for n, (track, _) in enumerate(tracks):
        cmd += [f"-c:s:{n}", track.codec]
        if track.language:
            cmd += [f"-metadata:s:s:{n}", f"language={track.language}"]
    if out.suffix.lower() in MP4_LIKE:
        cmd += ["-write_tmcd", "0"]  # as copy mode: no timecode from the video's tag
        if timescale:
            cmd += ["-video_track_timescale", str(timescale)]
    return [*cmd, file_url(out)]
