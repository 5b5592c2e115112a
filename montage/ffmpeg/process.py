"""Run one ffmpeg child as a resource with a lifetime: admitted, capped, watched, always reaped.

``memory_safe_ffmpeg`` reserves the job's predicted need in the memory budget, starts ffmpeg in
its own process group (so one ``killpg`` stops everything it spawned) with ``PR_SET_PDEATHSIG``
(so it dies with us), drains stderr and ``-progress`` in threads (an unread pipe deadlocks
ffmpeg) and samples the tree's RSS every 50 ms: past the cap the group gets SIGKILL and the
owner gets ``FFmpegMemoryExceeded``. Leaving the block by any route stops and reaps the child.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from montage.errors import (
    FFmpegError,
    FFmpegMemoryExceeded,
    FFmpegNotFoundError,
    FFmpegTimeoutError,
)

logger = logging.getLogger("montage.ffmpeg")

STDERR_TAIL_BYTES = 64 * 1024
OOM_SCORE_ADJ = b"800"  # ffmpeg, not the Python parent, is the kernel's preferred OOM victim
PR_SET_PDEATHSIG = 1
SAMPLE_INTERVAL_S = 0.05  # watchdog period: a 1080p `reverse` grows ~100 MiB per 50 ms at most
TERMINATE_GRACE_S = 2.0  # SIGTERM lets ffmpeg write its trailer; after this, SIGKILL
READER_JOIN_S = 5.0
_MIB = 1048576


class FFmpegJobPreempted(FFmpegMemoryExceeded):
    """The manager stopped this job to relieve CRITICAL memory pressure; re-run it cheaper."""


@dataclass(frozen=True)
class FFmpegProgress:
    """One ``-progress`` block (replaced as a whole, so readers never see a half-update)."""

    frame: int = 0
    fps: float = 0.0
    out_time_s: float = 0.0
    speed: float | None = None
    total_size: int = 0
    done: bool = False


class FFmpegProcess:
    """A running (or finished) ffmpeg child started by ``memory_safe_ffmpeg``.

    ``stop_reason`` says who stopped it: ``"memory"`` (cap), ``"timeout"``, ``"preempted"``
    (manager, CRITICAL pressure), ``"stopped"`` (``terminate()``), ``"aborted"`` (the block
    raised), or ``None`` (ran to its end). ``over_cap_at`` / ``last_under_cap_at`` /
    ``killed_at`` are ``time.monotonic()`` stamps of the watchdog's decision, kept so the kill
    latency can be checked.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        cmd: list[str],
        *,
        name: str,
        limit_mb: float | None,
        timeout_s: float | None,
        retriable: bool,
        on_progress: Callable[[FFmpegProgress], object] | None,
        progress_stream: IO[bytes] | None,
        grace_s: float,
    ) -> None:
        self._popen = popen
        self.cmd = cmd
        self.name = name
        self.pid = popen.pid
        self.limit_mb = limit_mb
        self.timeout_s = timeout_s
        self.retriable = retriable
        self.grace_s = grace_s
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.progress = FFmpegProgress()
        self.peak_memory_mb = 0.0
        self.memory_mb = 0.0
        self.stop_reason: str | None = None
        self.over_cap_at: float | None = None
        self.last_under_cap_at: float | None = None
        self.killed_at: float | None = None
        self._on_progress = on_progress
        self._progress_stream = progress_stream
        self._tail = bytearray()
        self.stderr_bytes = 0  # everything ffmpeg wrote to stderr, of which we keep the tail
        self._tail_lock = threading.Lock()
        self._finished = threading.Event()
        self._error_delivered = False
        self._sampler = TreeSampler(popen.pid)
        self._threads = [
            threading.Thread(target=self._drain_stderr, name=f"ffmpeg-{self.pid}-stderr"),
            threading.Thread(target=self._watch, name=f"ffmpeg-{self.pid}-watchdog"),
        ]
        if progress_stream is not None:
            self._threads.append(
                threading.Thread(target=self._read_progress, name=f"ffmpeg-{self.pid}-progress")
            )
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return (
            f"<FFmpegProcess {self.name!r} pid={self.pid} {state} "
            f"peak={self.peak_memory_mb:.1f}MiB limit={self.limit_mb}>"
        )

    # --- public surface -------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    @property
    def stdout(self) -> IO[bytes] | None:
        """ffmpeg's stdout when the caller asked for ``stdout=subprocess.PIPE``."""
        return self._popen.stdout if self._progress_stream is not self._popen.stdout else None

    @property
    def stderr_tail(self) -> str:
        """The last ~64 KiB of ffmpeg's stderr, starting at a line boundary."""
        with self._tail_lock:
            raw = bytes(self._tail)
        if len(raw) >= STDERR_TAIL_BYTES and b"\n" in raw:
            raw = raw[raw.index(b"\n") + 1 :]
        return raw.decode("utf-8", errors="replace")

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit and return the exit code.

        Raises ``FFmpegMemoryExceeded`` (or ``FFmpegJobPreempted``) if the watchdog or the
        manager killed it, and ``FFmpegTimeoutError`` if the job's deadline (or this call's
        ``timeout``) passed; a non-zero exit is *returned* here and raised, with the stderr
        tail, when the ``memory_safe_ffmpeg`` block ends (``check=True``).
        """
        try:
            returncode = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._error_delivered = True
            raise self._timeout_error(f"did not finish within wait(timeout={timeout})") from None
        self._join_readers()
        error = self._stop_error()
        if error is not None:
            self._error_delivered = True
            raise error
        return returncode

    def terminate(self) -> None:
        """Stop it politely (SIGTERM to the group, SIGKILL after the grace period) and reap."""
        self._stop("stopped", graceful=True)

    def kill(self) -> None:
        """SIGKILL the whole group now, and reap."""
        self._stop("stopped", graceful=False)

    def preempt(self, reason: str) -> bool:
        """Kill it for the manager (CRITICAL pressure); its owner sees ``FFmpegJobPreempted``."""
        if self.poll() is not None or self.stop_reason is not None:
            return False
        logger.warning(
            "%s (pid %d, %.1f MiB): %s: killing, owner re-runs it cheaper",
            self.name,
            self.pid,
            self.memory_mb,
            reason,
        )
        self._stop("preempted", graceful=False)
        return True

    # --- stopping ---------------------------------------------------------------------------

    def _signal_group(self, sig: int) -> None:
        """Signal ffmpeg's group, only while its leader is ours and unreaped (pgid still held)."""
        if self._popen.returncode is not None or not self._sampler.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def _stop(self, reason: str, *, graceful: bool) -> None:
        if self.stop_reason is None and self.poll() is None:
            self.stop_reason = reason
        if graceful and self.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(self.grace_s)
        if self.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.killed_at = self.killed_at or time.monotonic()
        self._popen.wait()

    def _stop_error(self) -> FFmpegError | None:
        if self.stop_reason == "memory":
            return self._memory_error(
                FFmpegMemoryExceeded, f"went above its {self.limit_mb:.0f} MiB cap"
            )
        if self.stop_reason == "preempted":
            return self._memory_error(
                FFmpegJobPreempted, "was stopped under CRITICAL memory pressure"
            )
        if self.stop_reason == "timeout":
            return self._timeout_error(f"ran past its {self.timeout_s} s timeout and was stopped")
        return None

    def _memory_error(self, kind: type[FFmpegMemoryExceeded], what: str) -> FFmpegMemoryExceeded:
        cap = "no cap" if self.limit_mb is None else f"cap {self.limit_mb:.0f} MiB"
        return kind(
            f"ffmpeg job {self.name!r} (pid {self.pid}) {what}: peak {self.peak_memory_mb:.1f} MiB"
            f" ({cap}); command: {' '.join(self.cmd)}",
            limit_mb=self.limit_mb if self.limit_mb is not None else 0.0,
            peak_mb=self.peak_memory_mb,
            cmd=self.cmd,
            stderr_tail=self.stderr_tail,
            returncode=self.returncode,
        )

    def _timeout_error(self, what: str) -> FFmpegTimeoutError:
        return FFmpegTimeoutError(
            f"ffmpeg job {self.name!r} (pid {self.pid}) {what}; command: {' '.join(self.cmd)}",
            returncode=self.returncode,
            cmd=self.cmd,
            stderr_tail=self.stderr_tail,
        )

    # --- threads ----------------------------------------------------------------------------

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
        while True:
            now = time.monotonic()
            rss_bytes = self._sampler.sample()
            if rss_bytes is None:
                return
            self.memory_mb = rss_bytes / _MIB
            self.peak_memory_mb = max(self.peak_memory_mb, self.memory_mb)
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
            if self._finished.wait(SAMPLE_INTERVAL_S):
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

    def _join_readers(self) -> None:
        for thread in self._threads:
            if thread is not threading.current_thread() and thread.name.endswith(
                ("stderr", "progress")
            ):
                thread.join(READER_JOIN_S)

    def _close(self) -> None:
        """Make sure it is dead and reaped; stop the threads; close every pipe."""
        if self.poll() is None:
            self._stop(self.stop_reason or "aborted", graceful=False)
        self._finished.set()
        for thread in self._threads:
            thread.join(READER_JOIN_S)
        for stream in (self._popen.stdout, self._popen.stderr, self._progress_stream):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._sampler.close()

    def _finish(self, check: bool) -> None:
        """Normal end of the block: wait for the exit and raise what the caller must see.

        An error ``wait()`` already raised inside the block (and the caller handled) is not
        raised a second time.
        """
        already_delivered = self._error_delivered
        try:
            returncode = self.wait()
        except FFmpegError:
            if already_delivered:
                return
            raise
        if not check or returncode == 0 or self.stop_reason == "stopped":
            return
        if self.limit_mb is not None and any(m in self.stderr_tail for m in _ALLOC_FAILURES):
            raise self._memory_error(  # the RLIMIT_DATA backstop fired between two samples
                FFmpegMemoryExceeded, f"failed to allocate memory (exit code {returncode})"
            )
        raise FFmpegError(
            f"ffmpeg job {self.name!r} {_exit_text(returncode)}: {_last_lines(self.stderr_tail)}",
            returncode=returncode,
            cmd=self.cmd,
            stderr_tail=self.stderr_tail,
        )


