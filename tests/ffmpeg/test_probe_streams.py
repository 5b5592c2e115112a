"""Probe facts of files with subtitle and data (timecode) streams."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from montage.ffmpeg.mp4boxes import _tkhd_rotation, read_moov
from montage.ffmpeg.probe import probe
from tests.subtitled import make_subtitled


def _tkhd_version(path: Path) -> int:
    moov = read_moov(path)
    assert moov is not None
    return moov[moov.index(b"tkhd") + 4]


@pytest.fixture(scope="module")
def mov_text_mp4(tmp_path_factory: pytest.TempPathFactory, ffmpeg_exe: str) -> Path:
    out = tmp_path_factory.mktemp("streams") / "subs.mp4"
    return make_subtitled(ffmpeg_exe, out, codec="mov_text", timecode="01:00:00:00")


def test_subtitle_and_timecode_streams_are_listed_with_their_language(
    mov_text_mp4: Path,
) -> None:
    info = probe(mov_text_mp4, require_video=True)
    kinds = [(s.kind, s.codec) for s in info.streams]
    assert kinds[:3] == [("video", "h264"), ("audio", "aac"), ("subtitle", "mov_text")]
    assert [(s.kind, s.codec) for s in info.streams[3:]] == [("data", "timecode")]  # tmcd
    assert info.streams[2].language == "eng"
    assert info.video is not None and info.video.language is None  # "und" is no language


def test_version_1_track_headers_give_the_real_rotation(mov_text_mp4: Path) -> None:
    # ffmpeg writes 64-bit (version 1) tkhd boxes here: their matrix sits 4 bytes further
    # than in version 0 (old code read it at the wrong offset: a 270 degree "rotation")
    assert _tkhd_version(mov_text_mp4) == 1
    info = probe(mov_text_mp4)
    assert {s.rotation for s in info.streams} == {0}


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_track_header_matrix_is_read_where_iso_14496_12_puts_it(version: int, degrees: int) -> None:
    # a display matrix of ``degrees`` (ffmpeg's sign: counter-clockwise = a negative b)
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees]
    one = 1 << 16
    matrix = struct.pack(">9i", cos * one, -sin * one, 0, sin * one, cos * one, 0, 0, 0, 1 << 30)
    if version == 1:  # 64-bit creation/modification times and duration
        head = struct.pack(">B3xQQIIQ", 1, 0, 0, 7, 0, 123)
    else:
        head = struct.pack(">B3xIIIII", 0, 0, 0, 7, 0, 123)
    box = head + bytes(8) + struct.pack(">hhhH", 0, 0, 0, 0) + matrix + struct.pack(">II", 320, 240)
    assert _tkhd_rotation(box) == (7, degrees)
