"""An MP4/MOV track's sample tables, read from the file with random access (no demuxer).

What ``mp4slice`` needs to describe a slice of a track: per-sample sizes, file offsets,
decode times, composition offsets and sync flags for samples ``[a, b)``. The flat tables
(``stsz``, ``stco``/``co64``) stay in the file and are read per slice; the run-length ones
(``stts``, ``ctts``, ``stsc``) and ``stss`` are held compactly (numpy), so Python's memory for an
hour of 1080p30 + AAC is ~1-2 MiB, not the demuxer's ~13 MiB.

Only the layouts ``mp4slice`` can rewrite are accepted; anything else raises ``Unsupported``
with the reason (the caller falls back to letting ffmpeg read the whole file).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

_SMALL_BOX_CAP = 1 << 20  # stsd, dinf, tkhd...: copied whole; larger ones are not "small"
_TABLE_CAP = 64 << 20  # run-length tables held in memory (an hour of ctts is ~0.9 MB)


class Unsupported(ValueError):
    """A layout the slicer does not handle; the message says why."""


@dataclass(frozen=True)
class Box:
    kind: bytes
    start: int  # file offset of the box header
    payload: int  # file offset of the payload
    end: int


def iter_boxes(fh: IO[bytes], start: int, end: int) -> list[Box]:
    """The ISO-BMFF boxes in the file span ``[start, end)`` (headers only)."""
    boxes, pos = [], start
    while pos + 8 <= end:
        fh.seek(pos)
        header = fh.read(16)
        if len(header) < 8:
            break
        size, kind = struct.unpack(">I4s", header[:8])
        head = 8
        if size == 1:
            if len(header) < 16:
                break
            size, head = struct.unpack(">Q", header[8:16])[0], 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            break
        boxes.append(Box(kind, pos, pos + head, pos + size))
        pos += size
    return boxes


def _find(boxes: list[Box], kind: bytes) -> Box | None:
    return next((b for b in boxes if b.kind == kind), None)


def _read(fh: IO[bytes], box: Box, cap: int = _SMALL_BOX_CAP) -> bytes:
    if box.end - box.start > cap:
        raise Unsupported(f"{box.kind!r} box is {box.end - box.start} bytes")
    fh.seek(box.start)
    data = fh.read(box.end - box.start)
    if len(data) != box.end - box.start:
        raise Unsupported(f"{box.kind!r} box is truncated")
    return data


def _payload(whole: bytes, box: Box) -> bytes:
    return whole[box.payload - box.start :]


@dataclass
class Track:
    """One track's boxes to copy and its sample tables."""

    handler: bytes  # b"vide" / b"soun"
    track_id: int
    timescale: int
    time_offset: int  # ffmpeg's (advanced_editlist 0) shift: dts = stts dts - time_offset
    media_time: int  # where the edit list starts the media (ticks), 0 without one
    start_pad: int  # AAC priming ffmpeg skips at the start (an edit's media start): ticks
    sample_count: int
    tkhd: bytes  # whole boxes, copied into the slice
    mdhd: bytes
    hdlr: bytes
    media_header: bytes  # vmhd / smhd
    dinf: bytes
    stsd: bytes
    stts_counts: Any  # numpy int64 arrays
    stts_deltas: Any
    ctts: tuple[int, Any, Any] | None  # (version, counts, offsets)
    stss: Any | None  # 0-based sync sample numbers, sorted; None: every sample is a sync sample
    chunk_first: Any  # first sample of each chunk, then sample_count
    chunk_offsets_at: int  # file offset of the stco/co64 entries
    chunk_offset_size: int  # 4 (stco) or 8 (co64)
    uniform_size: int  # stsz sample_size (0: per-sample table)
    sizes_at: int  # file offset of the stsz entries
    roll: bytes | None = None  # an sgpd 'roll' box every sample belongs to (AAC pre-roll)

    # -- per-sample facts for [a, b) -------------------------------------------------------

    def dts(self, a: int, b: int) -> Any:
        """Decode times (stts ticks from the track's start) of samples ``[a, b)``."""
        return self.dts_at(np.arange(a, b, dtype=np.int64))

    def dts_at(self, idx: Any) -> Any:
        """Decode times of the samples numbered ``idx`` (``sample_count``: the track's end)."""
        ends = np.cumsum(self.stts_counts)
        starts = ends - self.stts_counts
        base = np.concatenate(([0], np.cumsum(self.stts_counts * self.stts_deltas)))
        entry = np.minimum(np.searchsorted(ends, idx, side="right"), len(ends) - 1)
        at_end = idx >= self.sample_count
        inside = base[entry] + (idx - starts[entry]) * self.stts_deltas[entry]
        return np.where(at_end, base[-1], inside)

    def deltas(self, a: int, b: int) -> Any:
        entry = np.searchsorted(np.cumsum(self.stts_counts), np.arange(a, b), side="right")
        return self.stts_deltas[entry]

    def seconds(self, idx: Any) -> Any:
        """ffmpeg's decode time (s) of samples ``idx`` (with ``-advanced_editlist 0``)."""
        return (self.dts_at(np.asarray(idx, dtype=np.int64)) - self.time_offset) / self.timescale

    def first_after(self, t: float) -> int:
        """The first sample whose decode time is > ``t`` s (``sample_count`` if none)."""
        lo, hi = 0, self.sample_count
        while lo < hi:
            mid = (lo + hi) // 2
            if float(self.seconds([mid])[0]) > t:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def composition(self, a: int, b: int) -> Any | None:
        if self.ctts is None:
            return None
        _version, counts, offsets = self.ctts
        ends = np.cumsum(counts)
        entry = np.searchsorted(ends, np.arange(a, b, dtype=np.int64), side="right")
        if len(entry) and entry[-1] >= len(counts):
            raise Unsupported("ctts describes fewer samples than stsz")
        return offsets[entry]

    def sizes(self, fh: IO[bytes], a: int, b: int) -> Any:
        if self.uniform_size:
            return np.full(b - a, self.uniform_size, dtype=np.int64)
        fh.seek(self.sizes_at + 4 * a)
        data = fh.read(4 * (b - a))
        if len(data) != 4 * (b - a):
            raise Unsupported("stsz is truncated")
        return np.frombuffer(data, dtype=">u4").astype(np.int64)

    def offsets(self, fh: IO[bytes], a: int, b: int) -> tuple[Any, Any]:
        """(file offset, size) of samples ``[a, b)``."""
        first_chunk = int(np.searchsorted(self.chunk_first, a, side="right")) - 1
        last_chunk = int(np.searchsorted(self.chunk_first, b - 1, side="right")) - 1
        width = self.chunk_offset_size
        fh.seek(self.chunk_offsets_at + width * first_chunk)
        count = last_chunk - first_chunk + 1
        raw = fh.read(width * count)
        if len(raw) != width * count:
            raise Unsupported("chunk offset table is truncated")
        chunk_offsets = np.frombuffer(raw, dtype=">u8" if width == 8 else ">u4").astype(np.int64)
        lead = int(self.chunk_first[first_chunk])
        sizes = self.sizes(fh, lead, b)
        before = np.concatenate(([0], np.cumsum(sizes)))[:-1]  # bytes before each, from lead
        idx = np.arange(a, b, dtype=np.int64)
        chunk = np.searchsorted(self.chunk_first, idx, side="right") - 1
        within = before[idx - lead] - before[self.chunk_first[chunk] - lead]
        return chunk_offsets[chunk - first_chunk] + within, sizes[a - lead :]

    def sync_samples(self, a: int, b: int) -> Any | None:
        if self.stss is None:
            return None
        return self.stss[(self.stss >= a) & (self.stss < b)]


