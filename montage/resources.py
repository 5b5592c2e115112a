"""Temp files, temp folders and other resources that must not outlive the job.

Why a module of its own: a video job leaves large intermediates behind (chunks, concat lists,
partial outputs). They must go away when the block that made them ends *by any route*
(return, exception, Ctrl-C, SIGTERM from a container runtime), and a process that was killed
with SIGKILL must not leak them forever.

How:

* Every temp path lives in one per-process folder, ``$TMPDIR/montage-<pid>-<start>`` where
  ``<start>`` is the process's creation time as an integer (so a reused PID is never mistaken for
  us). It is created lazily (mode 0700) on first use, never at import.
* ``managed_tempfile`` / ``managed_temp_directory`` register their path in a registry while the
  block runs and remove it on exit. ``register_cleanup`` adds paths or callables that live until
  ``cleanup_all()``.
* ``install_signal_handlers()`` (called by ``setup_memory_management``) registers ``cleanup_all``
  with ``atexit`` and installs SIGTERM/SIGINT handlers that clean up and then *chain* to the
  previous handler: Ctrl-C still raises ``KeyboardInterrupt``, and a default SIGTERM still ends
  the process with status 143 (the chaining lives in ``montage.signal_cleanup``).
* ``sweep_stale_temp_dirs()`` removes the folders of processes that are gone (SIGKILL, OOM kill).

After ``fork()`` the child gets a fresh folder and an empty registry: it never removes what its
parent made.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from montage.signal_cleanup import install_chaining_handlers
from montage.signal_cleanup import signal_handlers_installed as signal_handlers_installed
from montage.signal_cleanup import uninstall_signal_handlers as uninstall_signal_handlers

logger = logging.getLogger(__name__)

OPENCV_EXTRA_HINT = "pip install 'montage-video[opencv]'"
_ROOT_PATTERN = re.compile(r"^montage-(\d+)-(\d+)$")

Cleanup = Path | Callable[[], object]


@dataclass
class _Entry:
    target: Cleanup
    active: bool  # True while a managed_* block owns it


class _State:
    """Module state behind one re-entrant lock (a signal handler may run while it is held)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.owner_pid = os.getpid()
        self.root: Path | None = None
        self.entries: dict[int, _Entry] = {}
        self.next_token = 0
        self.atexit_registered = False


_state = _State()


def _check_fork() -> None:
    """After fork() forget the parent's folder and registry (they are the parent's to remove)."""
    if _state.owner_pid != os.getpid():
        _state.owner_pid = os.getpid()
        _state.root = None
        _state.entries = {}


