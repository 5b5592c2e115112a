"""The input is truncated or deleted while a job reads it: a clear error or a consistent
result, and nothing left behind (no child, no temp file, nothing at the target path)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from montage.errors import MontageError
from montage.resources import montage_temp_root
from montage.video.analysis import analyze_video
from montage.video.editor import VideoEditor
from montage.video.segments import VideoSegment

pytestmark = pytest.mark.timeout(60)
TRIGGER_AT = 0.15  # fraction of the job's progress at which the input is damaged


@pytest.fixture(scope="module")
def faststart_source(make_clip: Any) -> Path:
    """60 s with its index first, so a truncation hits the packets being read, not the index."""
    return Path(make_clip(duration=60.0, extra=("-movflags", "+faststart")))


@pytest.fixture
def victim(faststart_source: Path, tmp_path: Path) -> Path:
    path = tmp_path / "in" / "victim.mp4"
    path.parent.mkdir()
    shutil.copy(faststart_source, path)
    return path


@pytest.fixture(autouse=True)
def _nothing_left() -> Iterator[None]:
    yield
    assert psutil.Process().children(recursive=True) == [], "a child outlived the job"
    assert [p for p in montage_temp_root().rglob("*") if not p.is_dir()] == []


def _damage(path: Path, how: str) -> Callable[[float, str], None]:
    """A progress callback that damages ``path`` once, when the job is TRIGGER_AT through."""
    size = path.stat().st_size
    done: list[bool] = []

    def callback(fraction: float, message: str) -> None:
        if fraction >= TRIGGER_AT and not done:
            done.append(True)
            if how == "truncate":
                os.truncate(path, size // 6)
            else:
                path.unlink()

    return callback


def _analyze(path: Path, how: str) -> tuple[Any, BaseException | None]:
    try:
        return analyze_video(path, progress=_damage(path, how)), None
    except MontageError as error:
        return None, error


def test_deleted_while_analyzing_errors_clearly_or_completes(victim: Path) -> None:
    result, error = _analyze(victim, "delete")
    if error is not None:
        assert "victim.mp4" in str(error)
    else:
        assert result.processing["frames_analyzed"] == 1500


def test_truncated_while_analyzing_leaves_nothing_behind(victim: Path) -> None:
    _analyze(victim, "truncate")  # any outcome but a crash; the fixture checks the leftovers


def test_truncated_while_analyzing_errors_clearly_or_is_consistent(victim: Path) -> None:
    result, error = _analyze(victim, "truncate")
    if error is not None:
        assert "victim.mp4" in str(error)
    else:
        frames = result.processing["frames_analyzed"]
        assert frames == 1500, f"analysed {frames} of 1500 frames yet reported success"


def _extract(path: Path, out: Path, how: str) -> tuple[Any, BaseException | None]:
    try:
        report = VideoEditor().extract_and_concatenate_efficient(
            str(path),
            [VideoSegment(0.5, 20.5, str(path))],
            str(out),
            mode="accurate",
            progress=_damage(path, how),
        )
    except MontageError as error:
        return None, error
    return report, None


def test_deleted_while_extracting_errors_clearly_or_completes(victim: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "cut.mp4"
    out.parent.mkdir()
    report, error = _extract(victim, out, "delete")
    if error is not None:
        assert list(out.parent.iterdir()) == [], "partial output beside the target"
    else:
        assert abs(report.output_duration_s - 20.0) < 0.1


def test_truncated_while_extracting_leaves_no_output(victim: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "cut.mp4"
    out.parent.mkdir()
    report, error = _extract(victim, out, "truncate")
    if error is None:
        assert abs(report.output_duration_s - 20.0) < 0.1, "a short output reported as done"
    else:
        assert list(out.parent.iterdir()) == [], "partial output at the target path"
        assert "victim.mp4" in str(error), f"the error does not name the input: {error}"
