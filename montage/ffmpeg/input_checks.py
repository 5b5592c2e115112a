"""Which files may be opened, decided before and just after the demuxer opens them.

Typed errors for inputs that are not there, not files, empty or unreadable (before PyAV guesses),
and the refusal of playlist-style inputs (hls, concat, dash, ...) that would make the demuxer
open *other* files or URLs named inside them: by name and first bytes before opening, by the
demuxer PyAV picked after. ``montage.ffmpeg.probe`` reads the media; this module only judges it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from montage.errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaNotFoundError,
    NotAFileError,
    UnreadableMediaError,
    UntrustedInputError,
)

if TYPE_CHECKING:
    from av.container import InputContainer

PathLike = str | os.PathLike[str]

PLAYLIST_SUFFIXES = frozenset(
    {".m3u8", ".m3u", ".txt", ".ffconcat", ".mpd", ".xml", ".sdp", ".ism"}
)
PLAYLIST_MAGIC = (b"#EXTM3U", b"ffconcat", b"<?xml", b"<MPD", b"v=0", b"file ", b"file\t")
PLAYLIST_FORMATS = frozenset(
    {"hls", "applehttp", "concat", "ffconcat", "dash", "tee", "sdp", "rtp", "rtsp", "imf", "mpd"}
)
# Magic numbers of containers we know: an unreadable file with one of these is "corrupt",
# one without is "not media".
_CONTAINER_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"fLaC")
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")


def validate_input_path(path: PathLike) -> Path:
    """Check that ``path`` names a non-empty readable regular file; typed errors otherwise.

    Done before PyAV so the user gets "does not exist" rather than a demuxer's guess.
    """
    p = Path(os.fspath(path))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaNotFoundError(
            str(p), f"{p}: no such file; check the path (relative to {Path.cwd()})"
        ) from None
    except OSError as exc:
        raise UnreadableMediaError(str(p), f"{p}: cannot be read ({exc.strerror})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise NotAFileError(str(p), f"{p} is a directory; give the path of a video file in it")
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(str(p), f"{p} is not a regular file (a device, fifo or socket)")
    if st.st_size == 0:
        raise EmptyMediaError(str(p), f"{p} is empty (0 bytes); the copy or download failed?")
    if not os.access(p, os.R_OK):
        raise UnreadableMediaError(
            str(p), f"{p}: permission denied; make it readable (chmod +r) or run as its owner"
        )
    return p.absolute()


def _head(path: Path, size: int = 64) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except PermissionError as exc:
        raise UnreadableMediaError(str(path), f"{path}: permission denied ({exc})") from exc


def refuse_playlist(path: Path) -> None:
    """Refuse a playlist-style file by its name or first bytes, before any demuxer opens it."""
    head = _head(path).lstrip(b"\xef\xbb\xbf \t\r\n")
    by_name = path.suffix.lower() in PLAYLIST_SUFFIXES
    by_content = head.startswith(PLAYLIST_MAGIC)
    if by_name or by_content:
        raise UntrustedInputError(
            str(path),
            f"{path} looks like a playlist or pattern (hls/concat/dash/image sequence) that "
            f"would open other files; pass trusted=True (--trusted) only if you made it",
        )


def looks_like_container(path: Path) -> bool:
    """Whether ``path`` starts like a container we know (mp4/mov, mkv, avi, ogg, flv, ps, flac,
    ts): an unreadable one is then "corrupt", not "not media"."""
    head = _head(path, 16)
    if head[4:8] in _MP4_BOXES or head.startswith(_CONTAINER_MAGIC):
        return True
    return len(head) >= 1 and head[0] == 0x47 and path.stat().st_size >= 189 and _ts_sync(path)


def _ts_sync(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(188)
        return fh.read(1) == b"\x47"


def refuse_format(path: Path, container: InputContainer) -> None:
    """Refuse a playlist demuxer (or an image-pattern name) PyAV picked for ``path``."""
    names = set(container.format.name.split(","))
    pattern = "image2" in names and "%" in path.name
    if names & PLAYLIST_FORMATS or pattern:
        raise UntrustedInputError(
            str(path),
            f"{path} is a {container.format.name} playlist that would open other files; "
            f"pass trusted=True (--trusted) only if you made it",
        )


def corrupt_error(path: Path, why: str) -> CorruptMediaError:
    """The error for a media file whose data is missing or damaged (``why`` says how)."""
    return CorruptMediaError(
        str(path), f"{path} is truncated or damaged ({why}); copy it again or re-download it"
    )
