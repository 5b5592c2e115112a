"""One ffmpeg child per time range, streaming tiny grey frames and mono PCM to Python.

Why one child: decoding is the whole cost of analysis, so the file is demuxed once per range,
not once for video and again for audio. Video (64x36 grey, rawvideo) comes on stdout and audio
(16 kHz mono s16le) on a second pipe read by a thread, so neither output can stall the other.

Exactness across ranges: a range starts one frame early (the frame before its first one is
needed to see a cut on the boundary) and its audio is kept from the 50 ms block boundary at or
after its start to the one at or after its end, so parallel ranges tile the file exactly as one
pass does: every frame is counted once and every audio block lands on the same grid.

Memory that would grow with the file: a demuxer holds the whole MP4 sample index. When no
edit list drops a sample, ``-advanced_editlist 0`` gives the same frames and samples without
libavformat's rewritten second copy of it, and ``slice_inputs`` lets each child read a header
describing only its range's samples (same timestamps, same seek: ``montage.ffmpeg.mp4slice``);
the budget reservation reuses the caller's probe rather than probing again in this thread.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from montage.ffmpeg.probe import MediaInfo
    from montage.ffmpeg.slice_input import SliceSource

FRAME_W, FRAME_H = 64, 36
AUDIO_RATE = 16000
AUDIO_BLOCK_S = 0.05
AUDIO_BLOCK_SAMPLES = int(AUDIO_RATE * AUDIO_BLOCK_S)
SCALER = f"scale={FRAME_W}:{FRAME_H}:flags=fast_bilinear,format=gray"
"""fast_bilinear: +0.4 % CPU over plain decoding at 1080p where ``area`` costs +12.5 %."""

FrameSink = Callable[[float, Any], None]  # (time_s, 36x64 uint8 array)
AudioSink = Callable[[float, Any], None]  # (block start s, float64 samples in [-1, 1])


@dataclass(frozen=True)
class RangePlan:
    """What one child decodes: ``[start, end)`` of the file, seeking to ``seek``."""

    start: float
    end: float
    seek: float
    is_last: bool
    fps: Fraction
    keyframes: list[float] | None  # fast mode: decode these only
    plain_edits: bool = False  # no edit list drops samples: ffmpeg may skip rewriting the index


def frame_rate(info: MediaInfo) -> Fraction:
    video = info.video
    fps = video.frame_rate if video and video.frame_rate else 25.0
    return Fraction(fps).limit_denominator(1001)


def plan_ranges(
    info: MediaInfo, count: int, keyframes: list[float] | None = None
) -> list[RangePlan]:
    """Frame-aligned ranges covering the file, each starting one frame early (but the first)."""
    fps = frame_rate(info)
    total_frames = max(1, round(info.duration_s * fps))
    bounds = [round(total_frames * k / count) for k in range(count + 1)]
    plain = _plain_edits(info)
    plans = []
    for k in range(count):
        start, end = float(bounds[k] / fps), float(bounds[k + 1] / fps)
        lead = float(1 / fps) if k > 0 and keyframes is None else 0.0
        seek = max(0.0, start - lead)
        plans.append(RangePlan(start, end, seek, k == count - 1, fps, keyframes, plain))
    return plans


def _plain_edits(info: MediaInfo) -> bool:
    """MP4/MOV whose edit lists drop no samples (``montage.ffmpeg.mp4boxes``)."""
    from pathlib import Path

    from montage.ffmpeg.mp4boxes import trivial_edit_lists

    return "mp4" in info.container.split(",") and trivial_edit_lists(Path(info.path))


def _aligned(t: float) -> float:
    return math.ceil(t / AUDIO_BLOCK_S - 1e-9) * AUDIO_BLOCK_S


def decode_range(
    info: MediaInfo,
    plan: RangePlan,
    *,
    threads: int,
    on_frame: FrameSink,
    on_audio: AudioSink | None,
    input_args: list[str] | None = None,
) -> float:
    """Decode one range through ``memory_safe_ffmpeg``; returns the child's peak memory (MiB).

    ``input_args`` (from ``slice_inputs``) make the child read a header describing only this
    range's samples, so its index is bounded by the range, not the file; None: the whole file.
    """
    from montage.ffmpeg.process import memory_safe_ffmpeg

    read_fd, write_fd = os.pipe() if on_audio is not None else (-1, -1)
    cmd = _command(info, plan, threads, write_fd if on_audio is not None else None, input_args)
    try:
        with memory_safe_ffmpeg(
            cmd, video_path=info.path, name="analyze", stdout=subprocess.PIPE,
            reserve_mb=_reserve_mb(info, cmd),
            pass_fds=(write_fd,) if on_audio is not None else (),
        ) as proc:  # fmt: skip
            reader = None
            if on_audio is not None:
                os.close(write_fd)
                write_fd = -1
                audio_stream = os.fdopen(read_fd, "rb")
                read_fd = -1
                reader = threading.Thread(
                    target=_read_audio, args=(audio_stream, plan, on_audio),
                    name="montage-analyze-audio", daemon=True,
                )  # fmt: skip
                reader.start()
            try:
                assert proc.stdout is not None
                for time_s, frame in zip(_frame_times(plan), _read_frames(proc.stdout)):
                    if time_s < plan.end - 1e-9 or plan.is_last:
                        on_frame(time_s, frame)
                while proc.stdout.read(1 << 16):  # frames past the plan: never block ffmpeg
                    pass
                proc.wait()
            except BaseException:  # the audio reader waits for ffmpeg, which waits for us
                proc.request_stop(kill=True)
                raise
            finally:
                if reader is not None:
                    reader.join()
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    return proc.peak_memory_mb


def _reserve_mb(info: MediaInfo, cmd: list[str]) -> float | None:
    """The budget model's need for ``cmd``, from the probe we already have.

    Why not let ``memory_safe_ffmpeg`` predict it from ``video_path``: it would probe the file
    again, in this thread, and a probe loads the whole sample index (+16 MiB for an hour of
    video, partly kept by the heap) while the ffmpeg children are running.
    """
    from montage.ffmpeg.manager import guess_job
    from montage.ffmpeg.profiles import FFmpegMemoryProfile, predict_peak_mb

    try:
        return predict_peak_mb(info, FFmpegMemoryProfile.BALANCED, **guess_job(cmd))
    except (ValueError, KeyError):
        return None  # memory_safe_ffmpeg falls back to its own prediction


@contextmanager
def slice_inputs(
    slices: SliceSource | None, plans: list[RangePlan]
) -> Iterator[list[list[str] | None]]:
    """Each plan's ``input_args`` for ``decode_range``: a slice header, or None (whole file).

    Written here, in the caller's thread, before the ranges start: a range thread's malloc
    arena would keep the tables' pages (~2 MiB per thread) where ``malloc_trim`` misses them.
    The headers are removed when the block ends, by any route.
    """
    from montage.resources import managed_tempfile

    with ExitStack() as stack:
        inputs: list[list[str] | None] = []
        for plan in plans:
            if slices is None or not plan.plain_edits:  # slices keep timestamps only then
                inputs.append(None)
                continue
            header = stack.enter_context(managed_tempfile(".mp4", prefix="montage_slice_"))
            last = None if plan.is_last else _input_end(plan)
            inputs.append(slices.input_args(header, plan.seek, last))
        del slices  # its tables are in the headers: not held while the ranges decode
        yield inputs


def _input_end(plan: RangePlan) -> float:
    """Where a range's input (``-t``) ends: audio runs on to the block boundary after the end."""
    return _aligned(plan.end) + AUDIO_BLOCK_S


