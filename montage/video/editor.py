"""``VideoEditor``: cut segments out of videos and join them, exactly and in flat memory.

Modes: ``copy`` (stream copy, starts snapped back to keyframes: fastest, one process),
``accurate`` (every segment re-encoded, frame-exact), ``smart`` (frame-exact, re-encoding
only the partial GOPs at each cut and stream-copying the rest; verified by decoding, and
falling back to accurate when it cannot be trusted), ``auto`` (copy when every cut already
sits on a keyframe, else smart where possible, else accurate).

Safety: inputs are validated before anything is written; the output goes to a temp name in
its folder and is renamed into place only when complete; the input is never the output
(compared by device and inode, so links count); every temp file goes on any exit.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from montage.errors import OutputError
from montage.resources import release_freed_memory
from montage.video import encoding, subtitles
from montage.video.assemble import Assembly, build_copy, build_pieces, build_transitions
from montage.video.cutting import (
    FrameRange,
    SourceIndex,
    build_index,
    can_smart_cut,
    on_keyframe_grid,
    snap,
)
from montage.video.encoding import EncoderChoice
from montage.video.inputs import check_unchanged, fingerprint
from montage.video.pieces import EncodeSettings, Target
from montage.video.runner import Job, JobRunner, ProgressCallback, WorkDir
from montage.video.segments import VideoSegment
from montage.video.verify import check_duration, verify_join

log = logging.getLogger(__name__)

MODES = ("auto", "copy", "accurate", "smart")


@dataclass(frozen=True)
class SegmentResult:
    """Where one segment was actually cut (source seconds)."""

    index: int
    input_file: str
    requested_start_s: float
    requested_end_s: float
    actual_start_s: float
    actual_end_s: float


@dataclass(frozen=True)
class EditReport:
    """What an edit did: the mode used (and why), the cuts, the output, time and memory."""

    output_file: str
    mode: str
    requested_mode: str
    segments: tuple[SegmentResult, ...]
    output_duration_s: float
    expected_duration_s: float
    expected_frames: int | None
    peak_memory_mb: float  # the largest ffmpeg job's process-tree peak
    parent_peak_rss_mb: float
    elapsed_s: float
    ffmpeg_runs: int
    transitions: bool
    fallback_reason: str | None = None
    encoder: dict[str, object] | None = None  # the re-encoding settings used (None: copy)
    warnings: tuple[str, ...] = ()  # streams not kept (bitmap subtitles, timecode...), and why

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class VideoEditor:
    """Cuts and joins segments with every ffmpeg child budgeted, capped and cleaned up.

    ``preset`` (x264/x265 preset name) and ``crf`` (0-51, lower is better and larger) set the
    re-encodes of accurate and smart mode and of crossfades; None means the default (ultrafast,
    CRF 18; see ``montage.video.encoding``). Memory pressure can still lower them.
    """

    def __init__(
        self,
        memory_limit_mb: float | None = None,
        *,
        preset: str | None = None,
        crf: int | None = None,
    ) -> None:
        if memory_limit_mb is not None and not (
            math.isfinite(memory_limit_mb) and memory_limit_mb > 0
        ):
            raise ValueError(f"memory_limit_mb must be a positive number, got {memory_limit_mb!r}")
        self.memory_limit_mb = memory_limit_mb
        self.encoder = EncoderChoice(preset, crf)

    def extract_and_concatenate_efficient(
        self,
        input_file: str | os.PathLike[str],
        segments: Sequence[VideoSegment],
        output_file: str | os.PathLike[str],
        apply_transitions: bool = False,
        mode: str = "auto",
        transition_duration: float = 0.5,
        progress: ProgressCallback | None = None,
        overwrite: bool = True,
        strict: bool = False,
        preset: str | None = None,
        crf: int | None = None,
    ) -> EditReport:
        """Write ``segments`` (in order) to ``output_file``; see the module doc for modes.

        ``preset``/``crf`` override the editor's for this call (see the class doc).

        Segments past their media's end are clamped with a warning (refused when ``strict``).
        Raises ValueError for bad arguments, ``InvalidMediaError`` subclasses for bad inputs,
        ``OutputError`` for an unusable output path; no output file exists after an error.
        """
        started = time.monotonic()
        _check_arguments(segments, mode, apply_transitions, transition_duration)
        choice = EncoderChoice(preset, crf).over(self.encoder).over(encoding.current_defaults())
        from montage.ffmpeg.probe import probe

        infos = {Path(os.fspath(input_file)).resolve(): probe(input_file, require_video=True)}
        for path in sorted({s.path for s in segments}):
            if path.resolve() not in infos:
                infos[path.resolve()] = probe(path, require_video=True)
        out = Path(os.fspath(output_file))
        _check_output(out, [Path(os.fspath(input_file)), *(s.path for s in segments)], overwrite)
        fingerprints = {path: fingerprint(path) for path in infos}
        clamped = [s.clamp_to(infos[s.path.resolve()].duration_s, strict=strict) for s in segments]
        durations = {key: info.duration_s for key, info in infos.items()}
        used_sources = [infos[key] for key in dict.fromkeys(s.path.resolve() for s in clamped)]
        streams = subtitles.choose(used_sources, out)
        # copy needs only the packets around each cut; anything else needs every frame
        quick = mode in ("copy", "auto") and not apply_transitions
        ranges = _cut_ranges(clamped, durations, boundaries_only=quick)
        release_freed_memory()  # scanning the sources' packet indexes left freed heap pages
        runner = JobRunner(self.memory_limit_mb, progress)
        chosen, reason = _choose_mode(mode, ranges, apply_transitions)
        if quick and chosen != "copy":
            ranges = _cut_ranges(clamped, durations, boundaries_only=False)
        enc = None if chosen == "copy" else self._encode_settings(ranges[0].source, choice)
        plan, used, reason, enc, dropped = self._produce(
            ranges,
            out,
            chosen,
            reason,
            runner,
            transition_duration if apply_transitions else 0,
            enc,
            overwrite=overwrite,
            fingerprints=fingerprints,
            tracks=streams.tracks,
        )
        for warning in (*streams.warnings, *dropped):
            log.warning("%s", warning)
        from montage.ffmpeg.probe import probe as probe_output

        results = tuple(
            SegmentResult(i, str(s.input_file), s.start_time, s.end_time, a, b)
            for i, (s, (a, b)) in enumerate(zip(segments, plan.spans_s))
        )
        runner.report(1.0, "done")
        return EditReport(
            output_file=str(out),
            mode=used,
            requested_mode=mode,
            segments=results,
            output_duration_s=probe_output(out).duration_s,
            expected_duration_s=plan.expected_duration_s,
            expected_frames=plan.expected_frames,
            peak_memory_mb=runner.peak_memory_mb,
            parent_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            elapsed_s=time.monotonic() - started,
            ffmpeg_runs=runner.runs,
            transitions=apply_transitions,
            fallback_reason=reason,
            encoder=encoding.describe(enc) if enc is not None else None,
            warnings=(*streams.warnings, *dropped),
        )

    def _produce(
        self,
        ranges: list[FrameRange],
        out: Path,
        mode: str,
        reason: str | None,
        runner: JobRunner,
        fade_s: float,
        enc: EncodeSettings | None,
        *,
        overwrite: bool,
        fingerprints: dict[Path, tuple[int, int]],
        tracks: tuple[subtitles.Track, ...] = (),
    ) -> tuple[Assembly, str, str | None, EncodeSettings | None, list[str]]:
        """Build and run the plan into a temp file beside ``out``, then rename it into place.
        Also returns a warning for each subtitle track of ``tracks`` left out (no cue in it)."""
        from montage.resources import managed_temp_directory, register_cleanup, unregister_cleanup

        temp = out.with_name(f".{out.stem}.montage-{secrets.token_hex(4)}{out.suffix}")
        token = register_cleanup(temp)
        try:
            with managed_temp_directory(prefix="montage_edit_") as folder:
                work = WorkDir(folder)
                plan, used, reason, enc = self._run_mode(
                    work, ranges, temp, mode, reason, runner, fade_s, enc
                )
                dropped = _add_subtitles(work, plan, ranges, tracks, temp, runner)
            check_unchanged(
                fingerprints,
                "read; no output was written: edit a copy that nothing else is writing",
            )
            check_duration(temp, plan.expected_duration_s, used, ranges)
            _publish(temp, out, overwrite)
        finally:
            temp.unlink(missing_ok=True)
            unregister_cleanup(token)
        return plan, used, reason, enc, dropped

    def _run_mode(
        self,
        work: WorkDir,
        ranges: list[FrameRange],
        temp: Path,
        mode: str,
        reason: str | None,
        runner: JobRunner,
        fade_s: float,
        enc: EncodeSettings | None,
    ) -> tuple[Assembly, str, str | None, EncodeSettings | None]:
        from montage.ffmpeg.binary import ffmpeg_path

        ffmpeg = ffmpeg_path()
        first = ranges[0].source
        target = Target.for_sources(first.fmt, [rng.source.fmt for rng in ranges])
        abr, ts = first.fmt.audio_bit_rate, _timescale(first)
        if mode == "copy" or enc is None:
            plan = build_copy(ffmpeg, work, ranges, temp)
            runner.run_all(plan.jobs)
            return plan, "copy", reason, None
        if fade_s > 0:
            fade_frames = max(1, round(fade_s * float(target.fps)))
            plan = build_transitions(
                ffmpeg,
                work,
                ranges,
                target,
                enc,
                fade_frames,
                temp,
                audio_bit_rate=abr,
                timescale=ts,
            )
            runner.run_all(plan.jobs)
            return plan, "accurate", reason, enc
        if mode == "smart":
            smart_enc = encoding.smart_settings(first, enc)
            plan = build_pieces(
                ffmpeg,
                work,
                ranges,
                target,
                enc,
                temp,
                smart_enc=smart_enc,
                audio_bit_rate=abr,
                timescale=ts,
            )
            runner.run_all(plan.jobs, share=0.8)
            why = verify_join(ffmpeg, temp, plan, runner)
            if why is None:
                return plan, "smart", reason, smart_enc
            log.warning(
                "smart cut of %s failed verification (%s); re-encoding accurately", temp.name, why
            )
            reason = f"smart cut failed verification: {why}"
        plan = build_pieces(
            ffmpeg, work, ranges, target, enc, temp, audio_bit_rate=abr, timescale=ts
        )
        runner.run_all(plan.jobs)
        return plan, "accurate", reason, enc

    def _encode_settings(self, source: SourceIndex, choice: EncoderChoice) -> EncodeSettings:
        """The chosen preset/CRF with bounded threads and lookahead, lowered if memory is short."""
        return encoding.fit_to_memory(encoding.base_settings(choice), source, self.memory_limit_mb)


def _add_subtitles(
    work: WorkDir,
    plan: Assembly,
    ranges: list[FrameRange],
    tracks: tuple[subtitles.Track, ...],
    temp: Path,
    runner: JobRunner,
) -> list[str]:
    """Cut the kept subtitle tracks to the plan's segments and mux them into ``temp`` (one
    stream-copy pass into a second temp beside it, renamed over it); the warnings of tracks
    that had no cue inside the cuts."""
    if not tracks:
        return []
    from montage.ffmpeg.binary import ffmpeg_path
    from montage.ffmpeg.probe import probe
    from montage.resources import register_cleanup, unregister_cleanup

    ffmpeg = ffmpeg_path()
    pieces = [
        subtitles.Piece(rng.source.path, rng.source.start_offset_s, a, b, out_s)
        for rng, (a, b), out_s in zip(ranges, plan.spans_s, plan.starts_out_s)
    ]
    jobs, files = subtitles.extract_jobs(ffmpeg, work, tracks, pieces)
    runner.run_all(jobs, share=0.0)
    kept: list[tuple[subtitles.Track, Path]] = []
    dropped: list[str] = []
    for track, row in zip(tracks, files):
        text = subtitles.build_track(row, pieces)
        if text is None:
            dropped.append(
                f"subtitle track {track.position + 1} not kept: no cue falls inside the cuts"
            )
            continue
        path = work.name(f"track{track.position}_", ".ass")
        path.write_text(text, encoding="utf-8")
        kept.append((track, path))
    if not kept:
        return dropped
    video = probe(temp).video
    timescale = video.time_base.denominator if video and video.time_base else None
    muxed = temp.with_name(f"{temp.stem}.subs{temp.suffix}")
    token = register_cleanup(muxed)
    try:
        cmd = subtitles.mux_cmd(ffmpeg, temp, kept, muxed, timescale=timescale)
        runner.run(Job(cmd, "subtitles-mux", 0.0, plan.expected_duration_s), scale=0.0)
        os.replace(muxed, temp)
    finally:
        muxed.unlink(missing_ok=True)
        unregister_cleanup(token)
    return dropped


def _cut_ranges(
    segments: list[VideoSegment], durations_s: dict[Path, float], *, boundaries_only: bool
) -> list[FrameRange]:
    """Snap every segment to real frames, indexing each source once.

    ``boundaries_only`` reads packets just around each cut (enough for copy mode and for
    deciding whether cuts sit on keyframes) instead of every packet of every segment.
    """
    windows: dict[Path, list[tuple[float, float]]] = {}
    for seg in segments:
        spans = windows.setdefault(seg.path.resolve(), [])
        if boundaries_only:
            spans += [(seg.start_time, seg.start_time), (seg.end_time, seg.end_time)]
        else:
            spans.append((seg.start_time, seg.end_time))
    indexes = {
        key: build_index(key, spans, duration_s=durations_s[key]) for key, spans in windows.items()
    }
    return [snap(seg, indexes[seg.path.resolve()]) for seg in segments]


def _publish(temp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished file into place: replace atomically, or (``overwrite=False``) link
    it in so an output that appeared meanwhile is still never overwritten."""
    if overwrite:
        os.replace(temp, out)
        return
    try:
        os.link(temp, out)
    except FileExistsError:
        raise OutputError(f"output {out} exists; pass overwrite=True to replace it") from None
    except OSError:  # no hard links here (some network/FAT file systems)
        if out.exists():
            raise OutputError(f"output {out} exists; pass overwrite=True to replace it") from None
        os.replace(temp, out)


