"""Probing real generated clips with PyAV (demux only) and every typed input error."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from montage.errors import (
    CorruptMediaError,
    EmptyMediaError,
    InvalidMediaError,
    MediaNotFoundError,
    NotAFileError,
    NotMediaError,
    NoVideoStreamError,
    UnreadableMediaError,
    UntrustedInputError,
)
from montage.ffmpeg.probe import keyframe_times, probe, validate_input_path
from tests.conftest import MakeClip


def _ffmpeg(ffmpeg_exe: str, *args: str) -> None:
    base = [ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    subprocess.run([*base, *args], check=True, timeout=60)


def _truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_probe_reads_the_clip_facts(clip: Path) -> None:
    info = probe(clip)
    assert info.path == str(clip.absolute())
    assert "mp4" in info.container
    assert info.duration_s == pytest.approx(4.0, abs=0.05)
    assert info.size_bytes == clip.stat().st_size
    assert info.bit_rate is not None and info.bit_rate > 0
    video, audio = info.video, info.audio
    assert video is not None and audio is not None
    assert (video.codec, video.width, video.height) == ("h264", 320, 240)
    assert video.frame_rate == pytest.approx(25.0)
    assert (video.pix_fmt, video.rotation, video.frames) == ("yuv420p", 0, 100)
    assert (audio.codec, audio.sample_rate, audio.channels) == ("aac", 48000, 1)
    assert audio.width is None and video.sample_rate is None
    assert info.has_video and info.has_audio
    assert [s.index for s in info.streams] == [0, 1]


def test_to_dict_is_json(clip: Path) -> None:
    data = json.loads(json.dumps(probe(clip).to_dict()))
    assert data["streams"][0]["kind"] == "video"
    assert data["streams"][0]["time_base"].count("/") == 1
    assert data["duration_s"] == pytest.approx(4.0, abs=0.05)


@pytest.mark.parametrize(("rate", "gop", "ext"), [(25, 25, "mp4"), (30, 12, "mkv")])
def test_keyframe_times_follow_the_gop(make_clip: MakeClip, rate: int, gop: int, ext: str) -> None:
    path = make_clip(duration=3, rate=rate, gop=gop, audio=False, ext=ext)
    times = keyframe_times(path)
    expected = [k * gop / rate for k in range(-(-3 * rate // gop))]
    assert times == pytest.approx(expected, abs=0.002)
    assert probe(path).video.frame_rate == pytest.approx(rate)  # type: ignore[union-attr]


def test_different_sizes_and_audio_rates(make_clip: MakeClip) -> None:
    path = make_clip(duration=1, size="160x90", rate=24, sample_rate=22050)
    info = probe(path)
    assert (info.video.width, info.video.height) == (160, 90)  # type: ignore[union-attr]
    assert info.audio.sample_rate == 22050  # type: ignore[union-attr]


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_from_the_display_matrix(
    clip: Path, tmp_path: Path, ffmpeg_exe: str, degrees: int
) -> None:
    rotated = tmp_path / f"r{degrees}.mp4"
    _ffmpeg(
        ffmpeg_exe, "-display_rotation", str(degrees), "-i", str(clip), "-c", "copy", str(rotated)
    )
    assert probe(rotated).video.rotation == degrees  # type: ignore[union-attr]


def test_audio_only_file(tmp_path: Path, ffmpeg_exe: str) -> None:
    path = tmp_path / "tone.m4a"
    _ffmpeg(ffmpeg_exe, "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(path))
    info = probe(path)
    assert not info.has_video and info.has_audio and info.video is None
    with pytest.raises(NoVideoStreamError, match="no video stream"):
        probe(path, require_video=True)
    with pytest.raises(NoVideoStreamError):
        keyframe_times(path)


@pytest.mark.parametrize(
    "name",
    ["-leading dash.mp4", "with 'single' and \"double\" quotes.mp4", "ünïcødé 视频 🎬.mp4",
     "http:looks-like-a-url.mp4", "50% off.mp4"],
)  # fmt: skip
def test_awkward_file_names_probe_fine(clip: Path, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    shutil.copyfile(clip, path)
    assert probe(path).duration_s == pytest.approx(4.0, abs=0.05)
    assert len(keyframe_times(path)) == 4


def test_relative_path_with_leading_dash(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copyfile(clip, tmp_path / "-i.mp4")
    monkeypatch.chdir(tmp_path)
    assert probe("-i.mp4").path == str(tmp_path / "-i.mp4")


# --- typed errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.mp4"
    with pytest.raises(MediaNotFoundError, match="no such file") as info:
        probe(missing)
    assert str(missing) in str(info.value) and info.value.path == str(missing)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(NotAFileError, match="is a directory"):
        probe(tmp_path)


def test_fifo_is_not_a_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(NotAFileError, match="not a regular file"):
        validate_input_path(fifo)


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(EmptyMediaError, match="0 bytes"):
        probe(empty)


def test_unreadable_file(clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0o000 file. Root bypasses file modes (and ``nobody`` cannot run this venv here), so
    as root the permission answer, which cannot be made false for root, is faked."""
    locked = tmp_path / "locked.mp4"
    shutil.copyfile(clip, locked)
    locked.chmod(0o000)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode)
        )
    with pytest.raises(UnreadableMediaError, match="permission denied") as info:
        probe(locked)
    assert str(locked) in str(info.value)


