"""The registry of our live ffmpeg jobs and the memory-pressure policy that acts on them.

Every ``memory_safe_ffmpeg`` child registers here, so the totals the spec prints
(``get_active_process_count()``, ``get_total_memory_usage()``) cover exactly the processes we
started: this module never looks at, let alone signals, a process it did not start.
Pressure responses are off until ``enable_pressure_responses()`` (called by
``runtime.setup_memory_management``): on HIGH new jobs get a cheaper profile
(``recommended_profile``); on CRITICAL the newest job started with ``retriable=True`` is killed
and its owner (``run_with_retry``) re-runs it one profile cheaper.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from montage.errors import FFmpegError, FFmpegMemoryExceeded, FFmpegTimeoutError, MontageError
from montage.ffmpeg.profiles import FFmpegMemoryProfile, cheaper, predict_peak_mb, profile_for_level
from montage.memory.pressure import MemoryPressureLevel

if TYPE_CHECKING:
    from montage.ffmpeg.process import FFmpegProcess
    from montage.memory.monitor import MemoryMonitor, MemoryStats

logger = logging.getLogger("montage.ffmpeg")

FALLBACK_NEED_MB = 256.0  # reserved when the model cannot say (an encoder it does not know)
_PROFILE_ORDER = tuple(FFmpegMemoryProfile.__members__.values())  # cheapest first
_VIDEO_CODEC_FLAGS = ("-c:v", "-vcodec", "-codec:v", "-c:v:0", "-codec:v:0", "-c", "-codec")
_DECODE_ONLY_CODECS = ("rawvideo", "wrapped_avframe")


def guess_job(argv: Sequence[str]) -> dict[str, Any]:
    """What the model needs from an argv: operation, codec, preset, threads (last one wins)."""
    found: dict[str, str] = {}
    for flag, value in pairwise(argv):
        if flag in _VIDEO_CODEC_FLAGS:
            found["codec"] = value
        elif flag in ("-preset", "-preset:v"):
            found["preset"] = value
        elif flag == "-threads" and value.isdigit():
            found["threads"] = value
        elif flag == "-f":
            found["format"] = value
    codec = found.get("codec")
    if codec is None and "-vn" in argv:
        codec = "copy"  # no video is decoded or encoded: audio work is small, like a copy
    if codec == "copy":
        operation = "copy"
    elif codec in _DECODE_ONLY_CODECS or (codec is None and found.get("format") == "null"):
        operation = "decode"
    else:
        operation = "encode"
    return {
        "operation": operation,
        "codec": codec if operation == "encode" and codec else "libx264",
        "preset": found.get("preset"),
        "threads": int(found["threads"]) if "threads" in found else None,
    }


class FFmpegMemoryManager:
    """Live ffmpeg jobs we started, their totals, and the pressure responses."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._jobs: list[FFmpegProcess] = []  # in start order: the newest is last
        self._level = MemoryPressureLevel.LOW
        self._monitor: MemoryMonitor | None = None
        self.preempted: list[tuple[str, int, float]] = []  # (name, pid, memory_mb) per kill
        self.stopping = False  # set by stop_all(): the process is being interrupted

    # --- registry -----------------------------------------------------------------------

    def register(self, process: FFmpegProcess) -> None:
        with self._lock:
            self._jobs.append(process)
        if self.stopping:  # started by a worker thread after the stop signal
            process.request_stop()

    def stop_all(self, *, kill: bool = False) -> int:
        """SIGTERM (``kill``: SIGKILL, the CLI's exit guard's last resort) every job's process
        group, without waiting and without taking the lock (a signal handler may have
        interrupted its holder); jobs registered afterwards are stopped as they start. Their
        owners reap them. Returns how many were signalled."""
        self.stopping = True
        jobs = tuple(self._jobs)  # a snapshot: list copies are atomic under the GIL
        for job in jobs:
            with contextlib.suppress(Exception):  # a job that already ended
                job.request_stop(kill=kill)
        return len(jobs)

    def resume(self) -> None:
        """Jobs may start again (the interrupted CLI run has ended and was embedded)."""
        self.stopping = False

    def unregister(self, process: FFmpegProcess) -> None:
        with self._lock:
            if process in self._jobs:
                self._jobs.remove(process)

    def jobs(self) -> list[FFmpegProcess]:
        """Our running ffmpeg jobs, oldest first."""
        with self._lock:
            jobs = list(self._jobs)
        return [job for job in jobs if job.poll() is None]

    def get_active_process_count(self) -> int:
        return len(self.jobs())

    def get_total_memory_usage(self) -> float:
        """MiB of RSS of our live ffmpeg trees (each sampled within the last 50 ms)."""
        return sum(job.memory_mb for job in self.jobs())

    # --- prediction and profiles ----------------------------------------------------------

    @property
    def pressure_level(self) -> MemoryPressureLevel:
        return self._level

    def predict_need_mb(
        self, argv: Sequence[str], video_path: str | os.PathLike[str] | None = None
    ) -> float:
        """MiB to reserve for ``argv``: the profiles model, fed by the probe and the argv."""
        media = None
        if video_path is not None:
            from montage.ffmpeg.probe import probe

            try:
                media = probe(video_path)
            except MontageError as exc:
                logger.debug("cannot probe %s for a prediction: %s", video_path, exc)
        try:
            return predict_peak_mb(media, FFmpegMemoryProfile.BALANCED, **guess_job(argv))
        except (ValueError, KeyError) as exc:
            logger.debug("no prediction for %s (%s): reserving %s MiB", argv, exc, FALLBACK_NEED_MB)
            return FALLBACK_NEED_MB

    def recommended_profile(
        self, requested: FFmpegMemoryProfile | str = FFmpegMemoryProfile.BALANCED
    ) -> FFmpegMemoryProfile:
        """The profile a new job should use now: ``requested``, made cheaper at HIGH or above."""
        wanted = FFmpegMemoryProfile(requested)
        if self._level < MemoryPressureLevel.HIGH:
            return wanted
        one_step = cheaper(wanted) or wanted
        chosen = min(one_step, profile_for_level(self._level), key=_PROFILE_ORDER.index)
        logger.info(
            "pressure %s: new job gets profile %s instead of %s", self._level, chosen, wanted
        )
        return chosen

    # --- pressure responses ------------------------------------------------------------------

    def enable_pressure_responses(self, monitor: MemoryMonitor | None = None) -> None:
        """Follow the monitor's level changes (idempotent)."""
        if monitor is None:
            from montage.memory.monitor import get_memory_monitor

            monitor = get_memory_monitor()
        self.disable_pressure_responses()
        self._monitor = monitor
        monitor.register_callback(self._on_level_change)

    def disable_pressure_responses(self) -> None:
        if self._monitor is not None:
            self._monitor.unregister_callback(self._on_level_change)
            self._monitor = None
        self._level = MemoryPressureLevel.LOW

    def _on_level_change(
        self, previous: MemoryPressureLevel, level: MemoryPressureLevel, stats: MemoryStats
    ) -> None:
        self.respond_to_pressure(previous, level, stats)

    def respond_to_pressure(
        self,
        previous: MemoryPressureLevel,
        level: MemoryPressureLevel,
        stats: MemoryStats | None = None,
    ) -> FFmpegProcess | None:
        """The monitor callback: remember the level; on entering CRITICAL preempt one job."""
        self._level = MemoryPressureLevel(level)
        used = f"{stats.percent_used:.1f}% used" if stats is not None else "no stats"
        if self._level >= MemoryPressureLevel.HIGH:
            logger.warning(
                "memory pressure %s -> %s (%s): %d ffmpeg jobs using %.1f MiB",
                previous,
                level,
                used,
                self.get_active_process_count(),
                self.get_total_memory_usage(),
            )
        if self._level == MemoryPressureLevel.CRITICAL and previous != MemoryPressureLevel.CRITICAL:
            return self.preempt_newest_retriable(f"memory pressure CRITICAL ({used})")
        return None

    def preempt_newest_retriable(
        self, reason: str = "memory pressure CRITICAL"
    ) -> FFmpegProcess | None:
        """Kill the newest live job started with ``retriable=True``; return it (or None)."""
        for job in reversed(self.jobs()):
            if job.retriable and job.preempt(reason):
                self.preempted.append((job.name, job.pid, job.memory_mb))
                return job
        logger.warning("%s: no retriable ffmpeg job to stop", reason)
        return None

    # --- running with a cheaper retry ---------------------------------------------------------

    def run_with_retry(
        self,
        build_cmd: Callable[[FFmpegMemoryProfile], Sequence[str | os.PathLike[str]]],
        profile: FFmpegMemoryProfile | str = FFmpegMemoryProfile.BALANCED,
        **options: Any,
    ) -> FFmpegProcess:
        """Run ``build_cmd(profile)``; if memory stopped it, re-run once one profile cheaper.

        Retried: the cap was passed (``FFmpegMemoryExceeded``), the manager preempted it
        (CRITICAL), or a signal killed it (the kernel's OOM killer). Not retried: timeouts and
        ordinary ffmpeg errors. The command must be safe to re-run (e.g. ``-y`` on outputs).
        ``options`` go to ``memory_safe_ffmpeg`` (``retriable=True`` is implied).
        """
        from montage.ffmpeg.process import run_ffmpeg

        current = self.recommended_profile(profile)
        first_error: FFmpegError | None = None
        while True:
            try:
                return run_ffmpeg(build_cmd(current), retriable=True, **options)
            except FFmpegError as exc:
                if not _is_memory_failure(exc):
                    raise
                retry_with = cheaper(current) if first_error is None else None
                if retry_with is None:
                    raise _gave_up(exc, current, first_error) from exc
                logger.warning(
                    "%s with profile %s (%s); re-running with profile %s",
                    options.get("name", "ffmpeg"),
                    current.value,
                    _describe(exc),
                    retry_with.value,
                )
                first_error, current = exc, retry_with

    def process_video_chunks(
        self,
        input_path: str | Path,
        output_path: str | Path,
        processing_function: Callable[..., Any],
        chunk_duration: float | None = None,
    ) -> Any:
        """The spec's ``manager.process_video_chunks(...)``: see ``montage.ffmpeg.chunks``."""
        from montage.ffmpeg.chunks import process_video_chunks

        return process_video_chunks(input_path, output_path, processing_function, chunk_duration)


