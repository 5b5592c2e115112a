"""The real ``montage-video`` command in child processes, on generated clips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from montage.ffmpeg.probe import probe

CLI = [sys.executable, "-m", "montage"]


def cli(
    *args: str, cwd: Path | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_status_json_has_the_documented_keys() -> None:
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"memory", "resources", "ffmpeg", "config"} <= set(data)
    memory = data["memory"]
    for key in (
        "total_mb",
        "available_mb",
        "used_mb",
        "percent_used",
        "pressure_level",
        "limit_source",
        "tree_memory_mb",
    ):
        assert key in memory
    assert memory["pressure_level"] in {"low", "moderate", "high", "critical"}


def test_status_with_a_memory_limit_reports_the_configured_source() -> None:
    result = cli("--memory-limit", "300M", "status", "--json")
    assert result.returncode == 0, result.stderr
    memory = json.loads(result.stdout)["memory"]
    assert memory["total_mb"] == pytest.approx(300, abs=1)
    assert memory["limit_source"].startswith("configured")


def test_status_table_is_readable() -> None:
    result = cli("status")
    assert result.returncode == 0
    assert "ceiling" in result.stdout and "pressure" in result.stdout


# status as an install without a C compiler has it: the extension cannot be imported
NO_EXTENSION = """
import sys
sys.modules["montage.memory._native_sampler"] = None  # import raises ImportError
from montage.__main__ import main
sys.argv = ["montage-video", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize(
    ("how", "expect"),
    [
        ("built", "native (C thread)"),
        ("switched off", "python (MONTAGE_NATIVE_SAMPLER=0)"),
        ("not built", "python (the native sampler is not built"),
    ],
)
def test_status_says_which_sampler_runs_and_why(how: str, expect: str) -> None:
    """A quiet fallback to the Python sampler (pip -q hides the build hook's warning) is
    visible in ``status``, with what to do about it."""
    from montage.memory import native

    if native.extension() is None:
        pytest.skip("the native sampler is not built here")
    env = {**os.environ, "COLUMNS": "200"}
    argv = [*CLI, "status"]
    if how == "switched off":
        env[native.ENV] = "0"
    elif how == "not built":
        argv = [sys.executable, "-c", NO_EXTENSION, "status"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("sampler")]
    assert expect in line
    if how == "not built":
        assert "reinstall with a C compiler" in line
        result = subprocess.run([*argv, "--json"], capture_output=True, text=True, env=env)
        config = json.loads(result.stdout)["config"]
        assert config["sampler"] == "python" and "not built" in config["sampler_reason"]


def test_probe_json(clip: Path) -> None:
    result = cli("probe", str(clip), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["media"]["duration_s"] == pytest.approx(4.0, abs=0.1)
    assert data["config"]["max_workers"] >= 1
    assert "quality_preset" in data["config"]


def test_analyze_json_and_out_file(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = cli("analyze", str(clip), "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    printed, written = json.loads(result.stdout), json.loads(out.read_text())
    assert printed["sha256"] == written["sha256"]
    assert {"scene_changes", "silent_ranges", "audio_rms_db", "motion", "highlights"} <= set(
        printed
    )


def test_extract_writes_a_valid_file_and_refuses_to_overwrite(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "cut.mp4"
    result = cli("extract", str(clip), "-s", "0-1", "-s", "0:02-0:03.5", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert probe(out).duration_s == pytest.approx(2.5, abs=0.3)
    before = out.stat().st_mtime_ns
    again = cli("extract", str(clip), "-s", "0-1", "-o", str(out))
    assert again.returncode == 2
    assert "--overwrite" in one_line_error(again)
    assert out.stat().st_mtime_ns == before
    forced = cli("extract", str(clip), "-s", "0-1", "-o", str(out), "-y", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)


@pytest.mark.parametrize(
    ("segment", "expected"),
    [("40-10", "after the start"), ("abc", "START-END"), ("1-x", "invalid time")],
)
def test_extract_bad_segment_exits_2_naming_the_argument(
    clip: Path, tmp_path: Path, segment: str, expected: str
) -> None:
    out = tmp_path / "cut.mp4"
    result = cli("extract", str(clip), "-s", segment, "-o", str(out))
    assert result.returncode == 2
    line = one_line_error(result)
    assert expected in line and "-s/--segment" in line
    assert not out.exists()


def test_extract_preset_and_crf_reach_the_report(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "veryfast.mp4"
    args = ["extract", str(clip), "-s", "0.5-2.5", "-o", str(out), "--mode", "accurate"]
    result = cli(*args, "--preset", "VeryFast", "--crf", "23", "--json")
    assert result.returncode == 0, result.stderr
    encoder = json.loads(result.stdout)["encoder"]
    assert (encoder["preset"], encoder["crf"]) == ("veryfast", 23)
    assert b"subme=2" in out.read_bytes() and b"crf=23.0" in out.read_bytes()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [("--preset", "fastest", "is not one of"), ("--crf", "52", "0<=x<=51"), ("--crf", "x", "")],
)
def test_extract_bad_encoder_option_exits_2_naming_it(
    clip: Path, tmp_path: Path, option: str, value: str, expected: str
) -> None:
    out = tmp_path / "cut.mp4"
    result = cli("extract", str(clip), "-s", "0-1", "-o", str(out), option, value)
    assert result.returncode == 2
    line = one_line_error(result)
    assert option in line and expected in line
    assert not out.exists()


def test_missing_and_fake_media_exit_2_with_one_line(tmp_path: Path) -> None:
    missing = cli("probe", str(tmp_path / "nope.mp4"))
    assert missing.returncode == 2
    assert "nope.mp4" in one_line_error(missing)
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are my notes, not a video\n" * 50)
    for args in (
        ["probe", str(fake)],
        ["extract", str(fake), "-s", "0-1", "-o", str(tmp_path / "o.mp4")],
    ):
        result = cli(*args)
        assert result.returncode == 2, result.stderr
        assert "notes.mp4" in one_line_error(result)
    assert not (tmp_path / "o.mp4").exists()


def test_debug_shows_a_traceback(tmp_path: Path) -> None:
    result = cli("--debug", "probe", str(tmp_path / "nope.mp4"))
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_bad_memory_limit_is_a_usage_error() -> None:
    result = cli("--memory-limit", "lots", "status")
    assert result.returncode == 2
    assert "memory-limit" in result.stderr


def test_highlights_main_job_with_html_report(make_clip: Any, tmp_path: Path) -> None:
    source = make_clip(duration=12.0, size="320x240")
    out, report = tmp_path / "reel.mp4", tmp_path / "mem.html"
    result = cli(
        "--memory-limit",
        "512M",
        "highlights",
        str(source),
        "-o",
        str(out),
        "--count",
        "2",
        "--length",
        "2",
        "--memory-report",
        str(report),
        "--json",
        "--mode",
        "accurate",
        "--preset",
        "ultrafast",
        "--crf",
        "30",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["segments"]) == 2
    encoder = data["edit"]["encoder"]
    assert (encoder["preset"], encoder["crf"]) == ("ultrafast", 30)
    assert probe(out).duration_s == pytest.approx(4.0, abs=0.3)
    text = report.read_text()
    assert "<svg" in text and "budget" in text


def test_run_makes_any_ffmpeg_command_memory_safe(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.mp4"
    result = cli(
        "run",
        "--max-memory",
        "400M",
        "--",
        "ffmpeg",
        "-i",
        str(clip),
        "-vf",
        "scale=160:-2",
        "-c:v",
        "libx264",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    info = probe(out)
    assert info.video is not None and info.video.width == 160


def test_chunked_transcode(make_clip: Any, tmp_path: Path) -> None:
    source = make_clip(duration=12.0, size="320x240", gop=25)
    out = tmp_path / "chunked.mp4"
    result = cli(
        "chunked",
        str(source),
        str(out),
        "--chunk-duration",
        "4",
        "--",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
    )
    assert result.returncode == 0, result.stderr
    assert probe(out).duration_s == pytest.approx(12.0, abs=0.2)


def test_demo_runs_on_a_small_sample(tmp_path: Path) -> None:
    result = cli("demo", "--out-dir", str(tmp_path), "--duration", "20", "--size", "320x240")
    assert result.returncode == 0, result.stderr
    reel = tmp_path / "highlights.mp4"
    assert probe(reel).duration_s == pytest.approx(15.0, abs=0.5)
    assert "reel:" in result.stderr and "peak" in result.stderr
    assert any(tmp_path.glob("memory-report.*"))


def _ffmpeg_children(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if "ffmpeg" in p.name()]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_extract_cleans_up(
    make_clip: Any, tmp_path: Path, signum: int, code: int
) -> None:
    source = make_clip(duration=60.0, size="640x480", gop=250)
    out = tmp_path / "cut.mp4"
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    child = subprocess.Popen(
        [*CLI, "extract", str(source), "-s", "0.5-55", "-o", str(out), "--mode", "accurate"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # Ctrl-C's default disposition, whatever pytest inherited (a background job's SIGINT
        # is ignored, and the CLI keeps it ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    ffmpegs: list[psutil.Process] = []
    deadline = time.monotonic() + 60
    while not ffmpegs and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.1)
        ffmpegs = _ffmpeg_children(child.pid)
    assert ffmpegs, "extract never started ffmpeg"
    time.sleep(0.5)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == code, stderr
    _gone, alive = psutil.wait_procs(ffmpegs, timeout=5)
    assert not alive, f"ffmpeg left running: {alive}"
    assert not out.exists()
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"] or not list(tmp_path.glob("*.mp4*"))


def test_segment_past_the_end_is_clamped_or_refused_with_strict(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "cut.mp4"
    strict = cli("extract", str(clip), "-s", "3-9", "-o", str(out), "--strict")
    assert strict.returncode == 2
    assert "9" in one_line_error(strict)
    assert not out.exists()
    clamped = cli("extract", str(clip), "-s", "3-9", "-o", str(out), "--mode", "accurate")
    assert clamped.returncode == 0, clamped.stderr
    assert probe(out).duration_s == pytest.approx(1.0, abs=0.1)