def _process_start_int(pid: int) -> int | None:
    """Creation time of ``pid`` as whole seconds since the epoch; None if the process is gone."""
    import psutil

    try:
        return int(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def _temp_base() -> Path:
    return Path(tempfile.gettempdir())


def montage_temp_root() -> Path:
    """This process's temp folder, created (0700) on first call."""
    with _state.lock:
        _check_fork()
        if _state.root is None or not _state.root.is_dir():
            pid = os.getpid()
            start = _process_start_int(pid) or int(time.time())
            root = _temp_base() / f"montage-{pid}-{start}"
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            _state.root = root
        return _state.root


def register_cleanup(target: Path | str | Callable[[], object]) -> int:
    """Remove this path (file or folder) or call this callable at ``cleanup_all()``/exit.

    Returns a token for ``unregister_cleanup``.
    """
    item: Cleanup = Path(target) if isinstance(target, str | Path) else target
    return _register(item, active=False)


def _register(item: Cleanup, *, active: bool) -> int:
    with _state.lock:
        _check_fork()
        _state.next_token += 1
        _state.entries[_state.next_token] = _Entry(item, active)
        return _state.next_token


def unregister_cleanup(token: int) -> None:
    """Forget a registered item without cleaning it (it is the caller's again)."""
    with _state.lock:
        _state.entries.pop(token, None)


def _remove_path(path: Path) -> None:
    """Remove a file, link or folder; a missing path is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:  # permission, busy: log, never raise from cleanup
        logger.warning("could not remove temp path %s: %s", path, exc)


def _run_cleanup(item: Cleanup) -> None:
    if isinstance(item, Path):
        _remove_path(item)
        return
    try:
        item()
    except Exception:  # one failing callback must not stop the others
        logger.exception("cleanup callable %r failed", item)


def cleanup_all(*, remove_root: bool = True) -> int:
    """Clean every registered item (newest first) and, by default, the per-process folder.

    Called at exit and from the signal handlers; safe to call again. Returns how many registry
    items were cleaned. In a forked child it only drops the inherited registry.
    """
    with _state.lock:
        if _state.owner_pid != os.getpid():
            _check_fork()
            return 0
        items = [entry.target for _, entry in sorted(_state.entries.items(), reverse=True)]
        _state.entries.clear()
        root = _state.root if remove_root else None
        if remove_root:
            _state.root = None
    for item in items:
        _run_cleanup(item)
    if root is not None:
        _remove_path(root)
    return len(items)


def forget_missing() -> int:
    """Drop registry entries whose path no longer exists (bookkeeping only). Returns the count."""
    with _state.lock:
        gone = [
            token
            for token, entry in _state.entries.items()
            if isinstance(entry.target, Path) and not entry.target.exists() and not entry.active
        ]
        for token in gone:
            del _state.entries[token]
        return len(gone)


def _unique_name(prefix: str, suffix: str) -> str:
    return f"{prefix}{os.getpid()}_{uuid.uuid4().hex[:12]}{suffix}"


@contextmanager
def managed_tempfile(
    suffix: str = "", prefix: str = "montage_", dir: str | Path | None = None
) -> Iterator[Path]:
    """Yield a fresh temp path that is removed when the block ends, by any route.

    The file is NOT created: the name is unique inside a private folder, so tools that refuse to
    overwrite (ffmpeg without ``-y``) can write it. Whatever ends up at the path (file or
    folder) is removed on exit, and on SIGTERM/SIGINT/exit once handlers are installed.
    """
    folder = Path(dir) if dir is not None else montage_temp_root()
    path = folder / _unique_name(prefix, suffix)
    token = _register(path, active=True)
    try:
        yield path
    finally:
        unregister_cleanup(token)
        _remove_path(path)


@contextmanager
def managed_temp_directory(
    prefix: str = "montage_", dir: str | Path | None = None
) -> Iterator[Path]:
    """Yield a new empty temp folder that is removed with its contents when the block ends."""
    folder = Path(dir) if dir is not None else montage_temp_root()
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    token = _register(path, active=True)
    try:
        yield path
    finally:
        unregister_cleanup(token)
        _remove_path(path)


@contextmanager
def managed_opencv_capture(path: str | Path) -> Iterator[Any]:
    """Yield an opened ``cv2.VideoCapture`` and release it on exit (its buffers are native).

    OpenCV is optional: without it this raises ImportError naming the extra to install.
    """
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(
            f"managed_opencv_capture needs OpenCV, which is not installed: {OPENCV_EXTRA_HINT}"
        ) from exc
    from montage.errors import MediaNotFoundError, NotMediaError

    source = Path(path)
    if not source.exists():
        raise MediaNotFoundError(str(source), f"{source}: no such file")
    capture = cv2.VideoCapture(str(source))
    try:
        if not capture.isOpened():
            raise NotMediaError(str(source), f"{source}: OpenCV cannot open it as video")
        yield capture
    finally:
        capture.release()


def _is_alive(pid: int, start: int) -> bool:
    actual = _process_start_int(pid)
    return actual is not None and abs(actual - start) <= 1


def sweep_stale_temp_dirs(base: str | Path | None = None) -> list[Path]:
    """Remove ``montage-<pid>-<start>`` folders (ours by uid) whose process is gone.

    A process is gone when the pid does not exist or its creation time differs (pid reused).
    Returns the folders removed.
    """
    folder = Path(base) if base is not None else _temp_base()
    removed: list[Path] = []
    try:
        candidates = list(folder.iterdir())
    except OSError as exc:
        logger.warning("cannot list %s for stale temp folders: %s", folder, exc)
        return removed
    for candidate in candidates:
        match = _ROOT_PATTERN.match(candidate.name)
        if match is None or not _owned_dir(candidate):
            continue
        if _is_alive(int(match.group(1)), int(match.group(2))):
            continue
        logger.info("removing stale temp folder %s (its process is gone)", candidate)
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


def _owned_dir(path: Path) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    import stat

    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def install_signal_handlers() -> bool:
    """Register ``cleanup_all`` at exit and chain SIGTERM/SIGINT handlers to it. Idempotent.

    Only the main thread may install signal handlers; elsewhere this logs and returns False.
    The chaining itself lives in ``montage.signal_cleanup``.
    """
    if not install_chaining_handlers(cleanup_all):
        return False
    with _state.lock:
        if not _state.atexit_registered:
            atexit.register(cleanup_all)
            _state.atexit_registered = True
    return True


def _describe(entry: _Entry) -> dict[str, Any]:
    target = entry.target
    if not isinstance(target, Path):
        return {"kind": "callable", "target": repr(target), "size_bytes": 0, "active": entry.active}
    if target.is_dir():
        kind, size = "directory", _tree_size_bytes(target)
    elif target.exists():
        kind, size = "file", target.stat().st_size
    else:
        kind, size = "missing", 0
    return {"kind": kind, "target": str(target), "size_bytes": size, "active": entry.active}


def _tree_size_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def get_resource_status() -> dict[str, Any]:
    """What is registered for cleanup right now, with sizes (for status output and debugging)."""
    with _state.lock:
        _check_fork()
        entries = list(_state.entries.values())
        root = _state.root
    items = [_describe(entry) for entry in entries]
    return {
        "temp_root": str(root) if root is not None else None,
        "temp_root_size_bytes": _tree_size_bytes(root) if root is not None else 0,
        "registered_count": len(items),
        "registered": items,
        "total_size_bytes": sum(int(item["size_bytes"]) for item in items),
        "signal_handlers_installed": signal_handlers_installed(),
    }


def release_freed_memory() -> bool:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``); False where unsupported.

    Why: opening a long MP4 (PyAV probe) reads its whole sample index; once closed, glibc keeps
    the pages, so RSS would grow with the file's length though nothing uses them.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` from the symbols already loaded (no ``find_library``: it runs
    ``ldconfig`` in a subprocess)."""
    import ctypes

    for name in (None, "libc.so.6"):
        try:
            return ctypes.CDLL(name).malloc_trim
        except (OSError, AttributeError):
            continue
    return None
