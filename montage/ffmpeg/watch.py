"""Watching a running ffmpeg child: its tree's RSS, the watchdog, stderr and ``-progress``.

An unread pipe deadlocks ffmpeg, so stderr and ``-progress`` are drained in threads; a third
thread samples the tree's RSS every 50 ms and SIGKILLs the group past the cap (or stops it past
the deadline). ``WatchedChild`` is the half of ``FFmpegProcess`` those threads run in; it holds
no state of its own (``FFmpegProcess.__init__`` sets every attribute declared here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

logger = logging.getLogger("montage.ffmpeg")

STDERR_TAIL_BYTES = 64 * 1024
SAMPLE_INTERVAL_S = 0.05  # watchdog period: a 1080p `reverse` grows ~100 MiB per 50 ms at most
FIRST_SAMPLES_S = (0.005, 0.01, 0.02)
"""The watchdog's first pauses before it settles at ``SAMPLE_INTERVAL_S``: an edit's pieces
and probes often live for less than 50 ms, and a job that ended before its first sample was
reported with a fraction of its peak (10 MiB for 3 tiny segments measured at ~40 from
outside). Three more samples per job, each carrying the leader's ``VmHWM`` forward."""
_MIB = 1048576


@dataclass(frozen=True)
class FFmpegProgress:
    """One ``-progress`` block (replaced as a whole, so readers never see a half-update)."""

    frame: int = 0
    fps: float = 0.0
    out_time_s: float = 0.0
    speed: float | None = None
    total_size: int = 0
    done: bool = False


