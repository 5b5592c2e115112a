"""Chunked transcoding keeps the input's text subtitles (the whole file: nothing to cut) and
names every subtitle or data stream it cannot keep."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from montage.ffmpeg.chunks import transcode_in_chunks
from montage.ffmpeg.probe import probe
from tests.subtitled import make_subtitled

_QUIET = ("-hide_banner", "-loglevel", "error")
ARGS = ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-b:a", "96k"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, ffmpeg_exe: str) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chunk_subs")
    return {
        "mp4": make_subtitled(
            ffmpeg_exe, folder / "tc.mp4", codec="mov_text", timecode="01:00:00:00"
        ),
        "mkv": make_subtitled(ffmpeg_exe, folder / "srt.mkv", codec="srt"),
    }


def _srt(ffmpeg_exe: str, path: Path) -> str:
    return subprocess.run(
        [ffmpeg_exe, *_QUIET, "-i", str(path), "-map", "0:s:0", "-f", "srt", "-"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


@pytest.mark.parametrize(
    ("source", "suffix", "codec", "warned"),
    [
        ("mp4", ".mkv", "srt", ["data stream #3 (timecode) of tc.mp4 not kept"]),
        ("mkv", ".mp4", "mov_text", []),
    ],
)
def test_chunked_transcode_keeps_text_subtitles_whole(
    sources: dict[str, Path],
    tmp_path: Path,
    ffmpeg_exe: str,
    source: str,
    suffix: str,
    codec: str,
    warned: list[str],
) -> None:
    src = sources[source]
    out = tmp_path / f"out{suffix}"
    report = transcode_in_chunks(src, out, ARGS, chunk_duration=2.0)
    assert report.chunks >= 2
    assert [w.split(":")[0] for w in report.warnings] == warned
    assert [(s.kind, s.codec, s.language) for s in probe(out).streams][2:] == [
        ("subtitle", codec, "eng")
    ]
    assert _srt(ffmpeg_exe, out) == _srt(ffmpeg_exe, src)  # every cue, at its time


def test_an_output_without_text_subtitles_names_the_stream_it_drops(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.ts"
    report = transcode_in_chunks(sources["mkv"], out, ARGS, chunk_duration=2.0)
    assert [s.kind for s in probe(out).streams] == ["video", "audio"]
    assert report.warnings == (
        "subtitle stream #2 (srt) of srt.mkv not kept: a .ts output cannot hold text "
        "subtitles (use .mkv or .mp4)",
    )