@dataclass
class Movie:
    """The file's ``ftyp``, ``mvhd`` and the tracks a slice keeps (video + first audio)."""

    ftyp: bytes
    mvhd: bytes
    timescale: int
    video: Track
    audio: Track | None
    start_pts: dict[int, float]  # track_id -> first presentation time (s), every track


def read_movie(path: Path) -> Movie:
    """Parse ``path``'s moov for slicing, or raise ``Unsupported`` (why) / ``OSError``."""
    try:
        with open(path, "rb") as fh:
            return _read_movie(fh, os.fstat(fh.fileno()).st_size)
    except (struct.error, IndexError) as exc:
        raise Unsupported(f"unreadable box layout ({exc})") from exc


def _read_movie(fh: IO[bytes], size: int) -> Movie:
    top = iter_boxes(fh, 0, size)
    kinds = [b.kind for b in top]
    if b"moof" in kinds or b"mvex" in kinds:
        raise Unsupported("fragmented MP4")
    ftyp, moov = _find(top, b"ftyp"), _find(top, b"moov")
    if ftyp is None or moov is None or b"mdat" not in kinds:
        raise Unsupported("no ftyp, moov or mdat box")
    children = iter_boxes(fh, moov.payload, moov.end)
    if _find(children, b"mvex") is not None:
        raise Unsupported("fragmented MP4 (mvex)")
    mvhd_box = _find(children, b"mvhd")
    if mvhd_box is None:
        raise Unsupported("no mvhd")
    mvhd = _read(fh, mvhd_box)
    timescale = _timescale(_payload(mvhd, mvhd_box))
    if timescale <= 0:
        raise Unsupported("movie timescale is 0")
    videos: list[Track] = []
    audios: list[Track] = []
    start_pts: dict[int, float] = {}
    for trak in (b for b in children if b.kind == b"trak"):
        track = _read_track(fh, trak, timescale)
        if track is None:
            continue
        start_pts[track.track_id] = _first_pts(track)
        (videos if track.handler == b"vide" else audios).append(track)
    if len(videos) != 1:
        raise Unsupported(f"{len(videos)} video tracks")
    if videos[0].stss is None:
        raise Unsupported("the video track has no stss (sync sample) table")
    return Movie(
        _read(fh, ftyp), mvhd, timescale, videos[0], audios[0] if audios else None, start_pts
    )


