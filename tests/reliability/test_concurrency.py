"""Twenty edits at once under a 600 MiB budget, as threads in one process and as 4 processes
of 5 threads: all complete, and the process tree's RSS, sampled every 50 ms by the test
itself, stays under the budget.

The jobs run in child Python processes (each calling ``setup_memory_management``), so the
budget is that process's own and the test's sampler sees exactly the jobs' trees: the sum of
RSS over every descendant of this test process.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from montage.ffmpeg.process import run_ffmpeg
from montage.memory.monitor import memory_guard

pytestmark = pytest.mark.timeout(120)
BUDGET_MB = 600
MIB = 1048576

JOB = textwrap.dedent(
    """
    import json, os, sys
    from concurrent.futures import ThreadPoolExecutor
    from montage.runtime import setup_memory_management
    from montage.video.editor import VideoEditor
    from montage.video.segments import VideoSegment

    src, out_dir, threads, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    assert setup_memory_management(memory_limit=limit)

    def job(i):
        out = os.path.join(out_dir, f"cut-{os.getpid()}-{i}.mp4")
        report = VideoEditor().extract_and_concatenate_efficient(
            src, [VideoSegment(1.0, 2.0, src)], out, mode="accurate")
        return [out, report.output_duration_s, report.peak_memory_mb]

    with ThreadPoolExecutor(threads) as pool:
        print(json.dumps(list(pool.map(job, range(threads)))))
    """
)


class TreeSampler:
    """Peak of the summed RSS of the job processes and their descendants, every 50 ms."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self.samples = 0
        self.roots: list[psutil.Process] = []  # the job processes; only their trees count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-tree-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for root in list(self.roots):
                with contextlib.suppress(psutil.Error):
                    for proc in [root, *root.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            total += proc.memory_info().rss
            self.peak_bytes = max(self.peak_bytes, total)
            self.samples += 1
            self._stop.wait(0.05)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _run_jobs(source: Path, tmp_path: Path, processes: int, threads: int) -> dict[str, Any]:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    limit = f"{BUDGET_MB // processes}M"
    started = time.monotonic()
    with TreeSampler() as sampler:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", JOB, str(source), str(out_dir), str(threads), limit],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        sampler.roots = [psutil.Process(child.pid) for child in children]
        try:
            outputs = [child.communicate(timeout=100) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    for child, (_, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr[-3000:]
    results = [row for stdout, _ in outputs for row in json.loads(stdout)]
    print(f"{processes}x{threads} jobs: tree peak {sampler.peak_bytes / MIB:.0f} MiB")
    return {
        "results": results,
        "peak_mb": sampler.peak_bytes / MIB,
        "samples": sampler.samples,
        "elapsed_s": time.monotonic() - started,
    }


def _check(run: dict[str, Any], jobs: int) -> None:
    results = run["results"]
    assert len(results) == jobs
    assert len({out for out, _, _ in results}) == jobs
    for out, duration_s, _peak in results:
        assert Path(out).is_file()
        assert abs(duration_s - 1.0) < 0.05, (out, duration_s)
    assert run["samples"] >= 20, "the sampler barely ran: the peak means nothing"
    assert 0 < run["peak_mb"] < BUDGET_MB, (
        f"process tree peaked at {run['peak_mb']:.0f} MiB over a {BUDGET_MB} MiB budget"
    )
    assert psutil.Process().children(recursive=True) == []


@pytest.fixture(scope="module")
def silent_clip(make_clip: Any) -> Path:
    """No audio: an audio piece under a 150 MiB budget is refused outright (the xfail below),
    and leaving it out saves a third of the ffmpeg runs on this 2-core machine."""
    return Path(make_clip(audio=False))


def test_twenty_threads_in_one_process_stay_under_the_budget(
    silent_clip: Path, tmp_path: Path
) -> None:
    run = _run_jobs(silent_clip, tmp_path, processes=1, threads=20)
    _check(run, 20)


def test_four_processes_of_five_threads_stay_under_the_budget(
    silent_clip: Path, tmp_path: Path
) -> None:
    run = _run_jobs(silent_clip, tmp_path, processes=4, threads=5)
    _check(run, 20)


def test_small_budget_admits_a_light_audio_job(clip: Path, tmp_path: Path) -> None:
    from montage.memory.usage import process_tree_memory

    wav = tmp_path / "audio.wav"
    argv = ["ffmpeg", "-y", "-i", str(clip), "-vn", "-c:a", "pcm_s16le", str(wav)]
    # 150 MiB for this process alone, or what it already uses (pytest grows) plus 100 MiB
    used_mb = process_tree_memory().tree_rss_bytes / 1048576
    with memory_guard(max(150.0, used_mb + 100.0)):
        process = run_ffmpeg(argv)
    assert process.returncode == 0
    assert wav.stat().st_size > 100_000
