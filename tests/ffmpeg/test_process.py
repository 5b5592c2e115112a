"""memory_safe_ffmpeg with real ffmpeg children: caps, drains, progress, stopping, reaping."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from montage.errors import FFmpegError, FFmpegMemoryExceeded, FFmpegTimeoutError
from montage.ffmpeg.binary import ffmpeg_path
from montage.ffmpeg.process import (
    SAMPLE_INTERVAL_S,
    STDERR_TAIL_BYTES,
    FFmpegProgress,
    data_limit_bytes,
    memory_safe_ffmpeg,
    parse_progress,
    run_ffmpeg,
)
from montage.memory.budget import get_memory_budget
from montage.memory.monitor import get_memory_monitor
from tests.conftest import polled_peak_mb

REPO = Path(__file__).resolve().parents[2]


def long_cmd(seconds: int = 60) -> list[str]:
    """A real-time (``-re``) tiny encode that runs ``seconds`` unless stopped."""
    return [
        "ffmpeg", "-hide_banner", "-re", "-f", "lavfi",
        "-i", f"testsrc2=size=160x120:rate=25:duration={seconds}", "-f", "null", "-",
    ]  # fmt: skip


def reverse_cmd(*, realtime: bool = False) -> list[str]:
    """``reverse`` buffers every decoded 720p frame (1.4 MiB each): memory grows until EOF.

    ``realtime`` reads the source at its rate (``-re``, 50 fps: ~70 MiB/s, a 150 MiB cap is
    crossed after ~2 s) instead of as fast as the CPU allows, so the watchdog's samples see
    the climb even when the machine is loaded and its first sample comes late.
    """
    rate = 50 if realtime else 25
    return [
        "ffmpeg", "-hide_banner", *(["-re"] if realtime else []), "-f", "lavfi",
        "-i", f"testsrc2=size=1280x720:rate={rate}:duration=20", "-vf", "reverse",
        "-f", "null", "-",
    ]  # fmt: skip


def gone(pid: int) -> bool:
    """Dead and reaped (or at least dead: a zombie an init that never reaps still lists)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class StallProbe:
    """How late a thread of this process wakes from a 50 ms timed wait (the watchdog's own
    pattern), at worst, while the block runs: on a 2-core machine under load the OS can leave
    a ready thread unscheduled for half a second, and no watchdog can be faster than that."""

    def __init__(self) -> None:
        self.worst_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-stall-probe", daemon=True)

    def _run(self) -> None:
        while True:
            asleep_at = time.monotonic()
            if self._stop.wait(SAMPLE_INTERVAL_S):
                return
            self.worst_s = max(self.worst_s, time.monotonic() - asleep_at - SAMPLE_INTERVAL_S)

    def __enter__(self) -> StallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_child_over_its_cap_is_killed_within_200ms(tmp_path: Path) -> None:
    # At full speed the buffer can pass 150 MiB before a loaded machine runs the watchdog's
    # first sample (then no sample under the cap exists to measure the latency from).
    cmd = reverse_cmd(realtime=True)
    with StallProbe() as probe, pytest.raises(FFmpegMemoryExceeded) as caught:  # noqa: SIM117
        with memory_safe_ffmpeg(cmd, max_memory_mb=150, name="reverse") as process:
            process.wait(timeout=30)
    error = caught.value
    assert error.limit_mb == 150
    assert error.peak_mb > 150
    assert "reverse" in error.cmd
    assert process.stop_reason == "memory"
    assert process.returncode == -signal.SIGKILL
    assert process.over_cap_at is not None
    assert process.killed_at is not None
    assert process.last_under_cap_at is not None
    # the cap was crossed after the last sample under it, and the sample that saw it over
    # killed: within 200 ms, plus however long the OS or the GIL held this process's threads
    # up (~0 on an idle machine; one stall can hit both the wait and the sampling after it)
    assert process.last_under_cap_at < process.over_cap_at <= process.killed_at
    stall_s = probe.worst_s
    assert process.killed_at - process.last_under_cap_at < 0.2 + 2 * stall_s, stall_s
    assert gone(process.pid)
    assert not psutil.pid_exists(process.pid)


