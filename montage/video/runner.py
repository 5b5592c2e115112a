"""Runs an edit's ffmpeg jobs one at a time, through ``run_ffmpeg``, with progress and peaks.

One child at a time is the point: an edit's peak memory is that of its largest single job,
whatever the number of segments. Each job is budgeted, capped and reaped by the ffmpeg layer.
"""

from __future__ import annotations

import logging
import re
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from montage.ffmpeg.process import FFmpegProgress

log = logging.getLogger(__name__)
ProgressCallback = Callable[[float, str], object]
# Short jobs (most pieces) end within a few ms of the first poll; long ones are polled at
# 10 Hz, the rate progress is worth reporting at.
POLL_FIRST_S = 0.002
POLL_MAX_S = 0.1
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass(frozen=True)
class Job:
    """One ffmpeg run: ``weight`` is its share of the whole edit's work (for progress)."""

    cmd: list[str]
    name: str
    weight: float
    media_s: float
    video_path: Path | None = None


@dataclass
class JobRunner:
    """Executes jobs in order and remembers what they cost."""

    memory_limit_mb: float | None
    progress: ProgressCallback | None
    peak_memory_mb: float = 0.0
    runs: int = 0
    _done: float = 0.0
    _total: float = 1.0
    _reported: float = 0.0
    stderr_tails: list[str] = field(default_factory=list)

    def run_all(self, jobs: Sequence[Job], *, share: float = 1.0) -> None:
        """Run ``jobs``; together they advance progress by ``share`` of the whole edit."""
        total = sum(j.weight for j in jobs) or 1.0
        for job in jobs:
            self.run(job, scale=share / total)

    def run(self, job: Job, *, scale: float = 1.0) -> str:
        """Run one job (raising the ffmpeg layer's typed errors); returns its stderr tail.

        ffmpeg's progress arrives on a reader thread; the caller's callback is called from
        *this* thread, so an exception it raises (Ctrl-C, a cancel) stops the job and
        propagates like any other, with the child stopped and reaped by the ffmpeg layer.
        """
        from montage.errors import FFmpegError

        try:
            return self._run_once(job, scale)
        except FFmpegError as error:
            if not _killed_for_memory(error):
                raise
            log.warning("%s was killed (%s); running it once more", job.name, error)
            return self._run_once(job, scale)

    def _run_once(self, job: Job, scale: float) -> str:
        from montage.ffmpeg.process import memory_safe_ffmpeg

        start = self._done
        weight = job.weight * scale
        started_s = time.monotonic()
        hwm_before_mb = _children_hwm_mb()
        latest_s = [0.0]

        def on_progress(p: FFmpegProgress) -> None:
            latest_s[0] = p.out_time_s

        video_path = str(job.video_path) if job.video_path else None
        with memory_safe_ffmpeg(
            job.cmd, self.memory_limit_mb, video_path, name=job.name, on_progress=on_progress
        ) as proc:
            pause_s = POLL_FIRST_S
            while proc.poll() is None:
                time.sleep(pause_s)
                pause_s = min(POLL_MAX_S, pause_s * 2)
                if job.media_s > 0:
                    done = min(1.0, latest_s[0] / job.media_s)
                    self.report(start + weight * done, job.name)
            proc.wait()
        self.runs += 1
        peak_mb = max(float(proc.peak_memory_mb), _kernel_peak_mb(hwm_before_mb))
        self.peak_memory_mb = max(self.peak_memory_mb, peak_mb)
        log.debug("%s: %.2f s, peak %.1f MiB", job.name, time.monotonic() - started_s, peak_mb)
        self._done = start + weight
        self.report(self._done, job.name)
        return proc.stderr_tail

    def report(self, fraction: float, message: str) -> None:
        """Tell the caller; fractions never go backwards and stay within 0..1."""
        value = min(1.0, max(self._reported, fraction))
        self._reported = value
        if self.progress is not None:
            self.progress(value, message)


def _killed_for_memory(error: Exception) -> bool:
    """Preempted by the manager under CRITICAL pressure, or SIGKILLed from outside (the
    kernel's OOM killer): worth one more run once memory is back, since every piece writes
    with ``-y`` to its own temp name. A job over its own cap would only fail again."""
    from montage.errors import FFmpegMemoryExceeded, FFmpegTimeoutError
    from montage.ffmpeg.process import FFmpegJobPreempted

    if isinstance(error, FFmpegJobPreempted):
        return True
    if isinstance(error, (FFmpegMemoryExceeded, FFmpegTimeoutError)):
        return False
    return getattr(error, "returncode", None) == -9


def _children_hwm_mb() -> float:
    """The kernel's high-water RSS over every child this process has reaped (MiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _kernel_peak_mb(before_mb: float) -> float:
    """The job's peak by the kernel, when it set a new high for our children; else 0.

    The tree sampler polls, so a job of a few ms can end between samples and look smaller
    than it was; the kernel's ``ru_maxrss`` cannot miss it, but it only tells us about a
    job whose peak beat every earlier child's.
    """
    after_mb = _children_hwm_mb()
    return after_mb if after_mb > before_mb else 0.0


class WorkDir:
    """The edit's private temp folder: concat lists and safe-named links to the sources.

    The concat demuxer's safe mode only accepts plain relative names, so each source gets a
    link named ``src<N>.<ext>`` here instead of passing ``-safe 0`` with foreign paths.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._links: dict[Path, str] = {}
        self._counter = 0

    def link(self, source: Path) -> str:
        key = source.resolve()
        if key not in self._links:
            suffix = source.suffix if _SAFE_SUFFIX.match(source.suffix) else ".media"
            name = f"src{len(self._links)}{suffix}"
            (self.path / name).symlink_to(key)
            self._links[key] = name
        return self._links[key]

    def name(self, stem: str, suffix: str) -> Path:
        """A fresh file path in the folder (``v0003.ts``)."""
        self._counter += 1
        return self.path / f"{stem}{self._counter:05d}{suffix}"

    def write_list(self, stem: str, text: str) -> Path:
        path = self.name(stem, ".ffconcat")
        path.write_text(text, encoding="utf-8")
        return path