class WatchedChild:
    """The watch threads of ``FFmpegProcess``: stderr drain, progress reader, RSS watchdog."""

    _popen: subprocess.Popen[bytes]
    _sampler: TreeSampler
    _finished: threading.Event
    _tail: bytearray
    _tail_lock: threading.Lock
    _on_progress: Callable[[FFmpegProgress], object] | None
    _progress_stream: IO[bytes] | None
    _started_mono: float
    name: str
    pid: int
    limit_mb: float | None
    timeout_s: float | None
    grace_s: float
    progress: FFmpegProgress
    memory_mb: float
    peak_memory_mb: float
    stderr_bytes: int
    stop_reason: str | None
    over_cap_at: float | None
    last_under_cap_at: float | None
    killed_at: float | None

    @property
    def stderr_tail(self) -> str:
        """The last ~64 KiB of ffmpeg's stderr, starting at a line boundary."""
        with self._tail_lock:
            raw = bytes(self._tail)
        if len(raw) >= STDERR_TAIL_BYTES and b"\n" in raw:
            raw = raw[raw.index(b"\n") + 1 :]
        return raw.decode("utf-8", errors="replace")

    def _signal_group(self, sig: int) -> None:
        """Signal ffmpeg's group, only while its leader is ours and unreaped (pgid still held)."""
        if self._popen.returncode is not None or not self._sampler.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def _drain_stderr(self) -> None:
        """Keep reading stderr whatever ffmpeg logs, holding only the last 64 KiB."""
        stream = self._popen.stderr
        assert stream is not None
        fd = stream.fileno()
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(fd, 65536):
                with self._tail_lock:
                    self.stderr_bytes += len(chunk)
                    self._tail.extend(chunk)
                    if len(self._tail) > STDERR_TAIL_BYTES:
                        del self._tail[: len(self._tail) - STDERR_TAIL_BYTES]

    def _read_progress(self) -> None:
        assert self._progress_stream is not None
        for progress in read_progress(self._progress_stream):
            self.progress = progress
            if self._on_progress is not None:
                try:
                    self._on_progress(progress)
                except Exception:
                    logger.exception("%s: on_progress callback failed; disabling it", self.name)
                    self._on_progress = None

    def _watch(self) -> None:
        """Sample the tree's RSS; kill the group past the cap or the deadline."""
        deadline = None if self.timeout_s is None else self._started_mono + self.timeout_s
        pauses = iter(FIRST_SAMPLES_S)
        while True:
            now = time.monotonic()
            rss_bytes = self._sampler.sample()
            if rss_bytes is None:
                return
            self.memory_mb = rss_bytes / _MIB
            leader_peak_mb = self._sampler.leader_peak_bytes() / _MIB  # never above the tree's
            self.peak_memory_mb = max(self.peak_memory_mb, self.memory_mb, leader_peak_mb)
            if self.limit_mb is not None and self.memory_mb > self.limit_mb:
                self._kill_over_cap(now)
                return
            self.last_under_cap_at = now
            if deadline is not None and now >= deadline:
                logger.warning(
                    "%s (pid %d): timeout %s s passed; stopping",
                    self.name,
                    self.pid,
                    self.timeout_s,
                )
                self._stop_from_watchdog("timeout")
                return
            if self._finished.wait(next(pauses, SAMPLE_INTERVAL_S)):
                return

    def _kill_over_cap(self, now: float) -> None:
        self.over_cap_at = now
        if self.stop_reason is None:
            self.stop_reason = "memory"
        self._signal_group(signal.SIGKILL)
        self.killed_at = time.monotonic()
        logger.warning(
            "%s (pid %d): tree RSS %.1f MiB > cap %.1f MiB: killed its group in %.1f ms",
            self.name,
            self.pid,
            self.memory_mb,
            self.limit_mb,
            (self.killed_at - now) * 1000,
        )

    def _stop_from_watchdog(self, reason: str) -> None:
        """SIGTERM, grace, SIGKILL, without reaping (the owner's thread reaps)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._signal_group(signal.SIGTERM)
        if not self._finished.wait(self.grace_s) and self._sampler.running():
            self._signal_group(signal.SIGKILL)
            self.killed_at = time.monotonic()


# --- measuring the tree -----------------------------------------------------------------------


class TreeSampler:
    """RSS of ffmpeg and its descendants from /proc, re-reading a kept-open ``statm`` (~20 µs).

    Descendants are rescanned every 10th sample (ffmpeg rarely forks; a full walk reads one
    ``children`` file per thread). The kept-open fd also answers "not yet reaped?", which is
    what makes ``killpg`` on the leader's pid safe.
    """

    RESCAN_EVERY = 10

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._page_bytes = os.sysconf("SC_PAGE_SIZE")
        self._lock = threading.RLock()  # re-entrant: request_stop may run in a signal handler
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
        self._descendants: list[int] = []
        self._count = 0

    def _leader_rss_bytes(self) -> int | None:
        with self._lock:
            if self._fd is None:
                return None
            try:
                return int(os.pread(self._fd, 128, 0).split()[1]) * self._page_bytes
            except (OSError, IndexError, ValueError):
                return None

    def alive(self) -> bool:
        """True until the leader is reaped (a zombie still holds its pid and group id)."""
        return self._leader_rss_bytes() is not None

    def running(self) -> bool:
        """True while the leader has memory mapped (a zombie reports zero)."""
        return bool(self._leader_rss_bytes())

    def sample(self) -> int | None:
        """Tree RSS in bytes, or None once the leader is reaped."""
        total = self._leader_rss_bytes()
        if total is None:
            return None
        if self._count % self.RESCAN_EVERY == 0:
            self._descendants = _descendants(self._pid)
        self._count += 1
        for pid in self._descendants:
            total += _rss_bytes(pid, self._page_bytes)
        return total

    def leader_peak_bytes(self) -> int:
        """The leader's own high-water RSS (``VmHWM``), 0 when gone.

        Why: a job of a few hundred ms gets only a handful of 50 ms samples of its *current*
        RSS, which can all miss its peak; the kernel's high-water mark carries the peak so far
        into every later sample.
        """
        return peak_rss_bytes(self._pid)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def peak_rss_bytes(pid: int) -> int:
    """Process ``pid``'s own high-water RSS so far (``VmHWM``), 0 when it is gone.

    Not ``wait4``'s ``ru_maxrss``: that also counts the memory a child inherited from the
    Python that forked it, which can be larger than a small ffmpeg job itself.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _rss_bytes(pid: int, page_bytes: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * page_bytes
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError, ValueError):
                kids = [
                    int(k) for k in Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
                ]
                found.extend(kids)
                stack.extend(kids)
    return found


# --- progress -----------------------------------------------------------------------------------


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def parse_progress(fields: dict[str, str]) -> FFmpegProgress:
    """One ``-progress`` block (``key=value`` lines up to ``progress=``) as FFmpegProgress.

    ffmpeg writes ``N/A`` before the first packet; those become 0 (or None for speed).
    """
    out_time_us = _number(fields.get("out_time_us")) or 0.0
    return FFmpegProgress(
        frame=int(_number(fields.get("frame")) or 0),
        fps=_number(fields.get("fps")) or 0.0,
        out_time_s=max(0.0, out_time_us / 1e6),
        speed=_number(fields.get("speed", "").strip().rstrip("x")),
        total_size=int(_number(fields.get("total_size")) or 0),
        done=fields.get("progress") == "end",
    )


def read_progress(stream: IO[bytes]) -> Iterator[FFmpegProgress]:
    """Yield a progress record per ``progress=`` line until ffmpeg closes the pipe."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        for raw in stream:
            key, sep, value = raw.decode("utf-8", errors="replace").strip().partition("=")
            if not sep:
                continue
            fields[key] = value
            if key == "progress":
                yield parse_progress(fields)
                fields = {}
