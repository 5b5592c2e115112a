"""SIGKILL an ffmpeg child mid-job (what the kernel's OOM killer does): retried once, then a
clear error; nothing is left behind either way."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from montage.errors import FFmpegError, FFmpegTimeoutError
from montage.ffmpeg.manager import get_ffmpeg_memory_manager, run_with_retry
from montage.ffmpeg.profiles import FFmpegMemoryProfile
from montage.resources import montage_temp_root
from montage.video.editor import VideoEditor
from montage.video.segments import VideoSegment

pytestmark = pytest.mark.timeout(60)


class Killer:
    """Sends SIGKILL to the first ``count`` distinct ffmpeg jobs the manager registers,
    ``delay_s`` after each is seen running."""

    def __init__(self, count: int, delay_s: float = 0.2) -> None:
        self.count = count
        self.delay_s = delay_s
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-killer", daemon=True)

    def _run(self) -> None:
        manager = get_ffmpeg_memory_manager()
        seen: set[int] = set()
        while len(self.killed) < self.count and not self._stop.is_set():
            for job in manager.jobs():
                if job.pid in seen or job.poll() is not None:
                    continue
                seen.add(job.pid)
                time.sleep(self.delay_s)
                if job.poll() is None:
                    try:
                        os.kill(job.pid, signal.SIGKILL)
                    except ProcessLookupError:  # it ended and was reaped since the poll
                        continue
                    self.killed.append(job.pid)
                if len(self.killed) >= self.count:
                    return
            time.sleep(0.005)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _no_children_left() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.status() != "zombie"]


@pytest.fixture(autouse=True)
def _reaped() -> Iterator[None]:
    yield
    assert psutil.Process().children(recursive=True) == [], "a child outlived the test"
    assert get_ffmpeg_memory_manager().jobs() == []


def _slow_encode(profile: FFmpegMemoryProfile, profiles: list[FFmpegMemoryProfile]) -> list[str]:
    profiles.append(profile)
    return [
        "ffmpeg", "-hide_banner", "-nostdin",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=120",
        "-c:v", "libx264", "-preset", "ultrafast", "-f", "null", "-",
    ]  # fmt: skip


def test_killed_once_is_retried_cheaper_and_succeeds() -> None:
    profiles: list[FFmpegMemoryProfile] = []

    def build(profile: FFmpegMemoryProfile) -> list[str]:
        cmd = _slow_encode(profile, profiles)
        if len(profiles) == 2:  # the retry: a short run that can finish
            cmd[cmd.index("testsrc2=size=320x240:rate=25:duration=120")] = (
                "testsrc2=size=320x240:rate=25:duration=1"
            )
        return cmd

    with Killer(count=1) as killer:
        process = run_with_retry(build, FFmpegMemoryProfile.BALANCED)
    assert len(killer.killed) == 1
    assert process.returncode == 0
    assert process.pid != killer.killed[0]
    assert profiles == [FFmpegMemoryProfile.BALANCED, FFmpegMemoryProfile.LOW]


def test_killed_twice_gives_a_clear_error_naming_the_signal() -> None:
    profiles: list[FFmpegMemoryProfile] = []
    started = time.monotonic()
    with Killer(count=2) as killer, pytest.raises(FFmpegError) as caught:
        run_with_retry(lambda p: _slow_encode(p, profiles), FFmpegMemoryProfile.BALANCED)
    assert time.monotonic() - started < 30, "the kills were not noticed promptly"
    assert len(killer.killed) == 2
    assert len(profiles) == 2, "retried more (or less) than once"
    assert profiles[1] in (FFmpegMemoryProfile.BALANCED, FFmpegMemoryProfile.LOW)
    error = caught.value
    assert not isinstance(error, FFmpegTimeoutError)
    assert error.returncode == -signal.SIGKILL
    assert "signal 9" in str(error)
    assert "after first failing" in str(error)
    assert _no_children_left() == []


def test_minimal_profile_killed_is_not_retried_forever() -> None:
    """The cheapest profile has nowhere to go: one kill is reported, not looped on."""
    profiles: list[FFmpegMemoryProfile] = []
    with Killer(count=1), pytest.raises(FFmpegError) as caught:
        run_with_retry(lambda p: _slow_encode(p, profiles), FFmpegMemoryProfile.MINIMAL)
    assert profiles == [FFmpegMemoryProfile.MINIMAL]
    assert "signal 9" in str(caught.value)


class KillOnProgress:
    """An editor progress callback that SIGKILLs the running video encode the first ``count``
    times it reports, so every attempt of that one job dies, as under the OOM killer.

    Why not ``Killer``: its thread polls the manager and, on a loaded machine, can sleep
    through a whole short retry and then kill the *next* job (the audio) instead. The editor
    calls this from the job's own thread while the job runs, naming the job.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.killed: list[int] = []

    def __call__(self, fraction: float, message: str) -> None:
        if len(self.killed) >= self.count or not message.startswith("encode-"):
            return
        for job in get_ffmpeg_memory_manager().jobs():
            if job.name == message and job.pid not in self.killed:
                try:
                    os.kill(job.pid, signal.SIGKILL)
                except ProcessLookupError:  # it finished and was reaped since jobs()
                    continue
                self.killed.append(job.pid)


@pytest.fixture(scope="module")
def long_clip(make_clip: Any) -> Path:
    """The CLI signal tests' clip: a 20 s cut of it encodes for seconds, so no stall of the
    job's own thread outlasts an attempt (a 3 s cut of the 320x240 clip lasted ~0.3 s, and
    then ran to its end unkilled)."""
    return Path(make_clip(duration=60.0, size="640x480", gop=250))


def _edit(src: Path, out: Path, progress: KillOnProgress) -> Any:
    return VideoEditor().extract_and_concatenate_efficient(
        str(src), [VideoSegment(0.5, 20.5, str(src))], str(out), mode="accurate", progress=progress
    )


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def test_editor_child_killed_every_time_fails_cleanly(long_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "cut.mp4"
    out.parent.mkdir()
    killer = KillOnProgress(count=2)
    with pytest.raises(FFmpegError) as caught:
        _edit(long_clip, out, killer)
    assert len(killer.killed) == 2
    assert caught.value.returncode == -signal.SIGKILL
    assert _files(out.parent) == [], "partial output or temp beside the target"
    assert _files(montage_temp_root()) == [], "temp files left behind"


def test_editor_retries_a_job_killed_once(long_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "cut.mp4"
    killer = KillOnProgress(count=1)
    report = _edit(long_clip, out, killer)
    assert len(killer.killed) == 1
    assert out.is_file()
    assert abs(report.output_duration_s - 20.0) < 0.1
