"""Which subtitle and data streams an output can carry, and how to name the ones it cannot.

Text subtitles (``mov_text``, ``subrip``, ``ass``, ``webvtt``) convert into one another: an
mp4/mov output gets ``mov_text``, an mkv ``ass`` (from ass/ssa) or ``srt``, a webm ``webvtt``;
other outputs (``.ts``, ``.avi``...) none. Bitmap subtitles (PGS, DVD, DVB) are not kept, nor
data streams (an mp4 ``tmcd`` timecode...). Used by the editor (``montage.video.subtitles``)
and by chunked transcoding (``montage.ffmpeg.chunks``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from montage.ffmpeg.probe import MediaInfo, StreamInfo

TEXT_SUBTITLE_CODECS = frozenset({"mov_text", "subrip", "srt", "ass", "ssa", "webvtt", "text"})
MP4_LIKE = frozenset({".mp4", ".m4v", ".mov"})


def text_subtitle_codec(out: Path, source_codec: str) -> str | None:
    """The encoder a text subtitle of ``source_codec`` gets in ``out``; None: not possible."""
    suffix = out.suffix.lower()
    if suffix in MP4_LIKE:
        return "mov_text"
    if suffix in (".mkv", ".mka"):
        return "ass" if source_codec in ("ass", "ssa") else "srt"
    if suffix == ".webm":
        return "webvtt"
    return None


def label(stream: StreamInfo, info: MediaInfo) -> str:
    """``subtitle stream #2 (hdmv_pgs_subtitle) of film.mkv``: how warnings name a stream."""
    return f"{stream.kind} stream #{stream.index} ({stream.codec}) of {Path(info.path).name}"


def data_warnings(info: MediaInfo) -> list[str]:
    return [
        f"{label(s, info)} not kept: timecode and data tracks are not carried over"
        for s in info.streams
        if s.kind == "data"
    ]


def whole_file_subtitles(info: MediaInfo, out: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """For an output made of all of ``info``'s file: ``(k, encoder)`` of each subtitle stream
    kept (the k-th subtitle stream), and a warning for each subtitle or data stream that is not."""
    kept: list[tuple[int, str]] = []
    warnings: list[str] = []
    subs = [s for s in info.streams if s.kind == "subtitle"]
    for k, stream in enumerate(subs):
        codec = text_subtitle_codec(out, stream.codec)
        if stream.codec not in TEXT_SUBTITLE_CODECS:
            warnings.append(f"{label(stream, info)} not kept: only text subtitles are carried over")
        elif codec is None:
            warnings.append(
                f"{label(stream, info)} not kept: a {out.suffix} output cannot hold text "
                f"subtitles (use .mkv or .mp4)"
            )
        else:
            kept.append((k, codec))
    return kept, warnings + data_warnings(info)