def _command(
    info: MediaInfo,
    plan: RangePlan,
    threads: int,
    audio_fd: int | None,
    input_args: list[str] | None = None,
) -> list[str]:
    from montage.ffmpeg.binary import ffmpeg_path

    cmd = [ffmpeg_path(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    if plan.keyframes is not None:
        cmd += ["-skip_frame", "nokey"]
    if threads > 0:
        cmd += ["-threads", str(threads)]
    if plan.plain_edits:  # same frames, without a second copy of the index (mov_fix_index)
        cmd += ["-advanced_editlist", "0"]
    if not plan.is_last:
        cmd += ["-t", f"{_input_end(plan) - plan.seek:.6f}"]
    if input_args is not None:  # a slice of the file (slice_input): its own -ss and -i
        cmd += input_args
    else:
        if plan.seek > 0:
            cmd += ["-ss", f"{plan.seek:.6f}"]
        cmd += ["-i", f"file:{info.path}"]
    cmd += ["-filter_threads", "1" if threads == 1 else "0"]
    cmd += ["-map", "0:v:0", "-vf", SCALER]
    if plan.keyframes is not None:
        cmd += ["-fps_mode", "passthrough"]
    else:
        cmd += ["-fps_mode", "cfr", "-r", str(plan.fps)]
    cmd += ["-f", "rawvideo", "pipe:1"]
    if audio_fd is not None:
        cmd += ["-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(AUDIO_RATE), "-f", "s16le"]
        cmd += [f"pipe:{audio_fd}"]
    return cmd


def _frame_times(plan: RangePlan) -> Iterator[float]:
    if plan.keyframes is not None:
        yield from (k for k in plan.keyframes if plan.start - 1e-6 <= k < plan.end - 1e-6)
        return
    index = 0
    while True:
        yield round(plan.seek + float(index / plan.fps), 6)
        index += 1


def _read_frames(stream: IO[bytes]) -> Iterator[Any]:
    import numpy as np

    size = FRAME_W * FRAME_H
    buffer = bytearray(size)
    view = memoryview(buffer)
    while True:
        filled = 0
        while filled < size:
            n = stream.readinto(view[filled:])  # type: ignore[attr-defined]
            if not n:
                return
            filled += n
        yield np.frombuffer(buffer, dtype=np.uint8).reshape(FRAME_H, FRAME_W).copy()


def _read_audio(stream: IO[bytes], plan: RangePlan, sink: AudioSink) -> None:
    """Blocks on the absolute 50 ms grid from ``aligned(start)`` to ``aligned(end)``."""
    import numpy as np

    first = _aligned(plan.start) if plan.start > 0 else 0.0
    last = math.inf if plan.is_last else _aligned(plan.end)
    skip = max(0, round((first - plan.seek) * AUDIO_RATE)) * 2
    block_bytes = AUDIO_BLOCK_SAMPLES * 2
    t = first
    with stream:
        while skip > 0:
            dropped = stream.read(min(skip, 1 << 16))
            if not dropped:
                return
            skip -= len(dropped)
        while t < last - 1e-9:
            data = stream.read(block_bytes)
            if not data:
                break
            samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64)
            sink(t, samples / 32768.0)
            t = round(t + len(samples) / AUDIO_RATE, 6)
        while stream.read(1 << 16):  # drain past the range so ffmpeg never blocks on the pipe
            pass