def _check_arguments(
    segments: Sequence[VideoSegment], mode: str, transitions: bool, fade_s: float
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not segments:
        raise ValueError("segments is empty: give at least one VideoSegment")
    for i, seg in enumerate(segments):
        if not isinstance(seg, VideoSegment):
            raise ValueError(f"segments[{i}] is {seg!r}, not a VideoSegment")
    if transitions:
        if isinstance(fade_s, bool) or not isinstance(fade_s, (int, float)):
            raise ValueError(f"transition_duration must be seconds, got {fade_s!r}")
        if not (math.isfinite(fade_s) and fade_s > 0):
            raise ValueError(f"transition_duration must be > 0 seconds, got {fade_s!r}")
        if mode == "copy":
            raise ValueError("transitions need re-encoding; use mode='accurate' or 'auto'")


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return a.resolve() == b.resolve()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _check_output(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse an output that is an input, exists (unless ``overwrite``) or cannot be made."""
    for source in inputs:
        if _same_file(out, source):
            raise OutputError(f"output {out} is the input {source}; choose another output path")
    if not out.suffix:
        raise OutputError(f"output {out} needs an extension (.mp4, .mkv, .mov) to pick a format")
    if out.is_dir():
        raise OutputError(f"output {out} is a directory")
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} exists; pass overwrite=True to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {parent} is not writable")


def _choose_mode(mode: str, ranges: list[FrameRange], transitions: bool) -> tuple[str, str | None]:
    """The mode to run and, when it differs from the request, why."""
    sources = list({id(r.source): r.source for r in ranges}.values())
    compatible = all(sources[0].fmt.copy_compatible(s.fmt) for s in sources[1:])
    if mode == "copy" and not compatible:
        raise ValueError("copy mode needs every source in the same format; use 'accurate'")
    if transitions:
        return "accurate", None if mode in ("accurate", "auto") else "transitions re-encode"
    if mode in ("copy", "accurate"):
        return mode, None
    if mode == "auto" and compatible and all(on_keyframe_grid(r) for r in ranges):
        return "copy", None
    why = can_smart_cut(sources)
    if why is not None:
        log.info("smart cut not possible (%s); re-encoding accurately", why)
        return "accurate", f"smart cut not possible: {why}"
    return "smart", None


def _timescale(source: SourceIndex) -> int | None:
    tb = source.fmt.time_base
    return tb.denominator if tb.numerator == 1 and tb.denominator <= 1_000_000 else None
