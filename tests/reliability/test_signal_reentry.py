"""A signal that lands while the main thread waits on an ffmpeg job must not deadlock.

Python runs signal handlers in the main thread between bytecodes, so the CLI's SIGINT/SIGTERM
handler can run *inside* ``Popen.wait()`` of the very job it wants to stop, while ``Popen``'s
(non-re-entrant) wait lock is held. A handler that then waits for that job blocks forever:
one CI run in five hung this way on ``chunked`` + Ctrl-C. The handler now only signals; the
job's ``memory_safe_ffmpeg`` block reaps it while the exception unwinds.

When the interrupted code swallows the exception (``logging``'s at-fork hook does, and keeps
its lock, so the next spawning thread hangs), the exit guard still ends the process: 130,
children killed, temp files removed.

The checks run in a child Python so a deadlock shows up as a timeout, not a hung suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import psutil
    from montage.cli.interrupt import _on_sigint
    from montage.ffmpeg.process import memory_safe_ffmpeg

    signal.signal(signal.SIGUSR1, _on_sigint)  # the CLI's Ctrl-C handler, on a free signal
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
           "-t", "120", "-c:v", "libx264", "-preset", "ultrafast", "-f", "null", "-"]
    started = time.monotonic()
    pid = None
    try:
        with memory_safe_ffmpeg(cmd, name="reentry") as proc:
            pid = proc.pid
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            proc.wait()  # no timeout: Popen holds its wait lock while blocked in waitpid
        print("NOT INTERRUPTED")
    except KeyboardInterrupt:
        gone = not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        print("INTERRUPTED", round(time.monotonic() - started, 2), "ffmpeg gone:", gone)
    """
)


@pytest.mark.timeout(120)
def test_sigint_handler_inside_wait_of_the_job_it_stops() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[:1] == ["INTERRUPTED"], result.stdout + result.stderr
    assert float(words[1]) < 10.0, result.stdout  # SIGTERM, grace period at most, then reaped
    assert result.stdout.strip().endswith("ffmpeg gone: True"), result.stdout


GUARD_SCRIPT = textwrap.dedent(
    """
    import os, signal, threading, time
    from montage.cli import interrupt
    from montage.ffmpeg.binary import resolve_argv
    from montage.ffmpeg.process import memory_safe_ffmpeg
    from montage.memory import budget, monitor
    from montage.resources import managed_temp_directory

    interrupt.EXIT_GRACE_S = 4.0  # the late job must start (and print) before the guard fires
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # whatever the test runner inherited
    interrupt.install()
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
           "-t", "120", "-c:v", "libx264", "-preset", "ultrafast", "-f", "null", "-"]
    resolve_argv(cmd)  # one-time costs (finding ffmpeg runs it once) before the signal
    budget.get_memory_budget(), monitor.get_memory_monitor()
    with managed_temp_directory() as tmp:
        (tmp / "part.mp4").write_bytes(b"half a file")
        print(tmp, flush=True)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass  # swallowed, as logging's at-fork hook does
        with memory_safe_ffmpeg(cmd, name="after-signal") as proc:  # stopped as it registers
            print(proc.pid, flush=True)
            stuck = threading.Lock()
            stuck.acquire()
            stuck.acquire()  # and then a deadlock
    print("NOT STOPPED", flush=True)
    """
)


@pytest.mark.timeout(120)
def test_exit_guard_ends_a_run_that_swallowed_the_interrupt() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", GUARD_SCRIPT], capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 130, result.stdout + result.stderr
    assert "forced exit" in result.stderr
    assert elapsed < 30, elapsed
    lines = result.stdout.split()
    assert len(lines) == 2, result.stdout  # the temp dir and the late job's pid, nothing after
    temp, pid = Path(lines[0]), int(lines[1])
    assert not temp.exists(), f"{temp} was left behind"
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
