"""Ctrl-C and SIGTERM for the CLI: stop the ffmpeg children, unwind, and exit in bounded time.

Python runs a signal handler in the main thread, between any two bytecodes: inside
``Popen.wait()`` of the job it wants to stop (with ``Popen``'s wait lock held), or inside the
``logging`` at-fork hook of a ``subprocess`` spawn, where the exception it raises is printed
and *swallowed*, leaving the logging lock held so the next spawning thread blocks forever.
Hence the two rules here:

* the handler never waits and never takes a lock another frame may hold: it SIGTERMs the
  children's process groups (``FFmpegMemoryManager.stop_all``) and raises; the
  ``memory_safe_ffmpeg`` blocks reap them (SIGKILL after their grace period) as the exception
  unwinds, and the cleanup registry removes the temp files;
* the first signal arms an exit guard: if the CLI has not settled ``EXIT_GRACE_S`` seconds
  later, whatever the interrupted code did, the guard SIGKILLs the children, removes the
  temp files and ends the process with 130 / 143.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from types import FrameType

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
EXIT_GRACE_S = 10.0  # longer than a job's SIGTERM grace period (TERMINATE_GRACE_S)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so cleanup runs as for Ctrl-C."""


class _Guard:
    """The exit guard, armed by the first stop signal and disarmed once the CLI has settled."""

    def __init__(self) -> None:
        self.code = 0  # 130 / 143 once a stop signal arrived
        self.deadline = 0.0
        self._disarmed = threading.Event()

    def arm(self, code: int) -> None:
        if self.code:
            return
        self.code = code
        self.deadline = time.monotonic() + EXIT_GRACE_S
        self._disarmed.clear()
        threading.Thread(target=self._run, name="montage-exit-guard", daemon=True).start()

    def _run(self) -> None:
        if self._disarmed.wait(max(0.0, self.deadline - time.monotonic())):
            return
        _manager_call("stop_all", kill=True)
        with contextlib.suppress(Exception):
            from montage.resources import cleanup_all

            cleanup_all()
        with contextlib.suppress(OSError):  # not logging: its lock may be what is stuck
            os.write(2, b"montage-video: did not stop in time after the signal; forced exit\n")
        os._exit(self.code)

    def settle(self) -> None:
        """Called when ``run`` ends: disarm once every other non-daemon thread has finished
        (bounded by the deadline; a thread still stuck then leaves the guard armed)."""
        if not self.code:
            return
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join(max(0.0, self.deadline - time.monotonic()))
                if thread.is_alive():
                    return
        self._disarmed.set()
        self.code = 0
        _manager_call("resume")


_guard = _Guard()


def _manager_call(method: str, **kwargs: bool) -> None:
    with contextlib.suppress(Exception):  # a failure here must not mask the signal
        from montage.ffmpeg.manager import get_ffmpeg_memory_manager

        getattr(get_ffmpeg_memory_manager(), method)(**kwargs)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _guard.arm(EXIT_TERMINATED)
    _manager_call("stop_all")
    raise Terminated()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _guard.arm(EXIT_INTERRUPTED)
    _manager_call("stop_all")
    raise KeyboardInterrupt()


def install() -> dict[int, object]:
    """Install the CLI's handlers; return the previous ones for ``restore``.

    An ignored SIGINT stays ignored, as Python itself does: a shell starts background jobs
    (``cmd &``) with SIGINT ignored so that Ctrl-C at the terminal does not reach them.
    """
    previous: dict[int, object] = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_sigterm)}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _on_sigint)
    return previous


def restore(previous: dict[int, object]) -> int:
    """Put the previous handlers back and settle the guard. Returns the exit code a stop
    signal demands (0 if none arrived), even when the interrupted code swallowed it."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
    code = _guard.code
    _guard.settle()
    return code