def _first_pts(track: Track) -> float:
    """ffmpeg's start_time of the track: its first timestamp, after AAC priming is skipped."""
    first = track.start_pad
    comp = track.composition(0, min(track.sample_count, 16))
    dts = track.dts(0, min(track.sample_count, 16))
    if comp is not None and len(comp):
        first += int(np.min(dts + comp))
    return (first - track.time_offset) / track.timescale


def _timescale(header: bytes) -> int:
    offset = 20 if header[0] == 1 else 12
    return int(struct.unpack(">I", header[offset : offset + 4])[0])


def _read_track(fh: IO[bytes], trak: Box, movie_scale: int) -> Track | None:
    """The track, or None for one the slice drops (not video/audio)."""
    boxes = iter_boxes(fh, trak.payload, trak.end)
    mdia = _find(boxes, b"mdia")
    tkhd = _find(boxes, b"tkhd")
    if mdia is None or tkhd is None:
        raise Unsupported("a trak without mdia or tkhd")
    mdia_boxes = iter_boxes(fh, mdia.payload, mdia.end)
    hdlr_box, mdhd_box, minf = (_find(mdia_boxes, k) for k in (b"hdlr", b"mdhd", b"minf"))
    if hdlr_box is None or mdhd_box is None or minf is None:
        raise Unsupported("a track without hdlr, mdhd or minf")
    hdlr = _read(fh, hdlr_box)
    handler = _payload(hdlr, hdlr_box)[8:12]
    if handler not in (b"vide", b"soun"):
        return None
    tkhd_bytes = _read(fh, tkhd)
    tk = _payload(tkhd_bytes, tkhd)
    (track_id,) = struct.unpack(">I", tk[20:24] if tk[0] == 1 else tk[12:16])
    mdhd = _read(fh, mdhd_box)
    timescale = _timescale(_payload(mdhd, mdhd_box))
    if timescale <= 0:
        raise Unsupported("track timescale is 0")
    minf_boxes = iter_boxes(fh, minf.payload, minf.end)
    media_header = _find(minf_boxes, b"vmhd" if handler == b"vide" else b"smhd")
    dinf, stbl = _find(minf_boxes, b"dinf"), _find(minf_boxes, b"stbl")
    if media_header is None or dinf is None or stbl is None:
        raise Unsupported("a track without vmhd/smhd, dinf or stbl")
    tables = {b.kind: b for b in iter_boxes(fh, stbl.payload, stbl.end)}
    for kind in (b"stsd", b"stts", b"stsc", b"stsz"):
        if kind not in tables:
            raise Unsupported(f"a track without {kind.decode()}")
    if b"stz2" in tables:
        raise Unsupported("compact sample sizes (stz2)")
    stsd = _read(fh, tables[b"stsd"])
    if struct.unpack(">I", _payload(stsd, tables[b"stsd"])[4:8])[0] != 1:
        raise Unsupported("more than one sample description")
    stsz_box = tables[b"stsz"]
    fh.seek(stsz_box.payload)
    _vf, uniform, count = struct.unpack(">III", fh.read(12))
    if not uniform and stsz_box.payload + 12 + 4 * count > stsz_box.end:
        raise Unsupported("stsz is truncated")
    if count == 0:
        raise Unsupported("an empty track")
    counts, deltas = _run_table(fh, tables[b"stts"], signed=False)
    if int(np.sum(counts)) != count:
        raise Unsupported("stts and stsz disagree on the sample count")
    ctts = None
    if b"ctts" in tables:
        fh.seek(tables[b"ctts"].payload)
        version = fh.read(1)[0]
        c_counts, c_offsets = _run_table(fh, tables[b"ctts"], signed=version == 1)
        ctts = (version, c_counts, c_offsets)
    stss = None
    if b"stss" in tables:
        stss = _flat_table(fh, tables[b"stss"]) - 1
    offsets_box = tables.get(b"co64") or tables.get(b"stco")
    if offsets_box is None:
        raise Unsupported("no chunk offset table")
    width = 8 if offsets_box.kind == b"co64" else 4
    fh.seek(offsets_box.payload + 4)
    (n_chunks,) = struct.unpack(">I", fh.read(4))
    if offsets_box.payload + 8 + width * n_chunks > offsets_box.end:
        raise Unsupported("chunk offset table is truncated")
    chunk_first = _chunk_first_samples(fh, tables[b"stsc"], n_chunks, count)
    media_time, time_offset = _edit(fh, boxes, movie_scale, timescale)
    return Track(
        handler=handler,
        track_id=int(track_id),
        timescale=timescale,
        time_offset=time_offset,
        media_time=media_time,
        start_pad=media_time if _is_aac(stsd, tables[b"stsd"]) and media_time > 0 else 0,
        sample_count=count,
        tkhd=tkhd_bytes,
        mdhd=mdhd,
        hdlr=hdlr,
        media_header=_read(fh, media_header),
        dinf=_read(fh, dinf),
        stsd=stsd,
        stts_counts=counts,
        stts_deltas=deltas,
        ctts=ctts,
        stss=stss,
        chunk_first=chunk_first,
        chunk_offsets_at=offsets_box.payload + 8,
        chunk_offset_size=width,
        uniform_size=int(uniform),
        sizes_at=stsz_box.payload + 12,
        roll=_roll_group(fh, tables, count),
    )