@pytest.mark.parametrize(
    "content", [b"hello, this is text\n" * 10, os.urandom(4096), b"\x00" * 1000]
)
def test_not_media(tmp_path: Path, content: bytes) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(content)
    with pytest.raises(NotMediaError, match="not a video or audio file") as info:
        probe(fake)
    assert str(fake) in str(info.value)


def test_mp4_cut_in_half_is_corrupt(clip: Path, tmp_path: Path) -> None:
    """moov is at the end (no faststart): half a file has no index at all."""
    with pytest.raises(CorruptMediaError, match="truncated or damaged"):
        probe(_truncate(clip, tmp_path / "half.mp4"))


def test_faststart_mp4_cut_in_half_is_corrupt(clip: Path, tmp_path: Path, ffmpeg_exe: str) -> None:
    """moov first: the index is whole but points past the end of the file."""
    fast = tmp_path / "fast.mp4"
    _ffmpeg(ffmpeg_exe, "-i", str(clip), "-c", "copy", "-movflags", "+faststart", str(fast))
    assert probe(fast).duration_s == pytest.approx(4.0, abs=0.05)
    with pytest.raises(CorruptMediaError, match="truncated"):
        probe(_truncate(fast, tmp_path / "fast_half.mp4"))


def test_mkv_cut_in_half_is_corrupt(make_clip: MakeClip, tmp_path: Path) -> None:
    mkv = make_clip(duration=4, ext="mkv")
    with pytest.raises(CorruptMediaError, match=r"packets end at"):
        probe(_truncate(mkv, tmp_path / "half.mkv"))


def test_every_error_is_an_invalid_media_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidMediaError):
        probe(tmp_path / "missing.mkv")


# --- untrusted playlists ------------------------------------------------------------------------

_HLS = (
    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\n{target}\n#EXT-X-ENDLIST\n"
)
_CONCAT = "ffconcat version 1.0\nfile '{target}'\n"


@pytest.mark.parametrize("template", [_HLS, _CONCAT])
@pytest.mark.parametrize("name", ["list.m3u8", "list.txt", "disguised.mp4", "noext"])
def test_playlists_pointing_at_etc_passwd_are_refused(
    tmp_path: Path, template: str, name: str
) -> None:
    playlist = tmp_path / name
    playlist.write_text(template.format(target="/etc/passwd"))
    with pytest.raises(UntrustedInputError, match="trusted=True") as info:
        probe(playlist)
    assert str(playlist) in str(info.value)
    with pytest.raises(UntrustedInputError):
        keyframe_times(playlist)