def test_megabytes_of_stderr_do_not_deadlock() -> None:
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "debug", "-debug_ts",
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=60",
        "-vf", "showinfo", "-f", "null", "-",
    ]  # fmt: skip
    process = run_ffmpeg(cmd, timeout=60)
    assert process.returncode == 0
    assert process.progress.frame == 1500
    assert process.stderr_bytes > 2_000_000  # ~30x what a pipe buffer holds
    assert 0 < len(process.stderr_tail.encode()) <= STDERR_TAIL_BYTES
    assert "showinfo" in process.stderr_tail or "Parsed_showinfo" in process.stderr_tail


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_leaving_the_block_by_an_exception_stops_and_reaps(exc_type: type[BaseException]) -> None:
    started = time.monotonic()
    with pytest.raises(exc_type):  # noqa: SIM117
        with memory_safe_ffmpeg(long_cmd()) as process:
            time.sleep(0.3)
            assert process.poll() is None
            raise exc_type("boom")
    assert time.monotonic() - started < 5
    assert gone(process.pid)
    assert process.stop_reason == "aborted"
    assert process._popen.stderr is not None and process._popen.stderr.closed
    assert process._progress_stream is not None and process._progress_stream.closed
    assert process.pid not in [p.pid for p in get_memory_monitor().get_ffmpeg_processes()]
    assert all(holder != "ffmpeg" for holder, _mb in get_memory_budget().holders())