def _roll_group(fh: IO[bytes], tables: dict[bytes, Box], count: int) -> bytes | None:
    """The ``sgpd`` of a 'roll' group holding every sample (ffmpeg's AAC pre-roll: a seek
    starts decoding that many packets early); other sample groups are ``Unsupported``."""
    sgpd, sbgp = tables.get(b"sgpd"), tables.get(b"sbgp")
    if sgpd is None and sbgp is None:
        return None
    if sgpd is None or sbgp is None:
        raise Unsupported("a sample group without its description or mapping")
    group = _read(fh, sgpd)
    mapping = _payload(_read(fh, sbgp), sbgp)
    ok = (
        _payload(group, sgpd)[4:8] == b"roll"
        and mapping[:1] == b"\0"
        and mapping[4:8] == b"roll"
        and struct.unpack(">III", mapping[8:20]) == (1, count, 1)
    )
    if not ok:
        raise Unsupported("sample groups other than one 'roll' group of every sample")
    return group


def _entries(fh: IO[bytes], box: Box, width: int) -> bytes:
    fh.seek(box.payload + 4)
    (count,) = struct.unpack(">I", fh.read(4))
    if box.payload + 8 + width * count > box.end or width * count > _TABLE_CAP:
        raise Unsupported(f"{box.kind!r} table is truncated or too large")
    return fh.read(width * count)


