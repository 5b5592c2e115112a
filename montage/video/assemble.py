"""Turn snapped segments into the list of ffmpeg jobs of one edit (copy/accurate/smart/xfade).

Every builder returns the whole plan before anything runs, so progress knows the total work
and nothing is half-decided when a job fails. Pieces are joined by one concat-demuxer run; no
job ever holds more than two segments, so memory does not grow with the segment count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from montage.video.cutting import (
    FrameRange,
    copy_decode_lead_s,
    copy_outpoint_s,
    plan_smart,
    snap_to_keyframe,
)
from montage.video.pieces import (
    EncodeSettings,
    Target,
    audio_piece_cmd,
    concat_list_text,
    copy_mode_cmd,
    copy_piece_cmd,
    join_cmd,
    video_piece_cmd,
    xfade_cmd,
)
from montage.video.runner import Job, WorkDir

ENCODE_WEIGHT = 1.0
COPY_WEIGHT = 0.02
AUDIO_WEIGHT = 0.05


@dataclass
class Assembly:
    """The jobs of one edit and what their output must look like."""

    jobs: list[Job] = field(default_factory=list)
    spans_s: list[tuple[float, float]] = field(default_factory=list)  # per segment, source time
    starts_out_s: list[float] = field(default_factory=list)  # per segment, where its spans_s[0] is
    expected_frames: int | None = 0
    expected_duration_s: float = 0.0
    seams_s: list[float] = field(default_factory=list)  # output times where pieces meet


def out_frames(rng: FrameRange, target: Target) -> int:
    """Frames ``rng`` becomes in the output (its own count unless the rate is converted)."""
    if rng.source.fmt.fps == target.fps:
        return rng.frames
    return max(1, round(rng.duration_s * float(target.fps)))


def build_copy(ffmpeg: str, work: WorkDir, ranges: list[FrameRange], out: Path) -> Assembly:
    """Copy mode: one process reads every range straight from the sources (flat memory).

    Video and audio come from two listings of the same ranges: the concat demuxer ends a
    file at the first packet of *any* stream whose decode time reaches its outpoint, and with
    B-frames the video's outpoint (a decode time) is up to a few frames before the range's
    presentation end, where the audio must stop. Each file's ``duration`` is its range's
    presentation length, so the next range starts where this one's last frame ends (the
    demuxer would otherwise take ``outpoint - inpoint`` and overlap the ranges)."""
    plan = Assembly(expected_frames=None)
    video: list[tuple[str, dict[str, float]]] = []
    audio: list[tuple[str, dict[str, float]]] = []
    for rng in ranges:
        snapped = snap_to_keyframe(rng)
        src = snapped.source
        name = work.link(src.path)
        v_dirs = {"inpoint": snapped.start_s + src.start_offset_s}
        a_dirs = dict(v_dirs)
        outpoint = copy_outpoint_s(snapped)
        if outpoint is not None:  # None: to the media's end
            end_s = snapped.end_s + src.start_offset_s
            v_dirs["outpoint"], a_dirs["outpoint"] = floor_us(outpoint), floor_us(end_s)
            v_dirs["duration"] = a_dirs["duration"] = snapped.duration_s
        video.append((name, v_dirs))
        audio.append((name, a_dirs))
        plan.spans_s.append((snapped.start_s, snapped.end_s))
        plan.starts_out_s.append(plan.expected_duration_s)
        plan.expected_duration_s += snapped.duration_s
    v_list = work.write_list("copy", concat_list_text(video))
    has_audio = ranges[0].source.fmt.has_audio
    # a second listing (a second open of each source: its whole index again, ~+8 MiB and
    # ~+30 ms for a 10-minute 1080p MP4) only where a video cut point differs from the sound's
    # (B-frames at a cut end); otherwise both streams come from the one listing
    separate = has_audio and audio != video
    a_list = work.write_list("copy-audio", concat_list_text(audio)) if separate else None
    cmd = copy_mode_cmd(ffmpeg, v_list, out, audio_list=a_list, audio=has_audio)
    plan.jobs.append(Job(cmd, "copy-join", COPY_WEIGHT, plan.expected_duration_s))
    return plan


def floor_us(seconds: float) -> float:
    """``seconds`` rounded down to a whole microsecond (a nanosecond of float error forgiven).

    The concat demuxer reads an ``outpoint`` as whole microseconds and stops at the first
    packet whose dts reaches it. A smart copy ends on a keyframe's dts, which need not be a
    whole microsecond (B-frames at 30000/1001 fps: 58 x 1001/30000 s = 1.9352666... s);
    rounded to the nearest (1.935267) the outpoint passed it and the copy took that keyframe
    too, a frame the tail re-encodes: a duplicate, and verification fell back to accurate.
    """
    return math.floor(seconds * 1_000_000 + 1e-3) / 1_000_000


class _Pieces:
    """Collects video and audio pieces in output order with their concat durations."""

    def __init__(self, ffmpeg: str, work: WorkDir, target: Target) -> None:
        self.ffmpeg, self.work, self.target = ffmpeg, work, target
        self.video: list[tuple[str, dict[str, float]]] = []
        self.audio: list[tuple[str, dict[str, float]]] = []
        self.jobs: list[Job] = []
        self.frames = 0
        self.out_s = 0.0

    def encode(
        self,
        src_rng: FrameRange,
        start_s: float,
        frames: int,
        enc: EncodeSettings,
        *,
        dts_lead_s: float = 0.0,
    ) -> None:
        """Re-encode ``frames`` frames from ``start_s``: at their own times when the rate is
        kept (a variable-rate source stays variable), else at the target's constant rate."""
        path = self.work.name("v", ".ts")
        src = src_rng.source
        cmd = video_piece_cmd(
            self.ffmpeg, src, start_s, frames, self.target, enc, path, dts_lead_s=dts_lead_s
        )
        if src.fmt.fps == self.target.fps:
            seconds = src.seconds(src.first_frame_at_or_after(start_s), frames)
        else:
            seconds = self.target.seconds(frames)
        job = Job(cmd, f"encode-{path.stem}", ENCODE_WEIGHT * seconds, seconds, src_rng.source.path)
        self.jobs.append(job)
        self._add_video(path, frames, seconds)

    def copy(self, rng: FrameRange, *, dts_lead_s: float = 0.0) -> None:
        """Stream-copy ``rng`` (starting on a keyframe), its decode times moved ahead of
        presentation to ``dts_lead_s`` in all (from the source's own lead)."""
        src = rng.source
        directives = {"inpoint": rng.start_s + src.start_offset_s}
        outpoint = copy_outpoint_s(rng)
        if outpoint is not None:
            directives["outpoint"] = floor_us(outpoint)
        listing = self.work.write_list(
            "c", concat_list_text([(self.work.link(src.path), directives)])
        )
        path = self.work.name("v", ".ts")
        extra_lead_s = max(0.0, dts_lead_s - src.decode_lead_s(rng.first))
        cmd = copy_piece_cmd(self.ffmpeg, listing, path, dts_lead_s=extra_lead_s)
        self.jobs.append(
            Job(cmd, f"copy-{path.stem}", COPY_WEIGHT * rng.duration_s, rng.duration_s)
        )
        self._add_video(path, rng.frames, rng.duration_s)

    def _add_video(self, path: Path, frames: int, seconds: float) -> None:
        self.video.append((path.name, {"duration": seconds}))
        self.frames += frames
        self.out_s += seconds

    def sound(self, rng: FrameRange | None, start_s: float, seconds: float) -> None:
        if not self.target.has_audio:
            return
        path = self.work.name("a", ".wav")
        src = rng.source if rng is not None else None
        cmd = audio_piece_cmd(self.ffmpeg, src, start_s, seconds, self.target, path)
        self.jobs.append(Job(cmd, f"audio-{path.stem}", AUDIO_WEIGHT * seconds, seconds))
        self.audio.append((path.name, {"duration": seconds}))

    def join(self, out: Path, audio_bit_rate: int | None, timescale: int | None) -> Job:
        vlist = self.work.write_list("video", concat_list_text(self.video))
        alist = self.work.write_list("audio", concat_list_text(self.audio)) if self.audio else None
        cmd = join_cmd(
            self.ffmpeg, vlist, alist, out, audio_bit_rate=audio_bit_rate, timescale=timescale,
            rotation=self.target.rotation,
        )  # fmt: skip
        return Job(cmd, "join", COPY_WEIGHT * self.out_s + AUDIO_WEIGHT * self.out_s, self.out_s)