def _is_memory_failure(exc: FFmpegError) -> bool:
    """Our cap, the manager's preemption, or a SIGKILL from outside (the kernel's OOM killer).

    Other signals are not memory: SIGXFSZ is a full disk or a file-size limit, SIGTERM a stop.
    """
    if isinstance(exc, FFmpegMemoryExceeded):
        return True
    return exc.returncode == -signal.SIGKILL and not isinstance(exc, FFmpegTimeoutError)


def _describe(exc: FFmpegError) -> str:
    if isinstance(exc, FFmpegMemoryExceeded):
        return f"peak {exc.peak_mb:.1f} MiB, cap {exc.limit_mb:.1f} MiB"
    return "killed by SIGKILL (signal 9: the kernel's OOM killer or another process)"


def _gave_up(
    exc: FFmpegError, profile: FFmpegMemoryProfile, first: FFmpegError | None
) -> FFmpegError:
    history = f" after first failing ({_describe(first)})" if first is not None else ""
    message = (
        f"ffmpeg failed with profile {profile.value} ({_describe(exc)}){history}; "
        "give it a larger memory limit or a cheaper command"
    )
    if isinstance(exc, FFmpegMemoryExceeded):
        return FFmpegMemoryExceeded(
            message,
            limit_mb=exc.limit_mb,
            peak_mb=exc.peak_mb,
            cmd=exc.cmd,
            stderr_tail=exc.stderr_tail,
            returncode=exc.returncode,
        )
    return FFmpegError(message, returncode=exc.returncode, cmd=exc.cmd, stderr_tail=exc.stderr_tail)


_manager: FFmpegMemoryManager | None = None
_manager_lock = threading.RLock()


def get_ffmpeg_memory_manager() -> FFmpegMemoryManager:
    """The process-wide manager (created on first call; pressure responses off until enabled)."""
    global _manager
    if _manager is None:
        with _manager_lock:
            if _manager is None:
                _manager = FFmpegMemoryManager()
    return _manager


def run_with_retry(
    build_cmd: Callable[[FFmpegMemoryProfile], Sequence[str | os.PathLike[str]]],
    profile: FFmpegMemoryProfile | str = FFmpegMemoryProfile.BALANCED,
    **options: Any,
) -> FFmpegProcess:
    """``get_ffmpeg_memory_manager().run_with_retry(...)``."""
    return get_ffmpeg_memory_manager().run_with_retry(build_cmd, profile, **options)


__all__ = [
    "FFmpegMemoryManager",
    "get_ffmpeg_memory_manager",
    "guess_job",
    "run_with_retry",
]
