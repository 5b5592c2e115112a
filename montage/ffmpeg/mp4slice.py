"""A small MP4 header describing only a slice of a file's samples, for one ffmpeg child.

Why: the mov demuxer loads the whole sample index (~13 MiB per hour of 1080p30 + AAC) in every
process that opens the file. A child that decodes a few minutes opens instead
``concat:HEADER|subfile,,start,S,end,E,,:SOURCE``: ``HEADER`` (ftyp + a moov for the slice's
video and first audio samples + an mdat header) followed by the source's bytes ``[S, E)``, in
which the slice's samples lie; the moov's sample offsets point into that span. Its index is
bounded by the slice, not the file.

Timestamps are the source's: each track keeps its edit's media start and gets an empty edit
(a delay) as long as the slice's first decode time, so that ffmpeg (``-advanced_editlist 0``)
gives every sample the timestamp it has in the source; seek with ``-seek_timestamp 1`` and
``source_start_s``. The video starts on a
sync sample at least ``lead_s`` before the first time needed, so ffmpeg's seek in the slice
lands on the same keyframe as in the source, and the audio starts before it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from montage.ffmpeg.mp4index import Movie, Track, Unsupported

LEAD_S = 1.0  # video decoded before the first needed time: ffmpeg's seek must find its keyframe
TAIL_S = 1.0  # samples kept after the last needed time (B-frame reorder, audio blocks)
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Slice:
    """Samples ``[a, b)`` of the video and (if any) audio track, in source bytes ``span``."""

    video: tuple[int, int]
    audio: tuple[int, int] | None
    span: tuple[int, int]


def plan_slice(movie: Movie, fh: Any, first_s: float, last_s: float | None) -> Slice:
    """The slice holding everything ffmpeg reads to decode ``[first_s, last_s]`` (None: to the
    end) after seeking to ``first_s``."""
    video = movie.video
    assert video.stss is not None
    sync_times = video.seconds(video.stss)
    before = np.nonzero(sync_times <= first_s - LEAD_S)[0]
    v_start = int(video.stss[before[-1]]) if len(before) else 0
    if v_start == 0 and (not len(video.stss) or video.stss[0] != 0):
        raise Unsupported("the video track does not start with a sync sample")
    v_end = video.sample_count if last_s is None else video.first_after(last_s + TAIL_S)
    if v_end <= v_start:
        raise Unsupported("an empty video slice")
    ranges = [(video, v_start, v_end)]
    audio = None
    if movie.audio is not None:
        track = movie.audio
        a_from = float(video.seconds([v_start])[0]) - LEAD_S
        a_start = 0 if v_start == 0 else max(0, track.first_after(a_from) - 1)
        a_end = track.sample_count if last_s is None else track.first_after(last_s + TAIL_S)
        if a_end <= a_start:  # the child maps 0:a:0: a slice must keep the track
            raise Unsupported("no audio samples in the slice (the audio track ends earlier)")
        audio = (a_start, a_end)
        ranges.append((track, a_start, a_end))
    lows, highs = [], []
    for track, a, b in ranges:
        offsets, sizes = track.offsets(fh, a, b)
        lows.append(int(offsets.min()))
        highs.append(int((offsets + sizes).max()))
    return Slice((v_start, v_end), audio, (min(lows), max(highs)))


def write_header(movie: Movie, fh: Any, part: Slice, out: Path) -> int:
    """Write the slice's header to ``out``; returns its length (bytes). The source's span
    ``part.span`` must follow it in the stream the child reads."""
    tracks: list[tuple[Track, int, int]] = [(movie.video, *part.video)]
    if part.audio is not None and movie.audio is not None:
        tracks.append((movie.audio, *part.audio))
    scale = math.lcm(*(t.timescale for t, _a, _b in tracks))
    if scale > _U32:
        raise Unsupported("no movie timescale fits both tracks")
    tables = [_tables(track, fh, a, b) for track, a, b in tracks]
    head = movie.ftyp
    # The moov's size does not depend on the offsets' values: lay it out once to measure it.
    size = len(_moov(movie, tracks, tables, scale, 0))
    data_start = len(head) + size + 16
    moov = _moov(movie, tracks, tables, scale, data_start - part.span[0])
    assert len(moov) == size
    mdat = struct.pack(">I4sQ", 1, b"mdat", 16 + part.span[1] - part.span[0])
    with open(out, "wb") as dst:
        dst.write(head + moov + mdat)
    return data_start


def source_start_s(movie: Movie) -> float:
    """ffmpeg's ``start_time`` of the source (the earliest first timestamp of its tracks)."""
    return min(movie.start_pts.values())


@dataclass
class _Tables:
    sizes: Any
    offsets: Any
    deltas: Any
    composition: Any | None
    sync: Any | None
    first_dts: int


def _tables(track: Track, fh: Any, a: int, b: int) -> _Tables:
    offsets, sizes = track.offsets(fh, a, b)
    sync = track.sync_samples(a, b)
    return _Tables(
        sizes=sizes,
        offsets=offsets,
        deltas=track.deltas(a, b),
        composition=track.composition(a, b),
        sync=None if sync is None else sync - a + 1,
        first_dts=int(track.dts_at(np.array([a]))[0]),
    )


def _box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


def _payload(box: bytes) -> bytes:
    size = struct.unpack(">I", box[:4])[0]
    return box[16:] if size == 1 else box[8:]