def build_pieces(
    ffmpeg: str,
    work: WorkDir,
    ranges: list[FrameRange],
    target: Target,
    enc: EncodeSettings,
    out: Path,
    *,
    smart_enc: EncodeSettings | None = None,
    audio_bit_rate: int | None = None,
    timescale: int | None = None,
) -> Assembly:
    """Accurate mode (``smart_enc`` None): each segment re-encoded whole. Smart mode: only the
    partial GOPs at each end re-encoded with ``smart_enc`` (no B-frames: decode lead 0), the
    GOPs between stream-copied, and every piece given the largest lead of the copied GOPs so
    decode times stay one frame apart across the seams (``montage.video.pieces`` doc)."""
    pieces = _Pieces(ffmpeg, work, target)
    plan = Assembly()
    smart_plans = [plan_smart(rng) for rng in ranges] if smart_enc is not None else []
    lead_s = copy_decode_lead_s(smart_plans)
    for i, rng in enumerate(ranges):
        seg_start_out = pieces.out_s
        if smart_enc is None:
            pieces.encode(rng, rng.start_s, out_frames(rng, target), enc)
        else:
            smart = smart_plans[i]
            for part in (smart.head, smart.middle, smart.tail):
                if part is None:
                    continue
                if part is smart.middle:
                    pieces.copy(part, dts_lead_s=lead_s)
                else:
                    pieces.encode(part, part.start_s, part.frames, smart_enc, dts_lead_s=lead_s)
                plan.seams_s.append(pieces.out_s)
        pieces.sound(rng, rng.start_s, pieces.out_s - seg_start_out)  # as long as its video
        plan.spans_s.append((rng.start_s, rng.end_s))
        plan.starts_out_s.append(seg_start_out)
        plan.seams_s.append(seg_start_out)
    plan.jobs = [*pieces.jobs, pieces.join(out, audio_bit_rate, timescale)]
    plan.expected_frames = pieces.frames
    plan.expected_duration_s = pieces.out_s
    return plan


