"""Running a chunked run's jobs: the thread-pool runner, the user-function job, the report.

The runner stops everything on the first failure or on Ctrl-C, so a failed chunk costs one
chunk's work, not the rest of the file; see ``montage.ffmpeg.chunks`` for the orchestration.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from montage.errors import FFmpegError, MontageError

if TYPE_CHECKING:
    from montage.ffmpeg.probe import MediaInfo
    from montage.ffmpeg.process import FFmpegProcess

__all__ = [
    "ChunkError",
    "ChunkReport",
    "ProcessingFunction",
    "ProgressCallback",
]

ProcessingFunction = Callable[[Path, Path], "bool | None"]
"""``fn(chunk_in, chunk_out) -> None | bool``; see ``chunks.process_video_chunks``."""
ProgressCallback = Callable[[int, int], None]
"""``progress(chunks_done, chunks_total)``, called from the caller's thread."""


class ChunkError(MontageError):
    """A chunk's processing function failed (returned False, raised, or wrote nothing)."""

    def __init__(self, message: str, *, chunk_index: int) -> None:
        super().__init__(message)
        self.chunk_index = chunk_index


@dataclass(frozen=True)
class ChunkReport:
    """What a chunked run did, with the numbers it was verified by."""

    chunks: int
    chunk_duration_s: float
    workers: int
    input_frames: int
    output_frames: int
    input_duration_s: float
    output_duration_s: float
    audio: str  # "once" | "copy" | "none" | "absent" (the input has no audio)
    split_s: float
    process_s: float
    join_s: float
    wall_s: float
    peak_chunk_memory_mb: float | None  # largest ffmpeg tree peak among the chunk jobs
    warnings: tuple[str, ...] = ()  # subtitle/data streams of the input not kept, and why


def _function_job(
    fn: ProcessingFunction, media: MediaInfo, index: int, chunk_in: Path, chunk_out: Path
) -> None:
    """Call the user's function under a budget reservation sized like one chunk encode."""
    from montage.ffmpeg.profiles import predict_peak_mb
    from montage.memory.budget import get_memory_budget

    need_mb = predict_peak_mb(media, operation="encode")
    with get_memory_budget().reserve(need_mb, name=f"chunk {index} ({chunk_in.name})"):
        try:
            result = fn(chunk_in, chunk_out)
        except MontageError:
            raise
        except Exception as exc:
            raise ChunkError(
                f"processing function failed on chunk {index} ({chunk_in.name}): {exc!r}",
                chunk_index=index,
            ) from exc
    if result is False:
        raise ChunkError(f"processing function returned False for chunk {index}", chunk_index=index)
    if not chunk_out.is_file() or chunk_out.stat().st_size == 0:
        raise ChunkError(
            f"processing function wrote no output for chunk {index} (expected {chunk_out})",
            chunk_index=index,
        )


class _JobRunner:
    """A thread pool that stops everything on the first failure or on Ctrl-C.

    Running ffmpeg jobs are stopped through their process objects; a user function already
    running is waited for (Python cannot interrupt a thread), jobs not started never start.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.abort = threading.Event()
        self._lock = threading.Lock()
        self._live: set[FFmpegProcess] = set()

    def ffmpeg(self, cmd: list[str], name: str, video_path: Path | None = None) -> float | None:
        """Run one ffmpeg job (admitted by the budget in ``memory_safe_ffmpeg``), stoppable
        from the caller's thread; return its tree's peak MiB."""
        from montage.ffmpeg.process import memory_safe_ffmpeg

        with memory_safe_ffmpeg(cmd, video_path=video_path, name=name) as proc:
            with self._lock:
                self._live.add(proc)
            try:
                if self.abort.is_set():
                    proc.terminate()
                returncode = proc.wait()
            finally:
                with self._lock:
                    self._live.discard(proc)
        if returncode != 0:
            raise FFmpegError(
                f"{name}: ffmpeg exited with {returncode}",
                returncode=returncode,
                cmd=cmd,
                stderr_tail=proc.stderr_tail,
            )
        return proc.peak_memory_mb

    def stop(self) -> None:
        """No new job starts; running ffmpeg jobs are terminated (and reaped by their blocks)."""
        self.abort.set()
        with self._lock:
            live = list(self._live)
        for proc in live:
            proc.terminate()

    def run(
        self,
        jobs: Sequence[Callable[[], float | None]],
        counted: int,
        progress: ProgressCallback | None,
    ) -> list[float | None]:
        """Run ``jobs``; the first ``counted`` are the video chunks that ``progress`` counts."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="montage-chunk")
        futures: dict[Future[float | None], int] = {}
        try:
            futures = {pool.submit(self._guard, job): i for i, job in enumerate(jobs)}
            done = 0
            for future in as_completed(futures):
                future.result()
                if futures[future] < counted:
                    done += 1
                    if progress is not None:
                        progress(done, counted)
        except BaseException:
            self.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return [f.result() for f in sorted(futures, key=futures.__getitem__)]

    def _guard(self, job: Callable[[], float | None]) -> float | None:
        from montage.memory.budget import CANCEL_WAITS

        if self.abort.is_set():
            raise ChunkError("stopped: another chunk failed", chunk_index=-1)
        token = CANCEL_WAITS.set(self.abort)  # a stop also ends this thread's wait for memory
        try:
            return job()
        finally:
            CANCEL_WAITS.reset(token)
