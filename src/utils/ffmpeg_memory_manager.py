"""The spec's import path ``src.utils.ffmpeg_memory_manager``: thin aliases of ``montage.ffmpeg``.

``process_video_chunks`` is resolved on first use, so this module imports even where
``montage.ffmpeg.chunks`` cannot (and importing it starts nothing).
"""

from __future__ import annotations

from typing import Any

from montage.ffmpeg.command import build_memory_safe_ffmpeg_command
from montage.ffmpeg.manager import FFmpegMemoryManager, get_ffmpeg_memory_manager, run_with_retry
from montage.ffmpeg.process import FFmpegProcess, FFmpegProgress, memory_safe_ffmpeg, run_ffmpeg
from montage.ffmpeg.profiles import FFmpegMemoryProfile


def __getattr__(name: str) -> Any:
    if name == "process_video_chunks":
        from montage.ffmpeg.chunks import process_video_chunks

        return process_video_chunks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FFmpegMemoryManager",
    "FFmpegMemoryProfile",
    "FFmpegProcess",
    "FFmpegProgress",
    "build_memory_safe_ffmpeg_command",
    "get_ffmpeg_memory_manager",
    "memory_safe_ffmpeg",
    "process_video_chunks",  # noqa: F822 (resolved by __getattr__)
    "run_ffmpeg",
    "run_with_retry",
]
