"""The ``montage-video`` commands: each parses, calls the library, and renders. Nothing more."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from montage.cli import render
from montage.cli.app import AppState, app
from montage.cli.timecode import format_time, parse_range
from montage.ffmpeg.command import PRESET_ORDER

MODES = click.Choice(["auto", "copy", "accurate", "smart"])
_existing_file = click.Path(exists=False, dir_okay=True, path_type=Path)
_report_option = click.option(
    "--memory-report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a memory timeline of the job (.png or .html; PNG needs the 'plot' extra).",
)
PRESETS = PRESET_ORDER  # x264/x265 presets, fastest first (the ffmpeg layer's list)
_preset_option = click.option(
    "--preset",
    type=click.Choice(PRESETS, case_sensitive=False),
    default=None,
    help="Encoder preset of re-encoded parts (accurate/smart/transitions) [default: ultrafast]. "
    "Slower presets give smaller files for more time and memory.",
)
_crf_option = click.option(
    "--crf",
    type=click.IntRange(0, 51),
    default=None,
    help="Quality of re-encoded parts, 0-51: lower is better and larger [default: 18].",
)


def encoder_options(command: Any) -> Any:
    """``--preset`` and ``--crf`` for a command that may re-encode."""
    return _preset_option(_crf_option(command))


@contextlib.contextmanager
def _job(state: AppState, report: Path | None, title: str) -> Iterator[None]:
    """Set up memory management and, if asked, record the job's memory for a report."""
    state.setup()
    if report is None:
        yield
        return
    from montage.report import MemoryRecorder, check_report_path, write_memory_report

    check_report_path(report)
    with MemoryRecorder() as recorder:
        yield
    path = write_memory_report(recorder, report, title=title)
    if not state.quiet:
        render.err.print(f"memory report: [bold]{path}[/]")


def _refuse_existing(output: Path, overwrite: bool) -> None:
    from montage.errors import OutputError

    if output.exists() and not overwrite:
        raise OutputError(f"{output}: already exists; pass -y/--overwrite to replace it")


@app.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
def status(state: AppState, as_json: bool) -> None:
    """Memory ceiling and its source, usage, pressure level, PSI and tracked processes."""
    from montage.runtime import get_memory_status

    state.setup(start_monitor=False)
    data = get_memory_status()
    if as_json:
        render.print_json(data)
        return
    for table in render.status_tables(data):
        render.out.print(table)


@app.command()
@click.argument("file", type=_existing_file)
@click.option("--json", "as_json", is_flag=True, help="Print media facts and config as JSON.")
@click.option("--trusted", is_flag=True, help="Allow playlist-style inputs (hls, concat).")
@click.pass_obj
def probe(state: AppState, file: Path, as_json: bool, trusted: bool) -> None:
    """Media facts of FILE and the safe processing config for it."""
    from montage.adaptive import get_safe_processing_config
    from montage.ffmpeg.probe import probe as probe_media

    state.setup(start_monitor=False)
    info = probe_media(file, trusted=trusted)
    config = get_safe_processing_config(file) if info.has_video else None
    media = info.to_dict()
    if as_json:
        render.print_json({"media": media, "config": config.to_dict() if config else None})
        return
    render.out.print(render.media_table(media))
    if config is not None:
        rows = config.to_dict()
        reasons = rows.pop("reasons", {}) or {}
        rows.update({f"why {key}": text for key, text in reasons.items()})
        render.out.print(render.kv_table("Safe processing config", rows))


@app.command()
@click.argument("file", type=_existing_file)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON here.")
@click.option("--fast", is_flag=True, help="Keyframes only: much faster, coarser.")
@click.option("--window", default=1.0, show_default=True, help="Window length in seconds.")
@_report_option
@click.pass_obj
def analyze(
    state: AppState,
    file: Path,
    as_json: bool,
    out: Path | None,
    fast: bool,
    window: float,
    memory_report: Path | None,
) -> None:
    """Scene changes, audio levels, silences, motion and highlight candidates of FILE."""
    import json

    from montage.video.analysis import analyze_video

    with (
        _job(state, memory_report, f"analyze {file.name}"),
        render.progress_bar("analysing", quiet=state.quiet or as_json) as progress,
    ):
        result = analyze_video(file, window_s=window, fast=fast, progress=progress)
    data = result.to_dict()
    if out is not None:
        out.write_text(json.dumps(data, indent=2, default=str))
    if as_json:
        render.print_json(data)
    elif not state.quiet:
        for table in render.analysis_tables(data):
            render.out.print(table)


