"""What the CLI shows a person: rich tables and progress on stderr, JSON on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from montage.cli.timecode import format_time

ProgressCallback = Callable[[float, str], None]

err = Console(stderr=True)
out = Console()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(description: str, *, quiet: bool) -> Iterator[ProgressCallback]:
    """A rich progress bar with ETA; yields ``callback(fraction, message)``."""
    if quiet:
        yield lambda fraction, message: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[message]}", style="dim"),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(description, total=1.0, message="")

        def update(fraction: float, message: str) -> None:
            progress.update(task, completed=max(0.0, min(1.0, fraction)), message=message[:48])

        try:
            yield update
        except BaseException:
            progress.update(task, visible=False)  # the error line says what happened
            raise
        progress.update(task, completed=1.0)


def kv_table(title: str, rows: Mapping[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    return table


def _sampler(config: Mapping[str, Any]) -> str:
    kind = config.get("sampler", "?")
    if kind == "native":
        return "native (C thread)"
    reason = config.get("sampler_reason")
    return f"{kind} ({reason})" if reason else str(kind)


def status_tables(status: Mapping[str, Any]) -> list[Table]:
    mem = status.get("memory", {})
    level = mem.get("pressure_level", "?")
    tables = [
        kv_table(
            "Memory",
            {
                "ceiling": f"{mem.get('total_mb', 0):.0f} MiB  ({mem.get('limit_source', '?')})",
                "budget": _mb(mem.get("budget_mb")),
                "used": f"{mem.get('used_mb', 0):.0f} MiB ({mem.get('percent_used', 0):.1f} %)",
                "available": f"{mem.get('available_mb', 0):.0f} MiB",
                "pressure": f"[{_level_style(level)}]{level}[/]",
                "this process": f"{mem.get('process_memory_mb', 0):.1f} MiB",
                "process tree": f"{mem.get('tree_memory_mb', 0):.1f} MiB",
                "swap used": f"{mem.get('swap_used_mb', 0):.0f} MiB",
                "PSI some/full avg10": f"{_pct(mem.get('psi_some_avg10'))} / "
                f"{_pct(mem.get('psi_full_avg10'))}",
                "sampler": _sampler(status.get("config", {})),
            },
        )
    ]
    ffmpeg = status.get("ffmpeg", {})
    procs = ffmpeg.get("processes", []) if isinstance(ffmpeg, Mapping) else []
    table = Table(title="Tracked processes", title_justify="left")
    for column in ("pid", "name", "ffmpeg", "memory", "peak"):
        table.add_column(column)
    for proc in procs:
        table.add_row(
            str(proc.get("pid")),
            str(proc.get("name")),
            str(proc.get("is_ffmpeg", True)),
            _mb(proc.get("memory_mb")),
            _mb(proc.get("peak_memory_mb")),
        )
    if not procs:
        table.add_row("-", "none", "", "", "")
    tables.append(table)
    return tables


def media_table(media: Mapping[str, Any]) -> Table:
    table = Table(title=f"{media.get('path')}", title_justify="left")
    for column in ("#", "kind", "codec", "details"):
        table.add_column(column)
    for s in media.get("streams", []):
        if s.get("kind") == "video":
            details = f"{s.get('width')}x{s.get('height')} {s.get('pix_fmt')} "
            details += f"{(s.get('frame_rate') or 0):.3f} fps"
        elif s.get("kind") == "audio":
            details = f"{s.get('sample_rate')} Hz, {s.get('channels')} ch"
        else:
            details = ""
        table.add_row(str(s.get("index")), str(s.get("kind")), str(s.get("codec")), details)
    table.caption = (
        f"{media.get('container')}, {format_time(float(media.get('duration_s') or 0))}, "
        f"{(media.get('size_bytes') or 0) / 1048576:.1f} MiB"
    )
    return table


def analysis_tables(result: Mapping[str, Any]) -> list[Table]:
    proc = result.get("processing", {})
    summary = kv_table(
        "Analysis",
        {
            "file": result.get("path"),
            "sha256": str(result.get("sha256", ""))[:16] + "…",
            "scene changes": ", ".join(format_time(t) for t in result.get("scene_changes", []))
            or "none",
            "silent ranges": ", ".join(
                f"{format_time(a)}-{format_time(b)}" for a, b in result.get("silent_ranges", [])
            )
            or "none",
            "ranges / workers": f"{proc.get('ranges')} / {proc.get('workers')}",
            "peak memory": _mb(proc.get("peak_memory_mb")),
            "elapsed": f"{proc.get('elapsed_s', 0):.1f} s",
        },
    )
    table = Table(title="Highlight candidates", title_justify="left")
    for column in ("#", "start", "end", "score", "why"):
        table.add_column(column)
    for i, h in enumerate(result.get("highlights", [])[:10], 1):
        table.add_row(
            str(i),
            format_time(h["start"]),
            format_time(h["end"]),
            f"{h['score']:.2f}",
            "; ".join(h.get("reasons", [])),
        )
    return [summary, table]


def _mb(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} MiB"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f} %"


def _level_style(level: str) -> str:
    return {
        "low": "green",
        "moderate": "yellow",
        "high": "dark_orange",
        "critical": "bold red",
    }.get(level, "white")