_ALLOC_FAILURES = ("malloc failed", "Cannot allocate memory", "get_buffer() failed")


def _exit_text(returncode: int) -> str:
    """'failed with exit code 1', or 'was killed by SIGXFSZ (File size limit exceeded)'."""
    if returncode >= 0:
        return f"failed with exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name} ({signal.strsignal(-returncode) or 'unknown signal'})"


def _last_lines(text: str, count: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


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
        self._lock = threading.Lock()
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

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


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


# --- starting -----------------------------------------------------------------------------------


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


def _spawn(
    argv: list[str],
    *,
    stdout: Any,
    limit_mb: float | None,
    pass_fds: Sequence[int] = (),
    **options: Any,
) -> FFmpegProcess:
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
    logger.debug(
        "started %s pid %d (cap %s MiB): %s", options["name"], popen.pid, limit_mb, plan.argv
    )
    return FFmpegProcess(popen, plan.argv, limit_mb=limit_mb, progress_stream=stream, **options)


@contextlib.contextmanager
def memory_safe_ffmpeg(
    cmd: Sequence[str | os.PathLike[str]],
    max_memory_mb: float | None = None,
    video_path: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    *,
    name: str = "ffmpeg",
    reserve_mb: float | None = None,
    on_progress: Callable[[FFmpegProgress], object] | None = None,
    check: bool = True,
    retriable: bool = False,
    stdout: Any = None,
    reserve_timeout: float | None = 600.0,
    grace_s: float = TERMINATE_GRACE_S,
    pass_fds: Sequence[int] = (),
) -> Iterator[FFmpegProcess]:
    """Run ``cmd`` as a memory-capped, watched ffmpeg child for the duration of the block.

    The cap is ``max_memory_mb``, else the enclosing budget (``current_budget_mb()``), else
    none (peak still recorded). The predicted need (``reserve_mb``, else the model from
    ``video_path``'s probe and the argv) is reserved in the budget first, waiting up to
    ``reserve_timeout`` s. ``timeout`` is the job's whole wall-clock allowance. Pass
    ``stdout=subprocess.PIPE`` to read ffmpeg's stdout from ``process.stdout``, and
    ``pass_fds`` to hand ffmpeg more pipe ends (``pipe:N`` outputs; the caller closes its copy).
    Leaving the block normally waits for ffmpeg; leaving it by an exception stops it (SIGTERM,
    ``grace_s``, SIGKILL). Either way it is reaped and its pipes and reservation released.
    """
    from montage.ffmpeg.binary import resolve_argv
    from montage.ffmpeg.manager import get_ffmpeg_memory_manager
    from montage.memory.budget import get_memory_budget
    from montage.memory.monitor import current_budget_mb, get_memory_monitor

    if isinstance(cmd, (str, bytes)):
        raise TypeError("cmd must be an argv list like ['ffmpeg', '-i', path, ...], not a string")
    argv = resolve_argv([os.fspath(part) for part in cmd])
    limit_mb = max_memory_mb if max_memory_mb is not None else current_budget_mb()
    manager = get_ffmpeg_memory_manager()
    need_mb = reserve_mb if reserve_mb is not None else manager.predict_need_mb(argv, video_path)
    budget = get_memory_budget()
    if limit_mb is not None:  # the cap stops it anyway: never ask for more than the cap admits
        need_mb = min(need_mb, limit_mb * budget.usable_fraction)
    monitor = get_memory_monitor()
    with budget.reserve(need_mb, name, timeout=reserve_timeout) as reservation:
        process = _spawn(
            argv, stdout=stdout, limit_mb=limit_mb, name=name, timeout_s=timeout,
            retriable=retriable, on_progress=on_progress, grace_s=grace_s, pass_fds=pass_fds,
        )  # fmt: skip
        try:
            reservation.attach_pid(process.pid)
            monitor.track_process(process.pid, name, is_ffmpeg=True)
            manager.register(process)
            try:
                yield process
            except BaseException:
                process._stop(process.stop_reason or "aborted", graceful=True)
                raise
            process._finish(check)
        finally:
            process._close()
            manager.unregister(process)
            monitor.untrack_process(process.pid)


def run_ffmpeg(
    cmd: Sequence[str | os.PathLike[str]],
    max_memory_mb: float | None = None,
    video_path: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    **options: Any,
) -> FFmpegProcess:
    """Run ``cmd`` to its end under ``memory_safe_ffmpeg``; raise on any failure."""
    with memory_safe_ffmpeg(cmd, max_memory_mb, video_path, timeout, **options) as process:
        process.wait()
    return process