@app.command()
@click.argument("input_file", metavar="INPUT", type=_existing_file)
@click.option(
    "-s",
    "--segment",
    "segments",
    multiple=True,
    required=True,
    help="START-END, e.g. 10-40, 1:00-1:30 or 0:01:00.000-0:01:30.500 (repeatable).",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mode", type=MODES, default="auto", show_default=True)
@click.option("--transitions", is_flag=True, help="Crossfade between segments.")
@click.option("--transition-duration", default=0.5, show_default=True)
@click.option("-y", "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--strict", is_flag=True, help="Refuse segments past the end (default: clamp).")
@click.option("--json", "as_json", is_flag=True, help="Print the edit report as JSON.")
@encoder_options
@_report_option
@click.pass_obj
def extract(
    state: AppState,
    input_file: Path,
    segments: tuple[str, ...],
    output: Path,
    mode: str,
    transitions: bool,
    transition_duration: float,
    overwrite: bool,
    strict: bool,
    as_json: bool,
    preset: str | None,
    crf: int | None,
    memory_report: Path | None,
) -> None:
    """Cut segments out of INPUT and join them into OUTPUT."""
    from montage.video.editor import VideoEditor
    from montage.video.segments import VideoSegment

    parsed = []
    for text in segments:
        try:
            parsed.append(parse_range(text))
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="-s/--segment") from None
    _refuse_existing(output, overwrite)
    segs = [
        VideoSegment(a, b, str(input_file), segment_id=f"s{i + 1}")
        for i, (a, b) in enumerate(parsed)
    ]
    with (
        _job(state, memory_report, f"extract {input_file.name}"),
        render.progress_bar("extracting", quiet=state.quiet or as_json) as progress,
    ):
        report = VideoEditor().extract_and_concatenate_efficient(
            str(input_file),
            segs,
            str(output),
            apply_transitions=transitions,
            mode=mode,
            transition_duration=transition_duration,
            progress=progress,
            overwrite=True,
            strict=strict,
            preset=preset,
            crf=crf,
        )
    _print_report(state, as_json, report, output)


@app.command()
@click.argument("input_file", metavar="INPUT", type=_existing_file)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--count", default=3, show_default=True, help="How many highlights.")
@click.option("--length", default=5.0, show_default=True, help="Seconds per highlight.")
@click.option("--mode", type=MODES, default="auto", show_default=True)
@click.option("--transitions", is_flag=True, help="Crossfade between highlights.")
@click.option("--fast", is_flag=True, help="Analyse keyframes only.")
@click.option("-y", "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the job report as JSON.")
@encoder_options
@_report_option
@click.pass_obj
def highlights(
    state: AppState,
    input_file: Path,
    output: Path,
    count: int,
    length: float,
    mode: str,
    transitions: bool,
    fast: bool,
    overwrite: bool,
    as_json: bool,
    preset: str | None,
    crf: int | None,
    memory_report: Path | None,
) -> None:
    """The main job: analyse INPUT, pick its best moments and join them into OUTPUT."""
    from montage.video.highlights import make_highlights

    if count < 1:
        raise click.BadParameter("must be at least 1", param_hint="--count")
    if not length > 0:
        raise click.BadParameter("must be a positive number of seconds", param_hint="--length")
    _refuse_existing(output, overwrite)
    with (
        _job(state, memory_report, f"highlights {input_file.name}"),
        render.progress_bar("highlights", quiet=state.quiet or as_json) as progress,
    ):
        report = make_highlights(
            input_file,
            output,
            count=count,
            length_s=length,
            mode=mode,
            transitions=transitions,
            fast=fast,
            progress=progress,
            preset=preset,
            crf=crf,
        )
    if as_json:
        render.print_json(report.to_dict())
    elif not state.quiet:
        for seg in report.segments:
            render.err.print(
                f"  {seg.segment_id}: {format_time(seg.start_time)} - {format_time(seg.end_time)}"
            )
        render.err.print(f"wrote [bold]{output}[/] in {report.elapsed_s:.1f} s")


