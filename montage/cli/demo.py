"""``montage-video demo``: the main job on a built-in sample, under a 512 MB limit."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from montage.cli import render
from montage.cli.app import AppState, app
from montage.cli.commands import encoder_options
from montage.cli.timecode import format_time

DEMO_LIMIT = "512M"


@app.command()
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to put the sample, the reel and the report (default: a new temp folder).",
)
@click.option("--duration", default=120.0, show_default=True, help="Sample length in seconds.")
@click.option("--size", default="1920x1080", show_default=True, help="Sample frame size.")
@encoder_options
@click.pass_obj
def demo(
    state: AppState,
    out_dir: Path | None,
    duration: float,
    size: str,
    preset: str | None,
    crf: int | None,
) -> None:
    """Make a 2-minute 1080p sample and cut a highlight reel from it under a 512 MB limit."""
    from montage.report import MemoryRecorder, plotting_available, write_memory_report
    from montage.runtime import get_memory_status
    from montage.video.highlights import make_highlights
    from montage.video.sample import make_sample_video

    if state.memory_limit is None:
        state.memory_limit = DEMO_LIMIT
    folder = out_dir or Path(tempfile.mkdtemp(prefix="montage-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    sample, reel = folder / "sample.mp4", folder / "highlights.mp4"
    report_path = folder / ("memory-report.png" if plotting_available() else "memory-report.html")

    def say(message: str) -> None:
        if not state.quiet:
            render.err.print(message)

    state.setup()
    say(f"[bold]Montage demo[/]: memory limit {state.memory_limit}, working in {folder}")
    started = time.monotonic()
    with MemoryRecorder() as recorder:
        with render.progress_bar("making sample", quiet=state.quiet) as progress:
            progress(0.0, f"{size}, {duration:.0f} s")
            make_sample_video(sample, duration_s=duration, size=size)
        with render.progress_bar("highlights", quiet=state.quiet) as progress:
            report = make_highlights(
                sample, reel, count=3, length_s=5.0, progress=progress, preset=preset, crf=crf
            )
    write_memory_report(recorder, report_path, title="montage-video demo")
    status = get_memory_status().get("memory", {})
    say(f"sample:  {sample}  ({duration:.0f} s, {size})")
    say(f"scene changes found: {', '.join(format_time(t) for t in report.analysis.scene_changes)}")
    for seg in report.segments:
        say(f"  {seg.segment_id}: {format_time(seg.start_time)} - {format_time(seg.end_time)}")
    say(f"reel:    {reel}")
    say(
        f"memory:  peak {recorder.peak_tree_mb:.0f} MiB for the whole process tree "
        f"(limit {state.memory_limit}, ceiling {status.get('total_mb', 0):.0f} MiB, "
        f"source {status.get('limit_source', '?')})"
    )
    say(f"report:  {report_path}")
    say(f"done in {time.monotonic() - started:.1f} s")