def build_transitions(
    ffmpeg: str,
    work: WorkDir,
    ranges: list[FrameRange],
    target: Target,
    enc: EncodeSettings,
    fade_frames: int,
    out: Path,
    *,
    audio_bit_rate: int | None = None,
    timescale: int | None = None,
) -> Assembly:
    """Crossfades: each segment's body re-encoded on its own, and each boundary's fade made
    by its own two-input job (the tail of A with the head of B); then one concat join."""
    fade_s = target.seconds(fade_frames)
    pieces = _Pieces(ffmpeg, work, target)
    plan = Assembly()
    last = len(ranges) - 1
    for i, rng in enumerate(ranges):
        frames = out_frames(rng, target)
        cut_head = fade_frames if i > 0 else 0
        cut_tail = fade_frames if i < last else 0
        body, start_s = frames - cut_head - cut_tail, rng.start_s + target.seconds(cut_head)
        if rng.source.fmt.fps == target.fps:  # the rate is kept: count the source's own frames
            body, start_s = _body(rng, fade_s if cut_head else 0.0, fade_s if cut_tail else 0.0)
        if body < 0:
            raise ValueError(
                f"segment {i} ({rng.duration_s:.3f} s) is shorter than its "
                f"{(cut_head + cut_tail) / float(target.fps):.3f} s of crossfades; "
                f"use a shorter transition_duration"
            )
        # its head is the second half of the crossfade just made, which started fade_s ago
        plan.starts_out_s.append(pieces.out_s - fade_s if i > 0 else 0.0)
        if body > 0:
            before_s = pieces.out_s
            pieces.encode(rng, start_s, body, enc)
            pieces.sound(rng, start_s, pieces.out_s - before_s)
        if i < last:
            _crossfade(pieces, rng, ranges[i + 1], fade_frames, fade_s, enc)
            plan.seams_s.append(pieces.out_s)
        plan.spans_s.append((rng.start_s, rng.end_s))
    plan.jobs = [*pieces.jobs, pieces.join(out, audio_bit_rate, timescale)]
    plan.expected_frames = pieces.frames
    plan.expected_duration_s = pieces.out_s
    return plan


def _body(rng: FrameRange, head_s: float, tail_s: float) -> tuple[int, float]:
    """(frames, start time) of ``rng`` without its first ``head_s`` and last ``tail_s``
    seconds, by the source's frame times (variable-rate sources: not ``seconds * fps``)."""
    src = rng.source
    first = src.first_frame_at_or_after(rng.start_s + head_s) if head_s else rng.first
    end = src.first_frame_at_or_after(rng.end_s - tail_s) if tail_s else rng.end
    return end - first, src.time_of(first)


def _crossfade(
    pieces: _Pieces,
    a: FrameRange,
    b: FrameRange,
    fade_frames: int,
    fade_s: float,
    enc: EncodeSettings,
) -> None:
    video = pieces.work.name("x", ".ts")
    audio = pieces.work.name("x", ".wav") if pieces.target.has_audio else None
    tail_start_s = a.end_s - fade_s
    cmd = xfade_cmd(
        pieces.ffmpeg,
        (a.source, tail_start_s),
        (b.source, b.start_s),
        fade_frames,
        pieces.target,
        enc,
        video,
        audio,
    )
    weight = ENCODE_WEIGHT * 2 * fade_s
    pieces.jobs.append(Job(cmd, f"xfade-{video.stem}", weight, fade_s, a.source.path))
    pieces._add_video(video, fade_frames, fade_s)
    if audio is not None:
        pieces.audio.append((audio.name, {"duration": fade_s}))
