"""SIGTERM/SIGINT handlers that run a cleanup, then do what the previous handler would have.

Why a module of its own: chaining is subtle and independent of *what* is cleaned. The handler
runs the cleanup callable (``montage.resources.cleanup_all`` in practice) and then chains to the
handler it replaced: a Python handler is called, so Ctrl-C still raises ``KeyboardInterrupt``;
``SIG_DFL`` (or a handler installed from C) ends the process the default way, re-raising the
signal with ``SIG_DFL`` so a shell sees 143 for SIGTERM. A signal that was ignored (``SIG_IGN``:
a job started with ``nohup`` or ``&``) stays ignored and cleans nothing, as the process goes on.
``montage.resources.install_signal_handlers`` is the public entry point.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("montage.resources")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)

SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _State:
    """The handlers we replaced and the cleanup to run, behind a re-entrant lock (a signal
    handler may run while the main thread holds it)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.previous_handlers: dict[int, SignalHandler] = {}
        self.cleanup: Callable[[], object] | None = None


_state = _State()


def _chain(signum: int, frame: FrameType | None) -> None:
    """Clean up, then do what the previous handler would have done.

    A signal that was ignored before (SIGINT of a job started in the background, ``nohup``)
    stays ignored, and cleans nothing: the process goes on using its temp files.
    """
    previous = _state.previous_handlers.get(signum, signal.SIG_DFL)
    if previous == signal.SIG_IGN:
        return
    cleanup = _state.cleanup
    if cleanup is not None:
        cleanup()
    if callable(previous):
        previous(signum, frame)  # default SIGINT handler raises KeyboardInterrupt here
        return
    # SIG_DFL (or a handler installed from C we cannot call): die the default way.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1.0)  # delivery is asynchronous when other threads run
    os._exit(128 + signum)


def install_chaining_handlers(cleanup: Callable[[], object]) -> bool:
    """Make SIGTERM/SIGINT run ``cleanup`` and chain to the current handlers. Idempotent.

    Only the main thread may install signal handlers; elsewhere this logs and returns False.
    """
    if threading.current_thread() is not threading.main_thread():
        logger.warning("signal handlers not installed: not called from the main thread")
        return False
    with _state.lock:
        _state.cleanup = cleanup
        for signum in HANDLED_SIGNALS:
            current = signal.getsignal(signum)
            if current is _chain:
                continue
            _state.previous_handlers[signum] = current
            signal.signal(signum, _chain)
    return True


def uninstall_signal_handlers() -> None:
    """Restore the handlers that were there before (tests, embedding applications)."""
    if threading.current_thread() is not threading.main_thread():
        return
    with _state.lock:
        for signum, previous in list(_state.previous_handlers.items()):
            if signal.getsignal(signum) is _chain:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            del _state.previous_handlers[signum]


def signal_handlers_installed() -> bool:
    """Whether our chaining handler is the current SIGTERM and SIGINT handler."""
    return all(signal.getsignal(signum) is _chain for signum in HANDLED_SIGNALS)