@app.command(context_settings={"ignore_unknown_options": True})
@click.argument("input_file", metavar="INPUT", type=_existing_file)
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("ffmpeg_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--chunk-duration", type=float, help="Seconds per chunk (default: adaptive).")
@click.option("-y", "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@_report_option
@click.pass_obj
def chunked(
    state: AppState,
    input_file: Path,
    output: Path,
    ffmpeg_args: tuple[str, ...],
    chunk_duration: float | None,
    overwrite: bool,
    memory_report: Path | None,
) -> None:
    """Transcode a large INPUT in keyframe-exact chunks: chunked IN OUT -- -c:v libx264 ..."""
    from montage.ffmpeg.chunks import transcode_in_chunks

    _refuse_existing(output, overwrite)
    args = list(ffmpeg_args) or ["-c:v", "libx264", "-preset", "veryfast"]
    with (
        _job(state, memory_report, f"chunked {input_file.name}"),
        render.progress_bar("transcoding", quiet=state.quiet) as progress,
    ):
        report = transcode_in_chunks(
            input_file,
            output,
            args,
            chunk_duration=chunk_duration,
            progress=lambda done, total: progress(done / max(total, 1), f"chunk {done}/{total}"),
        )
    if not state.quiet:
        render.err.print(f"wrote [bold]{output}[/]  {report}")


@app.command(context_settings={"ignore_unknown_options": True})
@click.argument("ffmpeg_argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--max-memory", metavar="SIZE", help="Kill ffmpeg above this (e.g. 400M).")
@_report_option
@click.pass_obj
def run(
    state: AppState,
    ffmpeg_argv: tuple[str, ...],
    max_memory: str | None,
    memory_report: Path | None,
) -> None:
    """Run any ffmpeg command memory-safely: run -- ffmpeg -i in.mp4 ... out.mp4"""
    from montage.ffmpeg.command import FFmpegCommand, build_memory_safe_ffmpeg_command
    from montage.ffmpeg.process import memory_safe_ffmpeg
    from montage.memory.limits import parse_memory_size

    argv = list(ffmpeg_argv)
    if argv and Path(argv[0]).name != "ffmpeg" and not argv[0].startswith("-"):
        raise click.BadParameter("the command must start with ffmpeg", param_hint="FFMPEG_ARGV")
    if argv and argv[0].startswith("-"):
        argv.insert(0, "ffmpeg")
    limit_mb = parse_memory_size(max_memory) / 1048576 if max_memory else None
    first_input = next(iter(FFmpegCommand.parse(argv).inputs), None)
    total_s = _input_duration(first_input.url if first_input else None)
    safe = build_memory_safe_ffmpeg_command(argv)

    with (
        _job(state, memory_report, "ffmpeg run"),
        render.progress_bar("ffmpeg", quiet=state.quiet) as progress,
    ):

        def on_progress(p: Any) -> None:
            if total_s:
                progress(p.out_time_s / total_s, f"{p.frame} frames, {p.speed or 0:.2f}x")

        with memory_safe_ffmpeg(safe, max_memory_mb=limit_mb, on_progress=on_progress) as proc:
            proc.wait()
    if not state.quiet:
        render.err.print(f"ffmpeg finished; peak memory {proc.peak_memory_mb:.1f} MiB")


def _input_duration(url: str | None) -> float | None:
    if (
        not url
        or url.startswith(("pipe:", "-"))
        or (":" in url.split("/")[0] and not url.startswith("file:"))
    ):
        return None
    from montage.ffmpeg.probe import probe as probe_media

    try:
        return probe_media(url.removeprefix("file:")).duration_s
    except Exception:
        return None


def _print_report(state: AppState, as_json: bool, report: Any, output: Path) -> None:
    data = report.to_dict() if hasattr(report, "to_dict") else {"report": repr(report)}
    if as_json:
        render.print_json(data)
    elif not state.quiet:
        render.err.print(f"wrote [bold]{output}[/]")
        keep = ("mode", "output_duration_s", "peak_memory_mb", "elapsed_s")
        rows = {k: data[k] for k in keep if k in data}
        encoder = data.get("encoder")
        if isinstance(encoder, dict):
            rows["encoder"] = (
                f"{encoder.get('encoder')} {encoder.get('preset')} crf {encoder.get('crf')}"
            )
        render.err.print(render.kv_table("Edit", rows))
