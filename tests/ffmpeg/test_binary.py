"""ffmpeg discovery: MONTAGE_FFMPEG > PATH > imageio-ffmpeg, cached capabilities, resolve_argv."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from montage.errors import FFmpegNotFoundError
from montage.ffmpeg import binary


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    binary.clear_cache()
    yield
    binary.clear_cache()


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holding only an empty folder (no ffmpeg), MONTAGE_FFMPEG unset."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv(binary.ENV_VAR, raising=False)
    return folder


def _wrapper(path: Path, ffmpeg_exe: str, log: Path | None = None) -> Path:
    """An executable script that runs the real ffmpeg (and logs each call when asked)."""
    record = f'echo "$@" >> "{log}"\n' if log else ""
    path.write_text(f'#!/bin/sh\n{record}exec "{ffmpeg_exe}" "$@"\n')
    path.chmod(0o755)
    return path


def test_falls_back_to_the_imageio_wheel(empty_path: Path, ffmpeg_exe: str) -> None:
    found = binary.find_ffmpeg()
    assert found.source == "imageio-ffmpeg"
    assert found.path == ffmpeg_exe
    assert found.version.startswith("n") or found.version[0].isdigit()
    assert binary.ffmpeg_path() == ffmpeg_exe


def test_path_wins_over_the_wheel(empty_path: Path, ffmpeg_exe: str) -> None:
    exe = _wrapper(empty_path / "ffmpeg", ffmpeg_exe)
    found = binary.find_ffmpeg()
    assert (found.source, found.path) == ("PATH", str(exe))


def test_env_wins_over_path(
    empty_path: Path, tmp_path: Path, ffmpeg_exe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _wrapper(empty_path / "ffmpeg", ffmpeg_exe)
    chosen = _wrapper(tmp_path / "my ffmpeg", ffmpeg_exe)
    monkeypatch.setenv(binary.ENV_VAR, str(chosen))
    found = binary.find_ffmpeg()
    assert (found.source, found.path) == ("MONTAGE_FFMPEG", str(chosen))


def test_env_pointing_at_a_missing_file_is_an_error(
    empty_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope" / "ffmpeg"
    monkeypatch.setenv(binary.ENV_VAR, str(missing))
    with pytest.raises(FFmpegNotFoundError, match="MONTAGE_FFMPEG") as info:
        binary.find_ffmpeg()
    assert str(missing) in str(info.value)


def test_env_pointing_at_a_non_executable_is_an_error(
    empty_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "ffmpeg.txt"
    plain.write_text("not a program")
    plain.chmod(0o644)
    monkeypatch.setenv(binary.ENV_VAR, str(plain))
    with pytest.raises(FFmpegNotFoundError, match="not an executable"):
        binary.find_ffmpeg()


def test_env_pointing_at_something_that_is_not_ffmpeg(
    empty_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    monkeypatch.setenv(binary.ENV_VAR, str(fake))
    with pytest.raises(FFmpegNotFoundError, match="did not answer like ffmpeg"):
        binary.find_ffmpeg()


def test_nothing_found_names_all_three_options(
    empty_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now raises ImportError
    with pytest.raises(FFmpegNotFoundError) as info:
        binary.find_ffmpeg()
    message = str(info.value)
    for option in ("MONTAGE_FFMPEG", "PATH", "imageio-ffmpeg"):
        assert option in message


def test_capabilities_are_queried_once(
    empty_path: Path, tmp_path: Path, ffmpeg_exe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv(binary.ENV_VAR, str(_wrapper(tmp_path / "ff", ffmpeg_exe, log)))
    for _ in range(3):
        assert binary.has_encoder("libx264")
        assert not binary.has_encoder("no_such_encoder")
        binary.find_ffmpeg()
    calls = log.read_text().splitlines()
    assert calls == ["-hide_banner -version", "-hide_banner -encoders"]
    binary.clear_cache()
    binary.find_ffmpeg()
    assert len(log.read_text().splitlines()) == 3


def test_capability_lists_match_this_build(empty_path: Path) -> None:
    for encoder in ("libx264", "libx265", "aac", "rawvideo"):
        assert binary.has_encoder(encoder), encoder
    for name in ("scale", "reverse", "fps", "anull", "concat"):
        assert binary.has_filter(name), name
    for muxer in ("mp4", "mov", "matroska", "segment", "null", "mpegts"):
        assert binary.has_muxer(muxer), muxer
    assert not binary.has_encoder("Encoders:")
    assert not binary.has_filter("->")
    assert not binary.has_muxer("E")
    assert "V" not in binary.encoders()


def test_resolve_argv_replaces_only_a_bare_ffmpeg(empty_path: Path, ffmpeg_exe: str) -> None:
    assert binary.resolve_argv(["ffmpeg", "-i", "ffmpeg"]) == [ffmpeg_exe, "-i", "ffmpeg"]
    absolute = ["/opt/ffmpeg/bin/ffmpeg", "-version"]
    assert binary.resolve_argv(absolute) == absolute
    assert binary.resolve_argv([]) == []
    assert binary.resolve_argv([Path("ffmpeg"), "-y"]) == [ffmpeg_exe, "-y"]  # type: ignore[list-item]


def test_resolved_ffmpeg_runs(empty_path: Path) -> None:
    import subprocess

    argv = binary.resolve_argv(["ffmpeg", "-hide_banner", "-version"])
    result = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
    assert binary.find_ffmpeg().version in result.stdout
    assert os.path.isabs(argv[0])
