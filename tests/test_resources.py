"""Temp files and folders are removed by every route: block exit, exception, SIGTERM, SIGINT."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from montage import resources

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    yield
    resources.cleanup_all()
    resources.uninstall_signal_handlers()


def test_tempfile_path_is_inside_the_per_process_root_and_removed() -> None:
    with resources.managed_tempfile(suffix=".mp4") as path:
        root = resources.montage_temp_root()
        assert path.parent == root
        assert root.name.startswith(f"montage-{os.getpid()}-")
        assert path.suffix == ".mp4"
        assert not path.exists()  # documented: the name is reserved, the file is not created
        path.write_bytes(b"x" * 4096)
        assert resources.get_resource_status()["total_size_bytes"] == 4096
    assert not path.exists()
    assert resources.get_resource_status()["registered_count"] == 0


def test_tempfile_removed_after_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), resources.managed_tempfile() as path:
        path.write_text("partial output")
        raise RuntimeError("boom")
    assert not path.exists()


def test_temp_directory_removed_with_contents_after_exception() -> None:
    with pytest.raises(ValueError), resources.managed_temp_directory(prefix="chunks_") as folder:
        assert folder.is_dir() and folder.name.startswith("chunks_")
        (folder / "sub").mkdir()
        (folder / "sub" / "chunk_000.mp4").write_bytes(b"\0" * 100)
        raise ValueError
    assert not folder.exists()


def test_explicit_dir_is_honoured(tmp_path: Path) -> None:
    with resources.managed_tempfile(suffix=".ts", dir=tmp_path) as path:
        assert path.parent == tmp_path
        path.write_text("x")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    suffix=st.text(alphabet="abcxyz0123.", max_size=8),
    prefix=st.text(alphabet="abc_-", max_size=8),
)
def test_names_stay_unique_and_inside_root(suffix: str, prefix: str) -> None:
    with (
        resources.managed_tempfile(suffix=suffix, prefix=prefix) as first,
        resources.managed_tempfile(suffix=suffix, prefix=prefix) as second,
    ):
        assert first != second
        assert first.parent == second.parent == resources.montage_temp_root()
        assert first.name.startswith(prefix) and first.name.endswith(suffix)
        first.write_text("1")
        second.mkdir()  # whatever is created at the path is removed
    assert not first.exists() and not second.exists()


def test_registry_removes_paths_and_calls_callables(tmp_path: Path) -> None:
    target = tmp_path / "keep_until_exit.bin"
    target.write_bytes(b"1234")
    calls: list[str] = []
    resources.register_cleanup(target)
    resources.register_cleanup(lambda: calls.append("first"))
    resources.register_cleanup(lambda: 1 / 0)  # a failing callable must not stop the others
    resources.register_cleanup(lambda: calls.append("last"))
    status = resources.get_resource_status()
    kinds = sorted(item["kind"] for item in status["registered"])
    assert kinds == ["callable", "callable", "callable", "file"]
    assert status["total_size_bytes"] == 4
    assert resources.cleanup_all() == 4
    assert not target.exists()
    assert calls == ["last", "first"]  # newest first
    assert resources.cleanup_all() == 0


def test_unregister_leaves_the_item_alone(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.write_text("x")
    token = resources.register_cleanup(str(target))
    resources.unregister_cleanup(token)
    resources.cleanup_all()
    assert target.exists()


def test_forked_child_never_removes_the_parents_files() -> None:
    with resources.managed_tempfile() as path:
        path.write_text("parent's")
        pid = os.fork()
        if pid == 0:  # child: inherited registry must be dropped, not acted on
            code = 0 if resources.cleanup_all() == 0 else 3
            code = code if resources.montage_temp_root() != path.parent else 4
            resources.cleanup_all()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert path.exists()


def _dead_process() -> tuple[int, int]:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = int(psutil.Process(child.pid).create_time())
    child.wait()
    return child.pid, start


def test_sweep_removes_only_folders_of_dead_processes(tmp_path: Path) -> None:
    dead_pid, dead_start = _dead_process()
    me = psutil.Process()
    stale = tmp_path / f"montage-{dead_pid}-{dead_start}"
    reused = tmp_path / f"montage-{os.getpid()}-{int(me.create_time()) - 1000}"
    alive = tmp_path / f"montage-{os.getpid()}-{int(me.create_time())}"
    unrelated = tmp_path / "montage-notes"
    for folder in (stale, reused, alive, unrelated):
        folder.mkdir()
        (folder / "chunk.mp4").write_bytes(b"\0" * 10)
    removed = resources.sweep_stale_temp_dirs(tmp_path)
    assert sorted(removed) == sorted([stale, reused])
    assert not stale.exists() and not reused.exists()
    assert alive.exists() and unrelated.exists()


def test_opencv_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, clip: Path) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail like a missing wheel
    with (
        pytest.raises(ImportError, match=r"montage-video\[opencv\]"),
        resources.managed_opencv_capture(clip),
    ):
        pass


def test_handlers_install_idempotently_and_restore() -> None:
    before = signal.getsignal(signal.SIGINT)
    assert resources.install_signal_handlers()
    assert resources.install_signal_handlers()
    assert resources.signal_handlers_installed()
    assert resources.get_resource_status()["signal_handlers_installed"] is True
    resources.uninstall_signal_handlers()
    assert signal.getsignal(signal.SIGINT) is before


def test_handlers_refused_off_the_main_thread() -> None:
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(resources.install_signal_handlers()))
    worker.start()
    worker.join()
    assert results == [False]
    assert not resources.signal_handlers_installed()


CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from montage import resources
    # Ctrl-C as in a terminal: a child inherits an ignored SIGINT (pytest started in the
    # background by a non-interactive shell, as CI runners may), and Python then keeps it so
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if "--ignored" in sys.argv:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "--own-handler" in sys.argv:
        def own(signum, frame):
            print("previous handler ran", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, own)
    assert resources.install_signal_handlers()
    try:
        with resources.managed_tempfile(suffix=".mp4") as path:
            path.write_bytes(b"x" * 1000)
            with resources.managed_temp_directory() as folder:
                (folder / "part.ts").write_text("a")
                print(path, folder, resources.montage_temp_root(), flush=True)
                time.sleep(60)
    except KeyboardInterrupt:
        if "--catch" in sys.argv:
            print("caught KeyboardInterrupt", flush=True)
            sys.exit(5)
        raise
    """
)


