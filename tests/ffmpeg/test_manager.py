"""FFmpegMemoryManager with real ffmpeg jobs: totals, pressure responses, cheaper retries."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest

from montage.errors import FFmpegError, FFmpegMemoryExceeded
from montage.ffmpeg.binary import ffmpeg_path
from montage.ffmpeg.manager import FFmpegMemoryManager, get_ffmpeg_memory_manager, guess_job
from montage.ffmpeg.process import FFmpegJobPreempted, FFmpegProcess, memory_safe_ffmpeg
from montage.ffmpeg.profiles import FFmpegMemoryProfile
from montage.memory.monitor import MemoryMonitor
from montage.memory.pressure import MemoryPressureLevel as Level

from .test_process import gone, long_cmd, reverse_cmd

SHORT_CMD = [
    "ffmpeg", "-hide_banner", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1",
    "-f", "null", "-",
]  # fmt: skip


@pytest.fixture
def manager() -> Iterator[FFmpegMemoryManager]:
    manager = get_ffmpeg_memory_manager()
    manager.disable_pressure_responses()
    yield manager
    manager.disable_pressure_responses()


def wait_for_jobs(manager: FFmpegMemoryManager, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while manager.get_active_process_count() < count:
        assert time.monotonic() < deadline, "jobs did not start"
        time.sleep(0.02)


def test_counts_and_totals_cover_our_live_jobs(manager: FFmpegMemoryManager) -> None:
    assert manager is get_ffmpeg_memory_manager()
    assert manager.get_active_process_count() == 0
    with ExitStack() as stack:
        first = stack.enter_context(memory_safe_ffmpeg(long_cmd(), name="one"))
        second = stack.enter_context(memory_safe_ffmpeg(long_cmd(), name="two"))
        # each watchdog's first samples of a running ffmpeg (late under load; the very first,
        # 5 ms after spawn, can see a process still loading: 2.4 MiB in one run)
        deadline = time.monotonic() + 30
        while not (first.memory_mb > 5 and second.memory_mb > 5) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert manager.get_active_process_count() == 2
        assert [job.pid for job in manager.jobs()] == [first.pid, second.pid]
        # the watchdogs update memory_mb every 50 ms: compare against a sum that did not
        # change while the total was read
        for _ in range(100):
            before = first.memory_mb + second.memory_mb
            total_mb = manager.get_total_memory_usage()
            if first.memory_mb + second.memory_mb == before:
                break
        assert total_mb == pytest.approx(before)
        assert 5 < total_mb < 500
        first.terminate()
        assert manager.get_active_process_count() == 1
        second.terminate()
    assert manager.get_active_process_count() == 0
    assert manager.get_total_memory_usage() == 0


def test_critical_kills_only_the_newest_retriable_job(manager: FFmpegMemoryManager) -> None:
    foreign = subprocess.Popen(
        [ffmpeg_path(), *long_cmd()[1:]], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with ExitStack() as stack:
            older = stack.enter_context(
                memory_safe_ffmpeg(long_cmd(), retriable=True, name="older")
            )
            newest_retriable = stack.enter_context(
                memory_safe_ffmpeg(long_cmd(), retriable=True, name="newer")
            )
            essential = stack.enter_context(memory_safe_ffmpeg(long_cmd(), name="essential"))
            time.sleep(0.2)
            assert manager.respond_to_pressure(Level.HIGH, Level.HIGH) is None  # HIGH kills none
            victim = manager.respond_to_pressure(Level.HIGH, Level.CRITICAL)
            assert victim is newest_retriable
            with pytest.raises(FFmpegJobPreempted) as caught:
                newest_retriable.wait(5)
            assert isinstance(caught.value, FFmpegMemoryExceeded)
            assert gone(newest_retriable.pid)
            assert older.poll() is None and essential.poll() is None
            assert foreign.poll() is None
            # staying CRITICAL does not kill again; re-entering it does
            assert manager.respond_to_pressure(Level.CRITICAL, Level.CRITICAL) is None
            assert older.poll() is None
            older.terminate()
            essential.terminate()
        assert psutil.Process(foreign.pid).status() != psutil.STATUS_ZOMBIE
    finally:
        foreign.kill()
        foreign.wait()


def test_run_with_retry_reruns_a_preempted_job_cheaper(manager: FFmpegMemoryManager) -> None:
    profiles: list[FFmpegMemoryProfile] = []

    def build(profile: FFmpegMemoryProfile) -> list[str]:
        profiles.append(profile)
        return long_cmd() if profile is FFmpegMemoryProfile.BALANCED else SHORT_CMD

    def pressure_arrives() -> None:
        wait_for_jobs(manager, 1)
        time.sleep(0.2)
        manager.respond_to_pressure(Level.HIGH, Level.CRITICAL)
        manager.respond_to_pressure(Level.CRITICAL, Level.LOW)

    helper = threading.Thread(target=pressure_arrives)
    helper.start()
    process = manager.run_with_retry(build, FFmpegMemoryProfile.BALANCED, name="retry-me")
    helper.join()
    assert profiles == [FFmpegMemoryProfile.BALANCED, FFmpegMemoryProfile.LOW]
    assert process.returncode == 0
    assert process.progress.frame == 25
    assert manager.preempted[-1][0] == "retry-me"


def test_run_with_retry_reruns_a_job_over_its_cap(manager: FFmpegMemoryManager) -> None:
    profiles: list[FFmpegMemoryProfile] = []

    def build(profile: FFmpegMemoryProfile) -> list[str]:
        profiles.append(profile)
        return reverse_cmd() if profile is FFmpegMemoryProfile.LOW else SHORT_CMD

    process = manager.run_with_retry(build, "low", max_memory_mb=150)
    assert profiles == [FFmpegMemoryProfile.LOW, FFmpegMemoryProfile.MINIMAL]
    assert process.returncode == 0


def test_run_with_retry_gives_up_after_one_cheaper_attempt(manager: FFmpegMemoryManager) -> None:
    profiles: list[FFmpegMemoryProfile] = []

    def build(profile: FFmpegMemoryProfile) -> list[str]:
        profiles.append(profile)
        return reverse_cmd()

    with pytest.raises(FFmpegMemoryExceeded) as caught:
        manager.run_with_retry(build, FFmpegMemoryProfile.HIGH, max_memory_mb=150)
    assert profiles == [FFmpegMemoryProfile.HIGH, FFmpegMemoryProfile.BALANCED]
    message = str(caught.value)
    assert "profile balanced" in message and "after first failing" in message
    assert caught.value.limit_mb == 150


def test_run_with_retry_does_not_retry_ordinary_failures(manager: FFmpegMemoryManager) -> None:
    calls: list[FFmpegMemoryProfile] = []

    def build(profile: FFmpegMemoryProfile) -> list[str]:
        calls.append(profile)
        return ["ffmpeg", "-i", "/nonexistent/input.mp4", "-f", "null", "-"]

    with pytest.raises(FFmpegError) as caught:
        manager.run_with_retry(build)
    assert not isinstance(caught.value, FFmpegMemoryExceeded)
    assert len(calls) == 1


def test_high_pressure_recommends_cheaper_profiles(manager: FFmpegMemoryManager) -> None:
    assert manager.recommended_profile("high") is FFmpegMemoryProfile.HIGH
    manager.respond_to_pressure(Level.LOW, Level.HIGH)
    assert manager.recommended_profile("high") is FFmpegMemoryProfile.LOW
    assert manager.recommended_profile("balanced") is FFmpegMemoryProfile.LOW
    assert manager.recommended_profile("minimal") is FFmpegMemoryProfile.MINIMAL
    manager.respond_to_pressure(Level.HIGH, Level.CRITICAL)
    assert manager.recommended_profile("high") is FFmpegMemoryProfile.MINIMAL
    manager.respond_to_pressure(Level.CRITICAL, Level.MODERATE)
    assert manager.recommended_profile("high") is FFmpegMemoryProfile.HIGH


def test_a_real_monitor_at_critical_preempts_through_the_callback(
    manager: FFmpegMemoryManager,
) -> None:
    """A monitor whose configured ceiling (16 MiB) is below real use reads CRITICAL."""
    monitor = MemoryMonitor(memory_limit="16M")
    manager.enable_pressure_responses(monitor)
    with pytest.raises(FFmpegJobPreempted):  # noqa: SIM117
        with memory_safe_ffmpeg(long_cmd(), retriable=True, name="victim") as process:
            time.sleep(0.2)
            stats = monitor.get_current_stats()
            assert stats.pressure_level is Level.CRITICAL
            process.wait(5)
    assert manager.pressure_level is Level.CRITICAL
    assert gone(process.pid)
    manager.disable_pressure_responses()
    assert manager.pressure_level.value == "low"


@pytest.mark.parametrize(
    ("argv", "operation", "codec"),
    [
        (["ffmpeg", "-i", "a.mp4", "-c:v", "libx265", "b.mp4"], "encode", "libx265"),
        (["ffmpeg", "-i", "a.mp4", "-c", "copy", "b.mp4"], "copy", "libx264"),
        (["ffmpeg", "-i", "a.mp4", "-f", "null", "-"], "decode", "libx264"),
        (
            ["ffmpeg", "-i", "a.mp4", "-vcodec", "rawvideo", "-f", "rawvideo", "-"],
            "decode",
            "libx264",
        ),
        (["ffmpeg", "-i", "a.mp4", "out.mp4"], "encode", "libx264"),
    ],
)
def test_guess_job_reads_the_argv(argv: list[str], operation: str, codec: str) -> None:
    job = guess_job(argv)
    assert job["operation"] == operation
    assert job["codec"] == codec


def test_prediction_scales_with_the_job(manager: FFmpegMemoryManager) -> None:
    copy_mb = manager.predict_need_mb(["ffmpeg", "-i", "a.mp4", "-c", "copy", "b.mp4"])
    medium_mb = manager.predict_need_mb(
        ["ffmpeg", "-i", "a.mp4", "-c:v", "libx264", "-preset", "medium", "b.mp4"]
    )
    fast_mb = manager.predict_need_mb(
        ["ffmpeg", "-i", "a.mp4", "-c:v", "libx264", "-preset", "ultrafast", "b.mp4"]
    )
    assert copy_mb < fast_mb < medium_mb


def test_jobs_are_ffmpeg_processes(manager: FFmpegMemoryManager) -> None:
    with memory_safe_ffmpeg(long_cmd()) as process:
        assert all(isinstance(job, FFmpegProcess) for job in manager.jobs())
        process.terminate()
    assert process not in manager.jobs()


def test_seed_import_path_runs_the_specs_snippets(clip: Path, tmp_path: Path) -> None:
    import src.utils.ffmpeg_memory_manager as seed
    from montage.ffmpeg import chunks

    assert seed.memory_safe_ffmpeg is memory_safe_ffmpeg
    assert seed.get_ffmpeg_memory_manager() is get_ffmpeg_memory_manager()
    assert seed.process_video_chunks is chunks.process_video_chunks
    with pytest.raises(AttributeError):
        _ = seed.no_such_name

    cmd = ["ffmpeg", "-i", str(clip), "-c:v", "libx264", str(tmp_path / "output.mp4")]
    with seed.memory_safe_ffmpeg(cmd, max_memory_mb=512) as process:
        result = process.wait()
    assert result == 0
    assert 0 < process.peak_memory_mb < 512

    base_cmd = ["ffmpeg", "-i", str(clip), "-c:v", "libx264", str(tmp_path / "custom.mp4")]
    optimized_cmd = seed.build_memory_safe_ffmpeg_command(base_cmd, str(clip))
    with seed.memory_safe_ffmpeg(optimized_cmd) as process:
        assert process.wait() == 0
    assert process.progress.frame == 100


def test_a_string_command_is_refused() -> None:
    with pytest.raises(TypeError), memory_safe_ffmpeg("ffmpeg -version"):
        pass
