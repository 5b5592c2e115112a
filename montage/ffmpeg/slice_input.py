"""ffmpeg input arguments that show a child only a time slice of an MP4 (``mp4slice``).

``SliceSource.open(path)`` reads the source's tables once (or answers None, logging why at
debug level: the caller then gives children the whole file, as before). ``input_args`` writes
a slice's header to a path the caller owns (a managed temp file: removed by any route) and
returns the ``-i`` arguments that read header + source span, seeking like ``-ss``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from montage.ffmpeg.mp4index import Movie, Unsupported, read_movie
from montage.ffmpeg.mp4slice import (
    PROTOCOLS,
    input_url,
    plan_slice,
    source_start_s,
    write_header,
)

logger = logging.getLogger("montage.ffmpeg")


class SliceSource:
    """A source MP4 whose ffmpeg children each read one slice's index, not the whole file's."""

    def __init__(self, path: Path, movie: Movie) -> None:
        self.path, self.movie = path, movie
        self.start_s = source_start_s(movie)

    @classmethod
    def open(cls, path: str | Path) -> SliceSource | None:
        """The source, or None (logged at debug level) for a file the slicer does not handle."""
        source = Path(path).absolute()
        if input_url(source, source, (0, 0)) is None:
            logger.debug("slices: %s cannot be named in a concat URL; reading it whole", source)
            return None
        try:
            return cls(source, read_movie(source))
        except Unsupported as exc:
            logger.debug("slices: %s: %s; reading it whole", source, exc)
        except OSError as exc:
            logger.debug("slices: cannot read %s (%s); reading it whole", source, exc)
        return None

    def input_args(self, header: Path, seek_s: float, last_s: float | None) -> list[str] | None:
        """Write the header of the slice that decoding ``[seek_s, last_s]`` (None: to the end)
        needs to ``header``; returns the ``-i`` arguments reading it (``-protocol_whitelist``,
        ``-ss``, ``-i URL``), or None if this slice cannot be made."""
        try:
            with open(self.path, "rb") as fh:
                part = plan_slice(self.movie, fh, seek_s, last_s)
                write_header(self.movie, fh, part, header)
        except Unsupported as exc:
            logger.debug("slices: %s at %.3f s: %s; reading it whole", self.path, seek_s, exc)
            return None
        url = input_url(header, self.path, part.span)
        if url is None:
            return None
        args = ["-protocol_whitelist", PROTOCOLS]
        if seek_s > 0:  # the slice keeps the source's timestamps: seek to the same one
            args += ["-seek_timestamp", "1", "-ss", f"{seek_s + self.start_s:.6f}"]
        return [*args, "-i", url]
