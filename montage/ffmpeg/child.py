"""Starting one ffmpeg child: its own session, death with us, the OOM victim, a backstop.

The child gets its own process group (one ``killpg`` stops everything it spawned),
``PR_SET_PDEATHSIG`` (it dies with us), ``oom_score_adj`` 800 (the kernel kills ffmpeg, not
the Python parent) and an ``RLIMIT_DATA`` backstop sized from the cap. ``-progress`` goes to a
private pipe unless the caller's argv already routes it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from montage.errors import FFmpegNotFoundError

logger = logging.getLogger("montage.ffmpeg")

OOM_SCORE_ADJ = b"800"  # ffmpeg, not the Python parent, is the kernel's preferred OOM victim
PR_SET_PDEATHSIG = 1
_MIB = 1048576


def data_limit_bytes(cap_mb: float) -> int:
    """The RLIMIT_DATA backstop for a cap: max(2 x cap + 512 MiB, 1 GiB).

    RSS sampling is the cap; this only stops a runaway between samples. ffmpeg's private
    writable memory runs ~1.5-1.9x its RSS (x264 ultrafast 1080p: 259 vs 135 MiB; medium: 759
    vs 507), so 2x + 512 MiB never fires before the watchdog, yet is far tighter than
    RLIMIT_AS (virtual size runs 2-4x RSS and the static binary alone maps ~1 GiB).
    """
    return int(max(2.0 * cap_mb + 512.0, 1024.0) * _MIB)


@functools.cache
def _libc_prctl() -> Callable[..., int] | None:
    import ctypes

    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _make_preexec(data_bytes: int | None) -> Callable[[], None]:
    """The child's first steps after fork: die with us, be the OOM victim, get a backstop.

    Everything is resolved before the fork so the child runs a few syscalls only. Note that
    PDEATHSIG fires when the *thread* that started the child ends; the starting thread stays
    inside the ``memory_safe_ffmpeg`` block for the child's whole life, so that is us dying.
    """
    import resource

    prctl = _libc_prctl()
    parent_pid = os.getpid()
    sigkill = int(signal.SIGKILL)
    limits: tuple[int, int] | None = None
    if data_bytes is not None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        value = data_bytes if hard == resource.RLIM_INFINITY else min(data_bytes, hard)
        limits = (value, value)

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent_pid:  # we died before prctl took effect
            os._exit(127)
        with contextlib.suppress(OSError):
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(fd, OOM_SCORE_ADJ)
            finally:
                os.close(fd)
        if limits is not None:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_DATA, limits)

    return preexec


@dataclass
class _ProgressPlan:
    argv: list[str]
    read_fd: int | None = None
    write_fd: int | None = None
    on_stdout: bool = False


def _plan_progress(argv: list[str], *, stdout_wanted: bool) -> _ProgressPlan:
    """Where ffmpeg's ``-progress`` goes. The user's argv is kept; we only add our own pipe.

    A user ``-progress pipe:1`` is parsed from stdout unless the caller reads stdout itself.
    Otherwise ``-progress pipe:<fd> -nostats`` on a private pipe, so stdout stays free for
    outputs like ``-f rawvideo -`` (analysis reads frames there).
    """
    if "-progress" in argv[1:]:
        at = argv.index("-progress", 1)
        target = argv[at + 1] if at + 1 < len(argv) else ""
        return _ProgressPlan(
            argv, on_stdout=target in ("pipe:1", "pipe:", "-") and not stdout_wanted
        )
    read_fd, write_fd = os.pipe()
    extra = ["-progress", f"pipe:{write_fd}"] + ([] if "-stats" in argv else ["-nostats"])
    return _ProgressPlan([argv[0], *extra, *argv[1:]], read_fd, write_fd)


def spawn_child(
    argv: list[str],
    *,
    stdout: Any,
    limit_mb: float | None,
    name: str,
    pass_fds: Sequence[int] = (),
) -> tuple[subprocess.Popen[bytes], list[str], IO[bytes] | None]:
    """Start ffmpeg; return the child, the argv it runs and its ``-progress`` stream (if any)."""
    plan = _plan_progress(argv, stdout_wanted=stdout is not None)
    data_bytes = None if limit_mb is None else data_limit_bytes(limit_mb)
    try:
        popen = subprocess.Popen(
            plan.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if plan.on_stdout else stdout,
            stderr=subprocess.PIPE,
            pass_fds=(*pass_fds, *(() if plan.write_fd is None else (plan.write_fd,))),
            start_new_session=True,
            preexec_fn=_make_preexec(data_bytes),
        )
    except FileNotFoundError as exc:
        if plan.read_fd is not None:
            os.close(plan.read_fd)
        raise FFmpegNotFoundError(f"cannot run ffmpeg {argv[0]!r}: {exc.strerror}") from exc
    finally:
        if plan.write_fd is not None:
            os.close(plan.write_fd)
    stream = popen.stdout if plan.on_stdout else None
    if plan.read_fd is not None:
        stream = os.fdopen(plan.read_fd, "rb")
    logger.debug("started %s pid %d (cap %s MiB): %s", name, popen.pid, limit_mb, plan.argv)
    return popen, plan.argv, stream
