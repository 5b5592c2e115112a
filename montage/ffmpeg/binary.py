"""Find the ffmpeg binary and learn, once, what it can do.

Order: ``MONTAGE_FFMPEG`` (an explicit choice wins and is never silently ignored), then
``ffmpeg`` on ``PATH``, then the static binary shipped in the imageio-ffmpeg wheel, so that
a fresh ``pip install`` works on a machine without a system ffmpeg. Asking ffmpeg for its
version or its encoder list costs a subprocess (~20-50 ms), so every answer is cached;
tests call :func:`clear_cache` after changing the environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from montage.errors import FFmpegNotFoundError

ENV_VAR = "MONTAGE_FFMPEG"
_QUERY_TIMEOUT_S = 30.0
_VERSION_RE = re.compile(r"ffmpeg version (\S+)")


@dataclass(frozen=True)
class FFmpegBinary:
    """The ffmpeg we run: its path, its version string and where we found it."""

    path: str
    version: str
    source: str  # "MONTAGE_FFMPEG" | "PATH" | "imageio-ffmpeg"


T = TypeVar("T")
_DISCOVERY_LOCK = threading.RLock()  # re-entrant: encoders() asks find_ffmpeg() inside


class _Once(Generic[T]):
    """Computed once, even when many threads ask at the same moment.

    ``functools.cache`` does not lock: twenty jobs starting together would each run
    ``ffmpeg -version`` / ``-encoders`` at once, unbudgeted, and push the tree over its budget.
    """

    def __init__(self, compute: Callable[[], T]) -> None:
        self._compute = compute
        self._value: tuple[T] | None = None
        self.__doc__ = compute.__doc__
        self.__name__ = compute.__name__

    def __call__(self) -> T:
        with _DISCOVERY_LOCK:
            if self._value is None:
                self._value = (self._compute(),)
            return self._value[0]

    def cache_clear(self) -> None:
        with _DISCOVERY_LOCK:
            self._value = None


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _from_env() -> str | None:
    """The ``MONTAGE_FFMPEG`` path, or None when unset; a bad value is an error, not a skip."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    if os.sep not in value:
        found = shutil.which(value)
        if found:
            return found
    if not os.path.exists(value):
        raise FFmpegNotFoundError(
            f"{ENV_VAR}={value!r} does not exist; point {ENV_VAR} at an ffmpeg binary "
            f"or unset it to use ffmpeg from PATH or the imageio-ffmpeg wheel"
        )
    if not _is_executable_file(value):
        raise FFmpegNotFoundError(
            f"{ENV_VAR}={value!r} is not an executable file; fix its permissions "
            f"(chmod +x) or unset {ENV_VAR}"
        )
    return os.path.abspath(value)


def _from_imageio() -> str | None:
    """The imageio-ffmpeg wheel's binary, imported lazily (it is an optional dependency)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        path = str(imageio_ffmpeg.get_ffmpeg_exe())
    except (RuntimeError, OSError):
        return None
    return path if _is_executable_file(path) else None


def _read_version(path: str) -> str:
    """The ``ffmpeg version X`` token; a binary that cannot tell its version is not usable."""
    try:
        result = subprocess.run(
            [path, "-hide_banner", "-version"],
            capture_output=True,
            text=True,
            timeout=_QUERY_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FFmpegNotFoundError(f"ffmpeg at {path!r} could not be run: {exc}") from exc
    match = _VERSION_RE.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise FFmpegNotFoundError(
            f"{path!r} did not answer like ffmpeg (exit {result.returncode}); "
            f"set {ENV_VAR} to a working ffmpeg binary"
        )
    return match.group(1)


@_Once
def find_ffmpeg() -> FFmpegBinary:
    """Locate ffmpeg (MONTAGE_FFMPEG > PATH > imageio-ffmpeg) and read its version. Cached."""
    env_path = _from_env()
    if env_path is not None:
        return FFmpegBinary(env_path, _read_version(env_path), ENV_VAR)
    on_path = shutil.which("ffmpeg")
    if on_path is not None:
        return FFmpegBinary(on_path, _read_version(on_path), "PATH")
    wheel_path = _from_imageio()
    if wheel_path is not None:
        return FFmpegBinary(wheel_path, _read_version(wheel_path), "imageio-ffmpeg")
    raise FFmpegNotFoundError(
        "ffmpeg was not found. Either set MONTAGE_FFMPEG=/path/to/ffmpeg, "
        "install ffmpeg so it is on PATH, or `pip install imageio-ffmpeg` "
        "(its wheel ships a static ffmpeg)"
    )


def ffmpeg_path() -> str:
    """The path of the ffmpeg binary Montage runs."""
    return find_ffmpeg().path


def _query(flag: str) -> str:
    binary = find_ffmpeg()
    result = subprocess.run(
        [binary.path, "-hide_banner", flag],
        capture_output=True,
        text=True,
        timeout=_QUERY_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return result.stdout


def _after_legend(text: str) -> list[str]:
    """Lines after ffmpeg's ``------``/``---`` legend separator (the real table)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and set(line.strip()) == {"-"}:
            return lines[i + 1 :]
    return lines


@_Once
def encoders() -> frozenset[str]:
    """Names of every encoder this ffmpeg has (``-encoders``: `` V....D libx264 ...``)."""
    names = set()
    for line in _after_legend(_query("-encoders")):
        parts = line.split()
        if len(parts) >= 2:
            names.add(parts[1])
    return frozenset(names)


@_Once
def filters() -> frozenset[str]:
    """Names of every filter (``-filters``: `` TS scale  V->V ...``)."""
    names = set()
    for line in _after_legend(_query("-filters")):
        parts = line.split()
        if len(parts) >= 3 and "->" in parts[2]:
            names.add(parts[1])
    return frozenset(names)


@_Once
def muxers() -> frozenset[str]:
    """Names of every muxer (``-muxers``: ``  E  mov,mp4,...`` split on commas)."""
    names = set()
    for line in _after_legend(_query("-muxers")):
        parts = line.split()
        if len(parts) >= 2 and "E" in parts[0]:
            names.update(parts[1].split(","))
    return frozenset(names)


def has_encoder(name: str) -> bool:
    """Whether ffmpeg can encode with ``name`` (e.g. ``libx264``)."""
    return name in encoders()


def has_filter(name: str) -> bool:
    """Whether ffmpeg has the filter ``name`` (e.g. ``scale``)."""
    return name in filters()


def has_muxer(name: str) -> bool:
    """Whether ffmpeg can write the format ``name`` (e.g. ``mp4``, ``segment``)."""
    return name in muxers()


def clear_cache() -> None:
    """Forget the found binary and its capabilities (after changing MONTAGE_FFMPEG or PATH)."""
    find_ffmpeg.cache_clear()
    encoders.cache_clear()
    filters.cache_clear()
    muxers.cache_clear()


def resolve_argv(cmd: Sequence[str]) -> list[str]:
    """A copy of ``cmd`` whose bare ``ffmpeg`` first element is the found binary's path.

    The spec's examples start with ``'ffmpeg'``; resolving it here makes them run on a
    machine whose only ffmpeg is the wheel's. Any other first element passes through.
    """
    argv = [str(part) for part in cmd]
    if argv and argv[0] in ("ffmpeg", "ffmpeg.exe"):
        argv[0] = ffmpeg_path()
    return argv
