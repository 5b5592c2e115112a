"""Every error Montage raises on purpose, in one place.

Messages name the file or value that was wrong and say what to do, because these are
what a user sees (the CLI prints ``str(error)`` on one line). The memory errors are
``MemoryError`` subclasses so ``except MemoryError`` in user code (as the spec shows)
catches them.
"""

from __future__ import annotations

from collections.abc import Sequence


class MontageError(Exception):
    """Base class of every error Montage raises on purpose."""


class ConfigError(MontageError, ValueError):
    """A setting (memory limit, threshold, option) could not be understood."""


# --- memory -----------------------------------------------------------------------------


class MemoryLimitExceeded(MontageError, MemoryError):
    """A ``memory_guard`` block (or a job) went above the memory it was allowed."""

    def __init__(self, message: str, *, limit_mb: float, peak_mb: float) -> None:
        super().__init__(message)
        self.limit_mb = limit_mb
        self.peak_mb = peak_mb


class InsufficientMemoryError(MontageError, MemoryError):
    """A memory reservation could not be admitted (too large, or timed out waiting)."""

    def __init__(self, message: str, *, requested_mb: float, free_mb: float) -> None:
        super().__init__(message)
        self.requested_mb = requested_mb
        self.free_mb = free_mb


# --- ffmpeg -----------------------------------------------------------------------------


class FFmpegNotFoundError(MontageError, FileNotFoundError):
    """No usable ffmpeg binary was found."""


class FFmpegError(MontageError):
    """ffmpeg exited with an error (the message carries the end of its stderr)."""

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        cmd: Sequence[str] = (),
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.cmd = list(cmd)
        self.stderr_tail = stderr_tail


class FFmpegTimeoutError(FFmpegError):
    """ffmpeg ran past its timeout and was stopped."""


class FFmpegMemoryExceeded(FFmpegError, MemoryError):
    """An ffmpeg process tree went above its memory cap and was killed."""

    def __init__(
        self,
        message: str,
        *,
        limit_mb: float,
        peak_mb: float,
        cmd: Sequence[str] = (),
        stderr_tail: str = "",
        returncode: int | None = None,
    ) -> None:
        super().__init__(message, returncode=returncode, cmd=cmd, stderr_tail=stderr_tail)
        self.limit_mb = limit_mb
        self.peak_mb = peak_mb


# --- input media ------------------------------------------------------------------------


class InvalidMediaError(MontageError, ValueError):
    """An input file cannot be used as media. Subclasses say why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class MediaNotFoundError(InvalidMediaError):
    """The file does not exist."""


class NotAFileError(InvalidMediaError):
    """The path is a directory or another non-regular file."""


class EmptyMediaError(InvalidMediaError):
    """The file is zero bytes long."""


class UnreadableMediaError(InvalidMediaError):
    """The file exists but cannot be opened (permissions)."""


class NotMediaError(InvalidMediaError):
    """The file is not a media container FFmpeg recognises."""


class CorruptMediaError(InvalidMediaError):
    """The file is media but truncated or damaged."""


class NoVideoStreamError(InvalidMediaError):
    """A video stream is needed and the file has none."""


class UntrustedInputError(InvalidMediaError):
    """A playlist-style input (hls, concat, ...) was refused because it was not trusted."""


class OutputError(MontageError):
    """The output path cannot be written (exists, is the input, folder missing or read-only)."""