@contextlib.contextmanager
def _started_child(*flags: str) -> Iterator[tuple[subprocess.Popen[str], list[Path]]]:
    """The child script, once it has made its three temp paths; killed if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        paths = [Path(p) for p in proc.stdout.readline().split()]
        assert len(paths) == 3 and all(p.exists() for p in paths), paths
        yield proc, paths
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run_child(signum: int, *flags: str) -> tuple[int, str, str, list[Path]]:
    with _started_child(*flags) as (proc, paths):
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err, paths


def test_sigterm_cleans_up_and_exits_143() -> None:
    code, _, err, paths = _run_child(signal.SIGTERM)
    assert code == -signal.SIGTERM, err  # 143 in a shell
    assert not any(p.exists() for p in paths)


def test_sigterm_chains_to_a_previous_python_handler() -> None:
    code, out, err, paths = _run_child(signal.SIGTERM, "--own-handler")
    assert code == 7, err
    assert "previous handler ran" in out
    assert not any(p.exists() for p in paths)


def test_sigint_still_raises_keyboard_interrupt() -> None:
    code, _, err, paths = _run_child(signal.SIGINT)
    assert "KeyboardInterrupt" in err
    assert code in (-signal.SIGINT, 130)  # Python re-raises SIGINT after an uncaught ^C
    assert not any(p.exists() for p in paths)


def test_sigint_can_be_caught_by_the_application() -> None:
    code, out, _, paths = _run_child(signal.SIGINT, "--catch")
    assert code == 5
    assert "caught KeyboardInterrupt" in out
    assert not any(p.exists() for p in paths)


def test_an_ignored_sigint_stays_ignored_and_cleans_nothing() -> None:
    """A job started with SIGINT ignored (``nohup``, ``&`` in a script) keeps running on it,
    so its temp files must stay; SIGTERM still cleans up."""
    with _started_child("--ignored") as (proc, paths):
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2)  # still running: the signal was ignored
        assert all(p.exists() for p in paths), "temp files of a running job were removed"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM, err
    assert not any(p.exists() for p in paths)


def test_sigkilled_process_folder_is_swept_by_the_next_start() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        root = Path(proc.stdout.readline().split()[2])
        proc.kill()  # no handler can run: the folder is left behind
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert root.exists()
    deadline = time.monotonic() + 5
    removed = resources.sweep_stale_temp_dirs()
    while root.exists() and time.monotonic() < deadline:  # pid may linger as a zombie briefly
        time.sleep(0.05)
        removed = resources.sweep_stale_temp_dirs()
    assert root in removed
    assert not root.exists()
