"""SIGTERM / SIGINT the real CLI mid-job: exit 143 / 130, no ffmpeg left, no temp, no output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

CLI = [sys.executable, "-m", "montage"]
pytestmark = pytest.mark.timeout(120)


def _ffmpeg_descendants(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for kid in kids:
        try:
            if "ffmpeg" in kid.name():
                found.append(kid)
        except psutil.NoSuchProcess:
            pass
    return found


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


def _default_sigint() -> None:
    """Start the CLI with Ctrl-C's default disposition: a pytest started in the background by
    a non-interactive shell has SIGINT ignored, and the CLI (like Python) keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt(argv: list[str], tmp_path: Path, signum: int, delay_s: float) -> dict[str, Any]:
    """Run the CLI, signal it ``delay_s`` after its first ffmpeg child appears, and collect
    every ffmpeg it ever started (they run in their own sessions: they must be stopped by us)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "COLUMNS": "120"}
    child = subprocess.Popen(
        [*CLI, "-q", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
            seen.update((p.pid, p) for p in _ffmpeg_descendants(child.pid))
        assert seen, f"the CLI never started ffmpeg: {child.communicate(timeout=30)}"
        stop_at = time.monotonic() + delay_s
        while time.monotonic() < stop_at:
            seen.update((p.pid, p) for p in _ffmpeg_descendants(child.pid))
            time.sleep(0.02)
        assert child.poll() is None, "the job ended before it could be interrupted"
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    _, alive = psutil.wait_procs(list(seen.values()), timeout=5)
    return {"code": child.returncode, "stderr": stderr, "alive": alive, "seen": seen}


CASES = [
    ("extract", signal.SIGTERM, 143, 0.0),
    ("extract", signal.SIGINT, 130, 1.0),
    ("chunked", signal.SIGTERM, 143, 1.0),
    ("chunked", signal.SIGINT, 130, 0.0),
]


@pytest.mark.parametrize(("command", "signum", "code", "delay_s"), CASES)
def test_signal_mid_job_cleans_up(
    make_clip: Any, tmp_path: Path, command: str, signum: int, code: int, delay_s: float
) -> None:
    source = make_clip(duration=60.0, size="640x480", gop=250)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "result.mp4"
    if command == "extract":
        argv = ["extract", str(source), "-s", "0.5-55", "-o", str(out), "--mode", "accurate"]
    else:
        argv = ["chunked", str(source), str(out), "--chunk-duration", "10", "--",
                "-c:v", "libx264", "-preset", "medium"]  # fmt: skip
    result = _interrupt(argv, tmp_path, signum, delay_s)
    assert result["code"] == code, result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert result["alive"] == [], f"ffmpeg left running: {result['alive']}"
    assert not out.exists(), "partial output at the target path"
    assert _files(out_dir) == [], "temp or partial files beside the target"
    assert _files(tmp_path / "tmp") == [], "temp files left in TMPDIR"


def test_background_job_keeps_an_inherited_ignored_sigint(make_clip: Any, tmp_path: Path) -> None:
    """Started as a shell's background job (SIGINT ignored), Ctrl-C at the terminal must not
    stop the CLI; SIGTERM still does, cleanly."""
    source = make_clip(duration=60.0, size="640x480", gop=250)
    out = tmp_path / "result.mp4"
    temp = tmp_path / "tmp"
    temp.mkdir()
    child = subprocess.Popen(
        [*CLI, "-q", "extract", str(source), "-s", "0.5-55", "-o", str(out), "--mode", "accurate"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
        preexec_fn=_ignore_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        seen: list[psutil.Process] = []
        while not seen and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
            seen = _ffmpeg_descendants(child.pid)
        assert seen, "the CLI never started ffmpeg"
        child.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=1.5)  # still working
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 143, stderr
    _, alive = psutil.wait_procs(seen, timeout=5)
    assert not alive
    assert not out.exists()
    assert _files(temp) == []