def _run_table(fh: IO[bytes], box: Box, *, signed: bool) -> tuple[Any, Any]:
    data = np.frombuffer(_entries(fh, box, 8), dtype=">u4").reshape(-1, 2)
    values = data[:, 1].astype(np.int32 if signed else np.uint32).astype(np.int64)
    return data[:, 0].astype(np.int64), values


def _flat_table(fh: IO[bytes], box: Box) -> Any:
    return np.frombuffer(_entries(fh, box, 4), dtype=">u4").astype(np.int64)


def _chunk_first_samples(fh: IO[bytes], stsc: Box, n_chunks: int, n_samples: int) -> Any:
    """First sample of each chunk (plus ``n_samples`` at the end) from ``stsc``."""
    table = np.frombuffer(_entries(fh, stsc, 12), dtype=">u4").reshape(-1, 3).astype(np.int64)
    if not len(table) or table[0, 0] != 1 or np.any(np.diff(table[:, 0]) <= 0):
        raise Unsupported("stsc is empty or out of order")
    if np.any(table[:, 2] != table[0, 2]):
        raise Unsupported("stsc switches sample descriptions")
    firsts = np.append(table[:, 0] - 1, n_chunks)
    if firsts[-2] >= n_chunks:
        raise Unsupported("stsc names chunks past the chunk offset table")
    per_chunk = np.repeat(table[:, 1], np.diff(firsts))
    result = np.concatenate(([0], np.cumsum(per_chunk)))
    if result[-1] != n_samples:
        raise Unsupported("stsc and stsz disagree on the sample count")
    return result.astype(np.int32 if n_samples < 2**31 else np.int64)  # held for the job


def _is_aac(stsd: bytes, box: Box) -> bool:
    entry = _payload(stsd, box)[8:]
    return entry[4:8] == b"mp4a"


def _edit(fh: IO[bytes], trak_boxes: list[Box], movie_scale: int, scale: int) -> tuple[int, int]:
    """(media start, ffmpeg's ``time_offset``) of a trivial edit list (advanced_editlist 0):
    the time offset is the media start minus the empty edit's delay, in track ticks; other
    edit lists are ``Unsupported``."""
    edts = _find(trak_boxes, b"edts")
    if edts is None:
        return 0, 0
    elst = _find(iter_boxes(fh, edts.payload, edts.end), b"elst")
    if elst is None:
        return 0, 0
    data = _payload(_read(fh, elst), elst)
    version, (count,) = data[0], struct.unpack(">I", data[4:8])
    size, layout = (20, ">Qqhh") if version == 1 else (12, ">Iihh")
    edits = [struct.unpack(layout, data[8 + size * i : 8 + size * (i + 1)]) for i in range(count)]
    empty = 0
    if edits and edits[0][1] == -1:
        empty = (edits[0][0] * scale + movie_scale // 2) // movie_scale  # av_rescale, near
        edits = edits[1:]
    if len(edits) > 1 or (edits and (edits[0][1] < 0 or edits[0][2] != 1)):
        raise Unsupported("a non-trivial edit list")
    media_time = edits[0][1] if edits else 0
    return int(media_time), int(media_time - empty)
