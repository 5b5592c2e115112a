"""The spec's import path for the editor (``from src.providers.video_processor import ...``)."""

from __future__ import annotations

from montage.video.editor import EditReport, VideoEditor
from montage.video.segments import VideoSegment

__all__ = ["EditReport", "VideoEditor", "VideoSegment"]
