"""Run one ffmpeg child as a resource with a lifetime: admitted, capped, watched, always reaped.

``memory_safe_ffmpeg`` reserves the job's predicted need in the memory budget, starts ffmpeg in
its own process group (so one ``killpg`` stops everything it spawned) with ``PR_SET_PDEATHSIG``
(so it dies with us), drains stderr and ``-progress`` in threads (an unread pipe deadlocks
ffmpeg) and samples the tree's RSS every 50 ms: past the cap the group gets SIGKILL and the
owner gets ``FFmpegMemoryExceeded``. Leaving the block by any route stops and reaps the child.
Starting the child lives in ``montage.ffmpeg.child``, its watch threads in ``montage.ffmpeg.watch``;
this module owns the lifetime (admission, stopping, errors) and re-exports their public names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from montage.errors import FFmpegError, FFmpegMemoryExceeded, FFmpegTimeoutError
from montage.ffmpeg.child import OOM_SCORE_ADJ, PR_SET_PDEATHSIG, data_limit_bytes, spawn_child
from montage.ffmpeg.watch import (
    SAMPLE_INTERVAL_S,
    STDERR_TAIL_BYTES,
    FFmpegProgress,
    TreeSampler,
    WatchedChild,
    parse_progress,
    read_progress,
)

__all__ = [
    "OOM_SCORE_ADJ",
    "PR_SET_PDEATHSIG",
    "READER_JOIN_S",
    "SAMPLE_INTERVAL_S",
    "STDERR_TAIL_BYTES",
    "TERMINATE_GRACE_S",
    "FFmpegJobPreempted",
    "FFmpegProcess",
    "FFmpegProgress",
    "TreeSampler",
    "data_limit_bytes",
    "memory_safe_ffmpeg",
    "parse_progress",
    "read_progress",
    "run_ffmpeg",
]

logger = logging.getLogger("montage.ffmpeg")

TERMINATE_GRACE_S = 2.0  # SIGTERM lets ffmpeg write its trailer; after this, SIGKILL
READER_JOIN_S = 5.0


class FFmpegJobPreempted(FFmpegMemoryExceeded):
    """The manager stopped this job to relieve CRITICAL memory pressure; re-run it cheaper."""


class FFmpegProcess(WatchedChild):
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

    def request_stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) the group and return at once: the stop for signal handlers.

        ``terminate()`` waits for the exit, and a handler that interrupted this same process's
        ``wait()`` would block forever on ``Popen``'s wait lock, still held by the interrupted
        frame. The ``memory_safe_ffmpeg`` block that owns the job reaps it (SIGKILL after the
        grace period) when the exception the handler raises unwinds through it.
        """
        if self.stop_reason is None and self._popen.returncode is None:
            self.stop_reason = "stopped"
        self._signal_group(signal.SIGKILL if kill else signal.SIGTERM)

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


def _spawn(
    argv: list[str],
    *,
    stdout: Any,
    limit_mb: float | None,
    pass_fds: Sequence[int] = (),
    **options: Any,
) -> FFmpegProcess:
    popen, run_argv, stream = spawn_child(
        argv, stdout=stdout, limit_mb=limit_mb, name=options["name"], pass_fds=pass_fds
    )
    try:
        return FFmpegProcess(popen, run_argv, limit_mb=limit_mb, progress_stream=stream, **options)
    except BaseException:  # e.g. Ctrl-C before the watch threads run: no one else can stop it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)  # its own group, still ours: not yet reaped
        popen.wait()
        for pipe in (stream, popen.stdout, popen.stderr):
            if pipe is not None:
                pipe.close()
        raise


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
            try:  # an interrupt anywhere from here on stops the child, not only in the block
                reservation.attach_pid(process.pid)
                monitor.track_process(process.pid, name, is_ffmpeg=True)
                manager.register(process)
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