def test_hls_pointing_at_a_clip_outside_the_folder_is_refused(clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    playlist = folder / "video.mp4"
    playlist.write_text("\ufeff\n" + _HLS.format(target=str(clip)))  # BOM + blank line first
    with pytest.raises(UntrustedInputError):
        probe(playlist)


def test_trusted_concat_list_is_opened(clip: Path, tmp_path: Path) -> None:
    local = tmp_path / "part.mp4"
    shutil.copyfile(clip, local)
    playlist = tmp_path / "list.ffconcat"
    playlist.write_text("ffconcat version 1.0\n" + "file 'part.mp4'\nduration 4.0\n" * 2)
    info = probe(playlist, trusted=True)
    assert info.container == "concat"
    assert info.duration_s == pytest.approx(8.0, abs=0.1)


def test_image_pattern_is_refused_after_opening(tmp_path: Path, ffmpeg_exe: str) -> None:
    """An image2 pattern only shows as such once the demuxer is chosen."""
    _ffmpeg(ffmpeg_exe, "-f", "lavfi", "-i", "testsrc2=size=64x64:duration=0.12:rate=25",
            str(tmp_path / "frame%03d.png"))  # fmt: skip
    pattern = tmp_path / "frame%03d.png"
    shutil.copyfile(tmp_path / "frame001.png", pattern)
    with pytest.raises(UntrustedInputError, match="image2"):
        probe(pattern)
    assert probe(tmp_path / "frame001.png").video is not None  # a single image is fine


@pytest.mark.slow
def test_keyframe_scan_is_fast_on_a_long_file(make_clip: MakeClip) -> None:
    import time

    path = make_clip(duration=120, size="1280x720", rate=30, gop=60, audio=False)
    start = time.perf_counter()
    times = keyframe_times(path)
    elapsed_s = time.perf_counter() - start
    assert len(times) == 60
    assert elapsed_s < 1.0


# ---------------------------------------------------------------- mp4 edit lists


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _movie(*edit_lists: list[tuple[int, int]], media_s: float = 10.0) -> bytes:
    """A moov whose tracks (timescale 1000, 40 ms samples) have these (duration, media time)
    edits (movie timescale 1000); an empty list means no ``edts`` box."""
    mvhd = _box(b"mvhd", bytes(12), struct.pack(">II", 1000, int(media_s * 1000)), bytes(80))
    traks = []
    for edits in edit_lists:
        elst = _box(
            b"elst",
            bytes(4),
            struct.pack(">I", len(edits)),
            *(struct.pack(">Iihh", d, t, 1, 0) for d, t in edits),
        )
        mdhd = _box(b"mdhd", bytes(12), struct.pack(">II", 1000, int(media_s * 1000)), bytes(4))
        stts = _box(b"stts", bytes(4), struct.pack(">III", 1, int(media_s * 25), 40))
        mdia = _box(b"mdia", mdhd, _box(b"minf", _box(b"stbl", stts)))
        traks.append(_box(b"trak", *([_box(b"edts", elst)] if edits else []), mdia))
    return _box(b"ftyp", b"isom", bytes(4)) + _box(b"moov", mvhd, *traks)


@pytest.mark.parametrize(
    ("edit_lists", "plain"),
    [
        (([],), True),  # no edit list
        (([(10000, 0)], [(9979, 21)]), True),  # whole tracks; audio priming skipped
        (([(21, -1), (10000, 0)],), True),  # a start delay, then the whole track
        (([(10000, 80)],), True),  # starts 2 samples in (B-frame delay), runs past the end
        (([(5000, 0)],), False),  # drops the second half
        (([(4000, 0), (4000, 6000)],), False),  # two edits: a cut in the middle
        (([(21, -1)],), False),  # nothing but an empty edit
    ],
)
def test_trivial_edit_lists_only_when_no_sample_is_dropped(
    tmp_path: Path, edit_lists: tuple[list[tuple[int, int]], ...], plain: bool
) -> None:
    from montage.ffmpeg.mp4boxes import trivial_edit_lists

    path = tmp_path / "movie.mp4"
    path.write_bytes(_movie(*edit_lists))
    assert trivial_edit_lists(path) is plain


def test_trivial_edit_lists_on_real_and_broken_files(clip: Path, tmp_path: Path) -> None:
    from montage.ffmpeg.mp4boxes import trivial_edit_lists

    assert trivial_edit_lists(clip) is True  # ffmpeg's own mp4: one edit per track
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(_movie([(10000, 0)])[:60])
    assert trivial_edit_lists(broken) is False
    assert trivial_edit_lists(tmp_path / "missing.mp4") is False
