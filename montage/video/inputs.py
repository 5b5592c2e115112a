"""Did an input change while we read it? Size and mtime before and after the job.

Why: ffmpeg reading a file that is truncated or rewritten under it often exits 0 with less
media; a job must then refuse its result, not publish a short output or a partial analysis.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def fingerprint(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of ``path``; (-1, -1) when it cannot be read any more."""
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


def check_unchanged(fingerprints: Mapping[Path, tuple[int, int]], while_being: str) -> None:
    """CorruptMediaError naming the first input whose fingerprint moved.

    The message reads "<path> changed or disappeared while it was being <while_being>".
    """
    from montage.errors import CorruptMediaError

    for path, before in fingerprints.items():
        if fingerprint(path) != before:
            raise CorruptMediaError(
                str(path), f"{path} changed or disappeared while it was being {while_being}"
            )
