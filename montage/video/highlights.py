"""The main job: turn a long video into a highlight reel under a memory limit.

Analyse once (streaming, flat memory), take the best non-overlapping candidates, put them back
in story order, and cut and join them with the editor. Every step runs its ffmpeg children
through the memory-safe runner, so the whole job respects the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from montage.video.analysis import AnalysisResult, analyze_video
from montage.video.segments import VideoSegment

ProgressCallback = Callable[[float, str], None]


@dataclass
class HighlightsReport:
    """What ``make_highlights`` did: the analysis, the chosen segments and the edit."""

    input_file: str
    output_file: str
    analysis: AnalysisResult
    segments: list[VideoSegment]
    edit: Any
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        edit = self.edit.to_dict() if hasattr(self.edit, "to_dict") else repr(self.edit)
        return {
            "input_file": self.input_file,
            "output_file": self.output_file,
            "segments": [
                {"start": s.start_time, "end": s.end_time, "id": s.segment_id}
                for s in self.segments
            ],
            "analysis": {
                "scene_changes": self.analysis.scene_changes,
                "silent_ranges": [list(r) for r in self.analysis.silent_ranges],
                "processing": self.analysis.processing,
            },
            "edit": edit,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def select_highlights(
    result: AnalysisResult, count: int = 3, input_file: str | Path | None = None
) -> list[VideoSegment]:
    """The ``count`` best candidates (already non-overlapping), in chronological order."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    source = str(input_file or result.path)
    best = sorted(result.highlights[:count], key=lambda c: c.start)
    return [
        VideoSegment(c.start, c.end, source, segment_id=f"highlight-{i + 1}")
        for i, c in enumerate(best)
    ]


def make_highlights(
    input_file: str | Path,
    output_file: str | Path,
    count: int = 3,
    length_s: float = 5.0,
    *,
    memory_limit_mb: float | None = None,
    mode: str = "auto",
    transitions: bool = False,
    overwrite: bool = True,
    fast: bool = False,
    progress: ProgressCallback | None = None,
    preset: str | None = None,
    crf: int | None = None,
) -> HighlightsReport:
    """Analyse ``input_file`` and write a reel of its ``count`` best ``length_s`` moments.

    ``preset``/``crf`` choose the reel's x264 settings (``VideoEditor``'s; None: its default).
    """
    from montage.video.editor import VideoEditor

    if not length_s > 0:
        raise ValueError(f"length must be a positive number of seconds, got {length_s!r}")
    started = time.monotonic()

    def analysis_progress(fraction: float, message: str) -> None:
        if progress is not None:
            progress(0.6 * fraction, message)

    def edit_progress(fraction: float, message: str) -> None:
        if progress is not None:
            progress(0.6 + 0.4 * fraction, message)

    result = analyze_video(
        input_file,
        memory_limit_mb=memory_limit_mb,
        progress=analysis_progress,
        fast=fast,
        highlight_length_s=length_s,
    )
    segments = select_highlights(result, count, input_file)
    if not segments:
        raise ValueError(f"{input_file}: no highlight candidates found (is the video empty?)")
    editor = VideoEditor(memory_limit_mb=memory_limit_mb, preset=preset, crf=crf)
    edit = editor.extract_and_concatenate_efficient(
        str(input_file),
        segments,
        str(output_file),
        apply_transitions=transitions,
        mode=mode,
        progress=edit_progress,
        overwrite=overwrite,
    )
    if progress is not None:
        progress(1.0, "done")
    return HighlightsReport(
        str(input_file), str(output_file), result, segments, edit, time.monotonic() - started
    )