def _runs(values: Any) -> list[tuple[int, int]]:
    """Run-length encoding (count, value) of a 1-D array."""
    if not len(values):
        return []
    edges = np.concatenate(([0], np.nonzero(np.diff(values))[0] + 1, [len(values)]))
    return [(int(edges[i + 1] - edges[i]), int(values[edges[i]])) for i in range(len(edges) - 1)]


def _moov(
    movie: Movie,
    tracks: list[tuple[Track, int, int]],
    tables: list[_Tables],
    scale: int,
    shift: int,
) -> bytes:
    """The slice's moov; sample offsets are the source's plus ``shift``."""
    durations = [int(np.sum(t.deltas)) for t in tables]
    movie_duration = max(
        d * scale // track.timescale for d, (track, _a, _b) in zip(durations, tracks)
    )
    traks = [
        _trak(track, t, d, scale, shift) for (track, _a, _b), t, d in zip(tracks, tables, durations)
    ]
    return _box(b"moov", _mvhd(movie.mvhd, scale, movie_duration), *traks)


def _mvhd(mvhd: bytes, scale: int, duration: int) -> bytes:
    src = _payload(mvhd)
    rest = src[28:] if src[0] == 1 else src[16:]  # after the duration: rate, volume, ...
    return _full(b"mvhd", 1, 0, struct.pack(">QQIQ", 0, 0, scale, duration), rest)


def _tkhd(tkhd: bytes, duration: int) -> bytes:
    src = _payload(tkhd)
    flags = int.from_bytes(src[1:4], "big")
    if src[0] == 1:
        track_id, rest = src[20:24], src[36:]
    else:
        track_id, rest = src[12:16], src[24:]
    return _full(b"tkhd", 1, flags, struct.pack(">QQ", 0, 0), track_id, b"\0" * 4,
                 struct.pack(">Q", duration), rest)  # fmt: skip


def _mdhd(mdhd: bytes, duration: int) -> bytes:
    src = _payload(mdhd)
    scale, language = (src[20:24], src[32:36]) if src[0] == 1 else (src[12:16], src[20:24])
    return _full(b"mdhd", 1, 0, struct.pack(">QQ", 0, 0), scale, struct.pack(">Q", duration),
                 language)  # fmt: skip


def _elst(track: Track, t: _Tables, scale: int, movie_duration: int) -> bytes:
    """The source's edit (same media start: ffmpeg derives AAC priming and its seeks from it)
    after an empty edit as long as the source's delay plus the slice's first decode time, so
    that ffmpeg (``-advanced_editlist 0``) gives every sample its source timestamp."""
    delay = track.media_time - track.time_offset + t.first_dts  # track ticks, >= 0
    entries = [(delay * scale // track.timescale, -1)] if delay > 0 else []
    entries.append((movie_duration, track.media_time))
    body = b"".join(struct.pack(">Qqhh", d, m, 1, 0) for d, m in entries)
    return _box(b"edts", _full(b"elst", 1, 0, struct.pack(">I", len(entries)), body))


def _trak(track: Track, t: _Tables, duration: int, scale: int, shift: int) -> bytes:
    movie_duration = duration * scale // track.timescale
    offsets = t.offsets + shift
    n = len(t.sizes)
    stbl = [
        track.stsd,
        _full(b"stts", 0, 0, *_run_entries(_runs(t.deltas), signed=False)),
    ]
    if t.composition is not None and track.ctts is not None:
        version = track.ctts[0]
        stbl.append(
            _full(b"ctts", version, 0, *_run_entries(_runs(t.composition), signed=version == 1))
        )
    if t.sync is not None:
        stbl.append(_full(b"stss", 0, 0, struct.pack(">I", len(t.sync)),
                          t.sync.astype(">u4").tobytes()))  # fmt: skip
    stbl += [
        _full(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, 1, 1)),
        _full(b"stsz", 0, 0, struct.pack(">II", 0, n), t.sizes.astype(">u4").tobytes()),
        _full(b"co64", 0, 0, struct.pack(">I", n), offsets.astype(">u8").tobytes()),
    ]
    if track.roll is not None:  # every sample in the one 'roll' group, as in the source
        stbl += [track.roll, _full(b"sbgp", 0, 0, b"roll", struct.pack(">III", 1, n, 1))]
    minf = _box(b"minf", track.media_header, track.dinf, _box(b"stbl", *stbl))
    mdia = _box(b"mdia", _mdhd(track.mdhd, duration), track.hdlr, minf)
    return _box(b"trak", _tkhd(track.tkhd, movie_duration),
                _elst(track, t, scale, movie_duration), mdia)  # fmt: skip


def _run_entries(runs: list[tuple[int, int]], *, signed: bool) -> tuple[bytes, bytes]:
    layout = ">Ii" if signed else ">II"
    return struct.pack(">I", len(runs)), b"".join(struct.pack(layout, c, v) for c, v in runs)


def input_url(header: Path, source: Path, span: tuple[int, int]) -> str | None:
    """The child's ``-i`` for header + source span, or None when a path cannot be put in it."""
    for path in (header, source):
        text = str(path)
        if not path.is_absolute() or any(c in text for c in "|,\n\r"):
            return None
    return f"concat:{header}|subfile,,start,{span[0]},end,{span[1]},,:{source}"


PROTOCOLS = "file,concat,subfile"
