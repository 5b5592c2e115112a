"""Exact chunked processing: split at keyframes, process chunks under the budget, join.

Why chunks: peak memory is set by one chunk's job (times the workers the budget admits), not by
the file's length, and a failed job costs one chunk, not the whole file.

Why this way:

* The video stream is split with the segment muxer at keyframe *packet indices*
  (``-segment_frames``), stream copy: every packet lands in exactly one chunk, none duplicated
  or lost (``-ss/-t`` copies duplicate frames at the seams) and timestamps cannot round.
* Audio is processed once for the whole file (or copied): per-chunk AAC has encoder priming at
  every seam, which is heard as gaps.
* Chunks are joined with the concat demuxer from a list file we write with our own plain names
  (no ``-safe 0``), muxed with the audio into a temp file beside the output, checked (frame count
  and duration against the input) and only then moved into place with ``os.replace``.
* Every intermediate lives in one managed folder that is removed on success, on failure and on
  Ctrl-C; the input is never written.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from montage.errors import ConfigError, FFmpegError, OutputError
from montage.ffmpeg.chunk_jobs import (
    ChunkError,
    ChunkReport,
    ProcessingFunction,
    ProgressCallback,
    _function_job,
    _JobRunner,
)
from montage.ffmpeg.chunk_plan import (
    MAX_CHUNK_S,
    MIN_CHUNK_S,
    SHORT_FILE_CHUNKS,
    ChunkPlan,
    VideoIndex,
    default_chunk_duration_s,
    plan_chunks,
    scan_video,
)
from montage.ffmpeg.streams import MP4_LIKE, data_warnings, whole_file_subtitles

if TYPE_CHECKING:
    from montage.ffmpeg.probe import MediaInfo

__all__ = [
    "MAX_CHUNK_S",
    "MIN_CHUNK_S",
    "SHORT_FILE_CHUNKS",
    "ChunkError",
    "ChunkPlan",
    "ChunkReport",
    "ProcessingFunction",
    "ProgressCallback",
    "VideoIndex",
    "default_chunk_duration_s",
    "plan_chunks",
    "process_video_chunks",
    "scan_video",
    "transcode_in_chunks",
]

logger = logging.getLogger(__name__)

_CHUNK_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".ts", ".m2ts", ".nut"})
_REFUSED_OPTIONS = frozenset(
    {"-i", "-map", "-ss", "-sseof", "-t", "-to", "-filter_complex", "-lavfi", "-shortest"}
)
_MUXER_OPTIONS = frozenset({"-f", "-movflags", "-brand", "-metadata"})
_AUDIO_MODES = ("once", "copy", "none")


def process_video_chunks(
    input_path: str | Path,
    output_path: str | Path,
    processing_function: ProcessingFunction,
    chunk_duration: float | None = None,
    *,
    max_workers: int | None = None,
    progress: ProgressCallback | None = None,
    audio: str = "copy",
    overwrite: bool = True,
) -> bool:
    """Run ``processing_function`` on each video chunk of ``input_path``; join into ``output_path``.

    ``processing_function(chunk_in: Path, chunk_out: Path) -> None | bool`` is called once per
    chunk, possibly from several threads at once. ``chunk_in`` holds only video (a stream copy
    of one run of whole GOPs); the function must write ``chunk_out`` (same suffix as the output)
    with the same codec parameters for every chunk so the chunks can be joined by stream copy,
    keep the timing (frame rate, duration), and return None or True. Returning False, raising,
    or leaving ``chunk_out`` missing or empty fails the run with :class:`ChunkError` (our own
    ``MontageError`` subclasses pass through unchanged). Each call is admitted through the
    memory budget with the predicted need of one encode of the input's resolution.

    Audio: ``"copy"`` (the input's first audio stream, untouched) or ``"none"``.
    Returns True; every failure raises (nothing is left at ``output_path`` then).
    """
    if audio not in ("copy", "none"):
        raise ConfigError(f"audio must be 'copy' or 'none' here, got {audio!r}")
    _run_chunked(
        _ChunkedJob(
            Path(input_path),
            Path(output_path),
            processing_function,
            (),
            chunk_duration,
            max_workers,
            audio,
            progress,
            overwrite,
        )
    )
    return True


def transcode_in_chunks(
    input_path: str | Path,
    output_path: str | Path,
    output_args: Sequence[str],
    *,
    chunk_duration: float | None = None,
    max_workers: int | None = None,
    audio: str = "once",
    progress: ProgressCallback | None = None,
    overwrite: bool = True,
) -> ChunkReport:
    """Encode ``input_path`` with ffmpeg ``output_args`` chunk by chunk, exactly.

    ``output_args`` are ordinary ffmpeg output options (``-c:v libx264 -preset veryfast -crf 23
    -c:a aac -b:a 128k``). Each video chunk is encoded with them (audio off) through
    ``memory_safe_ffmpeg``, which reserves the chunk's predicted need in the budget, so the
    budget decides how many run at once. Audio: ``"once"`` encodes the whole audio stream with
    the same args in one job, ``"copy"`` copies it, ``"none"`` drops it. Options that cut or
    remap (``-map``, ``-ss``, ``-t``, ``-filter_complex``...) are refused: chunks need the whole
    stream. Video filters must be per-frame (a ``reverse`` would reverse each chunk).
    """
    refused = sorted(_REFUSED_OPTIONS.intersection(output_args))
    if refused:
        raise ConfigError(f"output_args may not contain {', '.join(refused)} when chunking")
    if audio not in _AUDIO_MODES:
        raise ConfigError(f"audio must be one of {', '.join(_AUDIO_MODES)}, got {audio!r}")
    return _run_chunked(
        _ChunkedJob(
            Path(input_path),
            Path(output_path),
            None,
            tuple(output_args),
            chunk_duration,
            max_workers,
            audio,
            progress,
            overwrite,
        )
    )


@dataclass(frozen=True)
class _ChunkedJob:
    src: Path
    dst: Path
    function: ProcessingFunction | None  # None: encode with output_args
    output_args: tuple[str, ...]
    chunk_duration_s: float | None
    max_workers: int | None
    audio: str
    progress: ProgressCallback | None
    overwrite: bool


def _check_paths(job: _ChunkedJob) -> tuple[Path, Path]:
    """Refuse writing over the input, or over an existing file unless asked."""
    src, dst = job.src.resolve(), job.dst.resolve()
    if src == dst or (dst.exists() and os.path.samefile(src, dst)):
        raise OutputError(f"output {job.dst} is the input file; choose another output path")
    if dst.exists() and not job.overwrite:
        raise OutputError(
            f"output {job.dst} exists and overwrite=False; remove it or allow overwriting"
        )
    if not dst.suffix:
        raise OutputError(f"output {job.dst} needs a suffix (.mp4, .mkv...) to pick its format")
    if not dst.parent.is_dir():
        raise OutputError(f"output folder {dst.parent} does not exist")
    return src, dst


@contextmanager
def _workspace(dst: Path) -> Iterator[Path]:
    """A managed folder beside the output (same disk), unless its path has a ``%``, which the
    segment muxer would read as a pattern: then the per-process temp folder."""
    from montage.resources import managed_temp_directory

    parent = dst.parent if "%" not in str(dst.parent) else None
    with managed_temp_directory(prefix=".montage-chunks-", dir=parent) as folder:
        yield folder


def _url(path: Path) -> str:
    """An explicit ``file:`` URL, so no name is read as an option or another protocol."""
    return "file:" + str(path)


def _ffmpeg(args: Sequence[str]) -> list[str]:
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]


def _run_ffmpeg(cmd: list[str], name: str, video_path: Path | None = None) -> float | None:
    """Run one ffmpeg through the memory-safe runner; return its tree's peak MiB."""
    from montage.ffmpeg.process import run_ffmpeg

    proc = run_ffmpeg(cmd, video_path=video_path, name=name)
    return proc.peak_memory_mb


def _split(src: Path, work: Path, plan: ChunkPlan) -> list[Path]:
    """Stream-copy the video into chunks starting exactly at the planned keyframe packets."""
    suffix = src.suffix.lower() if src.suffix.lower() in _CHUNK_SUFFIXES else ".nut"
    args = ["-i", _url(src), "-map", "0:v:0", "-c", "copy", "-f", "segment"]
    if plan.chunks > 1:
        args += ["-segment_frames", ",".join(str(f) for f in plan.start_frames[1:])]
    args += ["-reset_timestamps", "1", _url(work / f"in_%05d{suffix}")]
    _run_ffmpeg(_ffmpeg(args), "chunk split")
    chunks = sorted(work.glob(f"in_*{suffix}"))
    counts = tuple(scan_video(c).frame_count for c in chunks)
    if counts != plan.frames_per_chunk():
        raise FFmpegError(
            f"splitting {src} gave chunks of {counts} frames, expected {plan.frames_per_chunk()}"
        )
    return chunks


def _muxer_args(output_args: Sequence[str]) -> list[str]:
    """Container-level options of the user's args, which belong on the final mux."""
    picked: list[str] = []
    for option, value in itertools.pairwise(output_args):
        if option in _MUXER_OPTIONS:
            picked += [option, value]
    return picked


def _encode_cmd(job: _ChunkedJob, chunk_in: Path, chunk_out: Path, threads: int) -> list[str]:
    """One video chunk with the user's args; threads split the CPUs between the workers."""
    extra = [] if "-threads" in job.output_args else ["-threads", str(threads)]
    args = ["-i", _url(chunk_in), "-map", "0:v:0", "-an", "-sn", "-dn", *job.output_args]
    return _ffmpeg([*args, *extra, _url(chunk_out)])


def _audio_cmd(job: _ChunkedJob, src: Path, audio_out: Path) -> list[str]:
    """The whole audio stream in one encode with the user's args: no seams, no priming gaps."""
    args = ["-i", _url(src), "-map", "0:a:0", "-vn", "-sn", "-dn", *job.output_args]
    return _ffmpeg([*args, _url(audio_out)])


def _plan(job: _ChunkedJob, src: Path) -> tuple[MediaInfo, VideoIndex, ChunkPlan, float]:
    from montage.ffmpeg.probe import probe

    media = probe(src, require_video=True)
    index = scan_video(src)
    if index.frame_count == 0:
        raise FFmpegError(f"{src} has a video stream without frames; nothing to chunk")
    chunk_s = job.chunk_duration_s or default_chunk_duration_s(index.duration_s)
    plan = plan_chunks(index, chunk_s)
    return media, index, plan, chunk_s


def _join(
    work: Path,
    outs: Sequence[Path],
    audio_src: Path | None,
    target: Path,
    muxer: Sequence[str],
    subtitles: tuple[Path, Sequence[tuple[int, str]]] | None = None,
) -> None:
    """Concat demuxer over our list file (plain relative names, default safe mode) + audio,
    + ``subtitles``: the source and the ``(k, encoder)`` of each subtitle stream it keeps."""
    listing = work / "concat.txt"
    listing.write_text("".join(f"file '{p.name}'\n" for p in outs), encoding="utf-8")
    inputs = ["-f", "concat", "-i", _url(listing)]
    maps = ["-map", "0:v:0"]
    if audio_src is not None:
        inputs += ["-i", _url(audio_src)]
        maps += ["-map", "1:a:0"]
    codecs: list[str] = []
    if subtitles is not None and subtitles[1]:
        src, kept = subtitles
        n = 2 if audio_src is not None else 1
        inputs += ["-i", _url(src)]
        for out_k, (k, codec) in enumerate(kept):
            maps += ["-map", f"{n}:s:{k}"]
            codecs += [f"-c:s:{out_k}", codec]
    args = [*inputs, *maps]
    if target.suffix.lower() in MP4_LIKE:
        muxer = [*muxer, "-write_tmcd", "0"]  # data/timecode streams are not carried over
    _run_ffmpeg(_ffmpeg([*args, "-c", "copy", *codecs, *muxer, _url(target)]), "chunk join")


def _verify(src: Path, index: VideoIndex, joined: Path, audio: str) -> VideoIndex:
    """The joined file must have the input's duration (within ~a frame) and, at the same
    frame rate, exactly its frame count."""
    from montage.ffmpeg.probe import probe

    out = scan_video(joined)
    frame_s = 1.0 / index.frame_rate if index.frame_rate else 0.05
    if abs(out.duration_s - index.duration_s) > 1.5 * frame_s:
        raise FFmpegError(
            f"chunked output lasts {out.duration_s:.3f} s but {src} lasts "
            f"{index.duration_s:.3f} s; the output was not written"
        )
    in_fps, out_fps = index.frame_rate, out.frame_rate
    same_rate = bool(in_fps and out_fps and abs(out_fps - in_fps) < 0.01 * in_fps)
    if same_rate and out.frame_count != index.frame_count:
        raise FFmpegError(
            f"chunked output has {out.frame_count} frames but {src} has "
            f"{index.frame_count}; the output was not written"
        )
    if audio in ("once", "copy") and not probe(joined).has_audio:
        raise FFmpegError(f"chunked output of {src} lost its audio; the output was not written")
    return out


def _chunk_jobs(
    job: _ChunkedJob,
    runner: _JobRunner,
    media: MediaInfo,
    chunk_ins: Sequence[Path],
    chunk_outs: Sequence[Path],
    threads: int,
) -> list[Callable[[], float | None]]:
    """One callable per video chunk: an ffmpeg encode, or the user's function."""
    jobs: list[Callable[[], float | None]] = []
    fn = job.function
    for i, (cin, cout) in enumerate(zip(chunk_ins, chunk_outs, strict=True)):
        if fn is None:
            cmd = _encode_cmd(job, cin, cout, threads)
            jobs.append(functools.partial(runner.ffmpeg, cmd, cin.name, cin))
        else:
            jobs.append(functools.partial(_function_job, fn, media, i, cin, cout))
    return jobs


def _run_chunked(job: _ChunkedJob) -> ChunkReport:
    from montage.ffmpeg.profiles import cpu_count
    from montage.resources import managed_tempfile

    started = time.monotonic()
    src, dst = _check_paths(job)
    media, index, plan, chunk_s = _plan(job, src)
    if "-sn" in job.output_args:
        subtitles: list[tuple[int, str]] = []
        warnings = data_warnings(media)
    else:
        subtitles, warnings = whole_file_subtitles(media, dst)
    for warning in warnings:
        logger.warning("%s", warning)
    workers = max(1, job.max_workers or min(cpu_count(), plan.chunks))
    audio = job.audio if media.has_audio else "absent"
    logger.info(
        "chunking %s: %d frames, %.1f s -> %d chunks of ~%.0f s, %d workers, audio %s",
        src.name,
        index.frame_count,
        index.duration_s,
        plan.chunks,
        chunk_s,
        workers,
        audio,
    )
    with _workspace(dst) as work:
        chunk_ins = _split(src, work, plan)
        split_done = time.monotonic()
        out_suffix = dst.suffix
        chunk_outs = [work / f"out_{i:05d}{out_suffix}" for i in range(len(chunk_ins))]
        runner = _JobRunner(workers)
        jobs = _chunk_jobs(
            job, runner, media, chunk_ins, chunk_outs, max(1, cpu_count() // workers)
        )
        audio_src: Path | None = src if audio == "copy" else None
        if audio == "once":
            audio_src = work / f"audio{out_suffix}"
            cmd = _audio_cmd(job, src, audio_src)
            jobs.append(lambda: runner.ffmpeg(cmd, "audio (whole file)"))
        peaks = runner.run(jobs, len(chunk_outs), job.progress)
        process_done = time.monotonic()
        with managed_tempfile(suffix=out_suffix, prefix=f".{dst.stem}.", dir=dst.parent) as tmp:
            muxer = _muxer_args(job.output_args)
            _join(work, chunk_outs, audio_src, tmp, muxer, (src, subtitles))
            out = _verify(src, index, tmp, audio)
            os.replace(tmp, dst)
    finished = time.monotonic()
    known = [p for p in peaks[: len(chunk_outs)] if p is not None]
    return ChunkReport(
        chunks=plan.chunks,
        chunk_duration_s=chunk_s,
        workers=workers,
        input_frames=index.frame_count,
        output_frames=out.frame_count,
        input_duration_s=index.duration_s,
        output_duration_s=out.duration_s,
        audio=audio,
        split_s=split_done - started,
        process_s=process_done - split_done,
        join_s=finished - process_done,
        wall_s=finished - started,
        peak_chunk_memory_mb=max(known) if known else None,
        warnings=tuple(warnings),
    )