def test_sigkill_of_the_python_parent_leaves_no_ffmpeg(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from montage.ffmpeg.process import memory_safe_ffmpeg
            with memory_safe_ffmpeg({long_cmd()!r}) as process:
                print(process.pid, flush=True)
                time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=REPO, text=True
    )
    try:
        assert parent.stdout is not None
        ffmpeg_pid = int(parent.stdout.readline())
        child = psutil.Process(ffmpeg_pid)
        assert "ffmpeg" in child.name()
        assert child.ppid() == parent.pid
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while not gone(ffmpeg_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(ffmpeg_pid)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_timeout_stops_the_job_and_raises() -> None:
    started = time.monotonic()
    with pytest.raises(FFmpegTimeoutError) as caught:  # noqa: SIM117
        with memory_safe_ffmpeg(long_cmd(), timeout=0.5, grace_s=1.0) as process:
            process.wait()
    elapsed_s = time.monotonic() - started
    assert 0.5 <= elapsed_s < 3.0
    assert process.stop_reason == "timeout"
    assert "timeout" in str(caught.value)
    assert gone(process.pid)


def test_wait_timeout_raises_and_the_block_stops_the_child() -> None:
    with pytest.raises(FFmpegTimeoutError):  # noqa: SIM117
        with memory_safe_ffmpeg(long_cmd(), grace_s=0.5) as process:
            process.wait(timeout=0.2)
    assert gone(process.pid)


def test_nonzero_exit_raises_with_the_stderr_tail(tmp_path: Path) -> None:
    missing = tmp_path / "no such input.mp4"
    with pytest.raises(FFmpegError) as caught:
        run_ffmpeg(["ffmpeg", "-hide_banner", "-i", str(missing), "-f", "null", "-"])
    error = caught.value
    assert error.returncode not in (0, None)
    assert "No such file or directory" in error.stderr_tail
    assert "No such file or directory" in str(error)
    assert str(missing) in error.cmd


def test_check_false_returns_the_exit_code(tmp_path: Path) -> None:
    cmd = ["ffmpeg", "-i", str(tmp_path / "absent.mp4"), "-f", "null", "-"]
    with memory_safe_ffmpeg(cmd, check=False) as process:
        returncode = process.wait()
    assert returncode != 0
    assert process.returncode == returncode


def test_progress_counts_every_frame(clip: Path) -> None:
    seen: list[FFmpegProgress] = []
    # -re: the job lasts the clip's 4 s. At full speed it ends in ~0.2 s, and a loaded machine
    # can leave the watchdog thread unscheduled that long: no sample, a peak of 0 reported
    cmd = ["ffmpeg", "-re", "-i", str(clip), "-c:v", "libx264", "-preset", "ultrafast",
           "-f", "null", "-"]  # fmt: skip
    process = run_ffmpeg(cmd, video_path=clip, on_progress=seen.append)
    assert process.progress.done
    assert process.progress.frame == 100  # 4 s at 25 fps
    assert process.progress.out_time_s == pytest.approx(4.0, abs=0.1)
    assert seen and seen[-1] == process.progress
    frames = [p.frame for p in seen]
    assert frames == sorted(frames)
    assert process.peak_memory_mb > 5


def test_awkward_file_names_work_end_to_end(clip: Path, tmp_path: Path) -> None:
    source = tmp_path / "-in 'single' \"double\" ünïcødé ✂.mp4"
    target = tmp_path / "-out 'single' \"double\" ünïcødé ✂.mp4"
    shutil.copyfile(clip, source)
    cmd: list[str | os.PathLike[str]] = [
        "ffmpeg",
        "-i",
        source,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "copy",
        target,
    ]
    process = run_ffmpeg(cmd, video_path=source)
    assert process.progress.frame == 100
    assert target.stat().st_size > 1000
    check = run_ffmpeg(["ffmpeg", "-i", target, "-f", "null", "-"])
    assert check.progress.frame == 100


def test_caller_can_read_raw_frames_from_stdout(clip: Path) -> None:
    cmd = [
        "ffmpeg", "-i", str(clip), "-vf", "scale=32:24", "-pix_fmt", "gray",
        "-f", "rawvideo", "-",
    ]  # fmt: skip
    with memory_safe_ffmpeg(cmd, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        data = process.stdout.read()
        process.wait()
    assert len(data) == 100 * 32 * 24
    assert process.progress.frame == 100  # progress came on its own pipe


def test_users_own_progress_on_stdout_is_parsed(clip: Path) -> None:
    cmd = ["ffmpeg", "-progress", "pipe:1", "-i", str(clip), "-f", "null", "-"]
    process = run_ffmpeg(cmd)
    assert process.cmd.count("-progress") == 1
    assert process.progress.done and process.progress.frame == 100


def test_child_gets_oom_score_and_data_backstop_and_is_tracked() -> None:
    with memory_safe_ffmpeg(long_cmd(), max_memory_mb=300, name="tracked") as process:
        time.sleep(0.2)
        proc_dir = Path(f"/proc/{process.pid}")
        assert (proc_dir / "oom_score_adj").read_text().strip() == "800"
        limits = (proc_dir / "limits").read_text()
        data_line = next(line for line in limits.splitlines() if line.startswith("Max data size"))
        assert str(data_limit_bytes(300)) in data_line
        assert os.getpgid(process.pid) == process.pid  # its own process group
        tracked = [p.pid for p in get_memory_monitor().get_ffmpeg_processes()]
        assert process.pid in tracked
        assert "tracked" in [name for name, _mb in get_memory_budget().holders()]
        process.terminate()
    assert process.stop_reason == "stopped"  # a requested stop is not an error
    assert gone(process.pid)
    assert "tracked" not in [name for name, _mb in get_memory_budget().holders()]


def test_data_backstop_is_generous() -> None:
    mib = 1048576
    assert data_limit_bytes(100) == 1024 * mib
    assert data_limit_bytes(1000) == 2512 * mib
    assert data_limit_bytes(150) > 4 * 150 * mib


def test_missing_binary_is_a_clear_error() -> None:
    from montage.errors import FFmpegNotFoundError

    with pytest.raises(FFmpegNotFoundError):
        run_ffmpeg(["/nonexistent/ffmpeg", "-version"])
    assert Path(ffmpeg_path()).exists()


@given(
    frame=st.integers(0, 10**7),
    fps=st.floats(0, 1e4, allow_nan=False),
    out_us=st.integers(0, 10**12),
    speed=st.one_of(st.none(), st.floats(0.001, 1e3, allow_nan=False)),
    size=st.integers(0, 10**12),
    end=st.booleans(),
)
def test_progress_blocks_parse(
    frame: int, fps: float, out_us: int, speed: float | None, size: int, end: bool
) -> None:
    fields = {
        "frame": str(frame),
        "fps": f"{fps:.2f}",
        "out_time_us": str(out_us),
        "out_time_ms": str(out_us),
        "speed": "N/A" if speed is None else f"{speed}x",
        "total_size": str(size),
        "progress": "end" if end else "continue",
    }
    progress = parse_progress(fields)
    assert progress.frame == frame
    assert progress.fps == pytest.approx(float(f"{fps:.2f}"))
    assert progress.out_time_s == pytest.approx(out_us / 1e6)
    assert progress.speed == (None if speed is None else pytest.approx(speed))
    assert progress.total_size == size
    assert progress.done is end


def test_progress_before_first_packet_is_zero() -> None:
    progress = parse_progress(
        {"frame": "0", "out_time_us": "N/A", "speed": "N/A", "progress": "continue"}
    )
    assert progress == FFmpegProgress()


def test_a_job_shorter_than_the_sample_interval_reports_its_peak() -> None:
    """A 3-frame 720p encode lives ~30 ms, under one 50 ms watchdog period: the first samples
    come sooner (``FIRST_SAMPLES_S``), so its peak is seen (before: ~5 of ~55 MiB)."""
    args = ["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
            "testsrc2=s=1280x720:r=25", "-frames:v", "3", "-c:v", "libx264",
            "-preset", "ultrafast", "-f", "null", "-"]  # fmt: skip
    reported, reference = [], []
    for _ in range(8):  # the best of several: a loaded machine can delay any one thread
        reported.append(run_ffmpeg(["ffmpeg", *args]).peak_memory_mb)
        reference.append(polled_peak_mb([ffmpeg_path(), *args], interval_s=0.001))
    assert max(reference) > 20, reference
    assert max(reported) >= 0.6 * max(reference), (reported, reference)


class _Interrupted(KeyboardInterrupt):
    """A Ctrl-C injected at one exact point of the job's start."""


def test_an_interrupt_while_the_job_is_being_registered_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from montage.ffmpeg.manager import get_ffmpeg_memory_manager

    manager = get_ffmpeg_memory_manager()
    started: list[int] = []
    real_register = manager.register

    def interrupted(process: object) -> None:
        started.append(process.pid)  # type: ignore[attr-defined]
        raise _Interrupted

    monkeypatch.setattr(manager, "register", interrupted)
    with pytest.raises(_Interrupted), memory_safe_ffmpeg(long_cmd(), grace_s=1.0):
        pytest.fail("the block must not run")
    monkeypatch.setattr(manager, "register", real_register)
    assert started and not psutil.pid_exists(started[0])
    assert not [p for p in manager.jobs() if p.pid == started[0]]


def test_an_interrupt_before_the_watch_threads_run_kills_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import montage.ffmpeg.process as process_module

    spawned: list[subprocess.Popen[bytes]] = []

    class Interrupted(process_module.FFmpegProcess):
        def __init__(self, popen: subprocess.Popen[bytes], *args: object, **kw: object) -> None:
            spawned.append(popen)
            raise _Interrupted

    monkeypatch.setattr(process_module, "FFmpegProcess", Interrupted)
    with pytest.raises(_Interrupted), memory_safe_ffmpeg(long_cmd()):
        pytest.fail("the block must not run")
    assert spawned and spawned[0].returncode == -signal.SIGKILL
    assert not psutil.pid_exists(spawned[0].pid)
