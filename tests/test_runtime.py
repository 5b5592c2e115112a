"""The spec's memory_init: setup is idempotent and thread-safe, status/cleanup/metrics are real."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from montage import resources, runtime
from montage.errors import ConfigError
from montage.memory.monitor import get_memory_monitor
from montage.metrics import start_metrics_server

REPO = Path(__file__).resolve().parents[1]
GAUGES = (
    "montage_memory_used_bytes",
    "montage_memory_limit_bytes",
    "montage_memory_pressure_level",
    "montage_tree_rss_bytes",
    "montage_ffmpeg_active_processes",
    "montage_ffmpeg_memory_bytes",
)


@pytest.fixture(autouse=True)
def _shutdown() -> Iterator[None]:
    yield
    runtime.shutdown_memory_management()
    resources.cleanup_all()


def _start_ffmpeg(ffmpeg_exe: str) -> subprocess.Popen[bytes]:
    """A real ffmpeg that runs for a while; returned once it is past exec (RSS > 5 MiB)."""
    proc = subprocess.Popen(
        [ffmpeg_exe, "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i",
         "testsrc2=size=320x240:rate=25:duration=20", "-f", "null", "-"],
    )  # fmt: skip
    deadline = time.monotonic() + 10
    try:
        while psutil.Process(proc.pid).memory_info().rss < 5 * 1048576:
            assert time.monotonic() < deadline, "ffmpeg did not start"
            time.sleep(0.02)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _sampler_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "montage-memory")


def test_setup_is_idempotent() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert runtime.setup_memory_management(interval_s=0.2)
    assert runtime.setup_memory_management(interval_s=0.2)
    monitor = get_memory_monitor()
    assert monitor.running and _sampler_threads() == 1
    assert resources.signal_handlers_installed()
    config = runtime.get_memory_status()["config"]
    assert config["initialized"] and config["monitor_running"] and config["signal_handlers"]
    runtime.shutdown_memory_management()
    assert _sampler_threads() == 0
    assert signal.getsignal(signal.SIGTERM) is before  # the original, not our own handler


def test_setup_from_many_threads_starts_one_sampler() -> None:
    results: list[bool] = []
    workers = [
        threading.Thread(target=lambda: results.append(runtime.setup_memory_management()))
        for _ in range(6)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results == [True] * 6
    assert _sampler_threads() == 1
    assert not resources.signal_handlers_installed()  # handlers only from the main thread


def test_setup_can_leave_the_sampler_off() -> None:
    assert runtime.setup_memory_management(start_monitor=False, install_signal_handlers=False)
    assert not get_memory_monitor().running
    assert runtime.is_memory_management_available()


def test_status_has_the_four_sections_and_sees_a_live_ffmpeg(ffmpeg_exe: str) -> None:
    proc = _start_ffmpeg(ffmpeg_exe)
    try:
        get_memory_monitor().track_process(proc.pid, "ffmpeg_encode", is_ffmpeg=True)
        status = runtime.get_memory_status()
        assert set(status) == {"memory", "resources", "ffmpeg", "config"}
        assert status["memory"]["pressure_level"] in {"low", "moderate", "high", "critical"}
        assert status["memory"]["total_mb"] > 0
        assert status["ffmpeg"]["active_processes"] >= 1
        mine = [p for p in status["ffmpeg"]["processes"] if p["pid"] == proc.pid]
        assert mine and mine[0]["name"] == "ffmpeg_encode" and mine[0]["memory_mb"] > 1
        assert status["ffmpeg"]["total_memory_mb"] >= mine[0]["memory_mb"]
        assert status["config"]["processing"]["max_workers"] >= 1
        json.dumps(status)  # JSON-ready throughout
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    gone = runtime.get_memory_status()["ffmpeg"]["processes"]
    assert all(p["pid"] != proc.pid for p in gone)


def test_force_cleanup_frees_garbage_but_keeps_running_temp_files(tmp_path: Path) -> None:
    stale = tmp_path / "already_gone"
    stale.write_text("x")
    resources.register_cleanup(stale)
    stale.unlink()

    class Node:
        def __init__(self) -> None:
            self.me = self

    gc.disable()
    try:
        for _ in range(2000):
            Node()
        with resources.managed_tempfile() as live:
            live.write_text("in use")
            summary = runtime.force_memory_cleanup()
            assert live.exists()
    finally:
        gc.enable()
    assert summary["gc_collected"] >= 2000
    assert summary["registry_entries_forgotten"] == 1
    assert summary["pressure_level"] in {"low", "moderate", "high", "critical"}
    assert summary["process_memory_after_mb"] > 0


CHILD_ERROR = textwrap.dedent(
    """
    import json
    from src.utils.memory_init import (get_memory_status, is_memory_management_available,
                                       setup_memory_management)
    from montage.errors import ConfigError
    try:
        setup_memory_management()
        raised = ""
    except ConfigError as exc:
        raised = str(exc)
    print(json.dumps({"status": get_memory_status(), "raised": raised,
                      "available": is_memory_management_available()}))
    """
)


def test_broken_configuration_gives_error_key_not_exception() -> None:
    env = {**os.environ, "MONTAGE_MEMORY_LIMIT": "lots-please"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD_ERROR], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["status"]) == {"error"}
    assert "lots-please" in result["status"]["error"]
    assert "lots-please" in result["raised"]
    assert result["available"] is False


def test_bad_memory_limit_argument_raises_config_error() -> None:
    monitor = get_memory_monitor()
    before = monitor.limit
    with pytest.raises(ConfigError, match="seventeen"):
        runtime.setup_memory_management("seventeen")
    assert monitor.limit == before  # a bad value is refused before it is applied
    assert monitor.get_current_stats().total_mb > 0


CHILD_SIGNAL = textwrap.dedent(
    """
    import signal, time
    # Ctrl-C as in a terminal, whatever SIGINT disposition this child inherited (ignored when
    # pytest was started in the background by a non-interactive shell)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from src.utils.memory_init import setup_memory_management
    from src.utils.resource_manager import managed_tempfile
    assert setup_memory_management()
    assert setup_memory_management()  # twice: the handler must not chain to itself
    with managed_tempfile(suffix=".mp4") as path:
        path.write_bytes(b"x" * 1000)
        print(path, flush=True)
        time.sleep(60)
    """
)


def _signal_child(signum: int) -> tuple[int, str, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_SIGNAL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        path = Path(proc.stdout.readline().strip())
        assert path.exists()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err, path


def test_sigterm_after_setup_removes_temp_file_and_exits_143() -> None:
    code, err, path = _signal_child(signal.SIGTERM)
    assert code == -signal.SIGTERM, err
    assert not path.exists() and not path.parent.exists()


def test_sigint_after_setup_is_still_keyboard_interrupt() -> None:
    code, err, path = _signal_child(signal.SIGINT)
    assert code in (-signal.SIGINT, 130)
    assert err.rstrip().endswith("KeyboardInterrupt")
    assert not path.exists()


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_via_setup_serve_all_gauges() -> None:
    assert runtime.setup_memory_management(metrics_port=0, install_signal_handlers=False)
    url = runtime.get_memory_status()["config"]["metrics_url"]
    assert url and url.startswith("http://127.0.0.1:")
    values = _scrape(url)
    assert set(GAUGES) <= set(values)
    assert values["montage_memory_limit_bytes"] == pytest.approx(
        get_memory_monitor().limit.limit_bytes, rel=1e-6
    )
    assert 0 <= values["montage_memory_pressure_level"] <= 3
    assert values["montage_tree_rss_bytes"] > 10 * 1048576


def test_metrics_count_tracked_ffmpeg(ffmpeg_exe: str) -> None:
    proc = _start_ffmpeg(ffmpeg_exe)
    server = start_metrics_server(0, get_memory_monitor())
    try:
        get_memory_monitor().track_process(proc.pid, "ffmpeg_metrics", is_ffmpeg=True)
        values = _scrape(server.url)
        assert values["montage_ffmpeg_active_processes"] >= 1
        assert values["montage_ffmpeg_memory_bytes"] > 1048576
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_metrics_without_prometheus_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"montage-video\[metrics\]"):
        start_metrics_server(0)
