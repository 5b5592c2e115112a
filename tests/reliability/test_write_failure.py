"""Output writes that fail: a file-size limit on the job (``RLIMIT_FSIZE``, inherited by its
ffmpeg children), or an output folder that is not a folder. Clear error, no partial output,
temp removed."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from montage.errors import OutputError
from montage.ffmpeg.chunks import transcode_in_chunks
from montage.video.editor import VideoEditor
from montage.video.segments import VideoSegment

pytestmark = pytest.mark.timeout(60)
FSIZE_LIMIT_BYTES = 20_000  # far below any output or piece of these jobs

JOB = textwrap.dedent(
    """
    import json, sys
    src, out, kind = sys.argv[1:4]
    try:
        if kind in ("accurate", "copy"):
            from montage.video.editor import VideoEditor
            from montage.video.segments import VideoSegment
            VideoEditor().extract_and_concatenate_efficient(
                src, [VideoSegment(1.0, 3.0, src)], out, mode=kind)
        elif kind == "chunked":
            from montage.ffmpeg.chunks import transcode_in_chunks
            transcode_in_chunks(src, out, ["-c:v", "libx264", "-preset", "ultrafast"],
                                chunk_duration=1.0)
        else:
            from montage.ffmpeg.manager import run_with_retry
            tries = []
            def build(profile):
                tries.append(profile.value)
                return ["ffmpeg", "-y", "-i", src, "-c:v", "libx264", "-preset", "ultrafast", out]
            try:
                run_with_retry(build, "balanced")
            finally:
                print(json.dumps({"tries": tries}))
        print(json.dumps({"ok": True}))
    except Exception as error:
        names = [c.__name__ for c in type(error).__mro__]
        print(json.dumps({"ok": False, "types": names, "message": str(error)}))
    """
)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT_BYTES, FSIZE_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXFSZ's default action dumps core


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


def _run_limited(clip: Path, tmp_path: Path, kind: str) -> tuple[dict[str, Any], Path]:
    temp = tmp_path / "tmp"
    out_dir = tmp_path / "out"
    temp.mkdir()
    out_dir.mkdir()
    out = out_dir / "result.mp4"
    result = subprocess.run(
        [sys.executable, "-c", JOB, str(clip), str(out), kind],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, "TMPDIR": str(temp)},
        cwd=tmp_path,
        preexec_fn=_limit_file_size,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    outcome = lines[-1]
    for line in lines[:-1]:
        outcome.update(line)
    return outcome, out


@pytest.mark.parametrize("kind", ["accurate", "copy", "chunked"])
def test_file_size_limit_fails_cleanly(clip: Path, tmp_path: Path, kind: str) -> None:
    outcome, out = _run_limited(clip, tmp_path, kind)
    assert outcome["ok"] is False, "a 20 kB file-size limit cannot let the job succeed"
    assert "MontageError" in outcome["types"], outcome
    assert not out.exists(), "partial output at the target path"
    assert _files(out.parent) == [], "partial or temp files beside the target"
    assert _files(tmp_path / "tmp") == [], "temp files left in TMPDIR"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tmp"], "stray files (a core?)"


def test_file_size_limit_error_names_the_cause(clip: Path, tmp_path: Path) -> None:
    outcome, _ = _run_limited(clip, tmp_path, "accurate")
    message = outcome["message"]
    assert "SIGXFSZ" in message or "file size" in message.lower(), message


def test_run_with_retry_does_not_call_a_full_disk_out_of_memory(clip: Path, tmp_path: Path) -> None:
    outcome, _ = _run_limited(clip, tmp_path, "retry")
    assert outcome["ok"] is False
    assert "out of memory" not in outcome["message"], outcome["message"]
    assert outcome["tries"] == ["balanced"], "a write failure was retried"


@pytest.mark.parametrize("folder", ["file", "missing"])
def test_output_folder_that_is_not_a_folder_is_refused_before_any_work(
    clip: Path, tmp_path: Path, folder: str
) -> None:
    parent = tmp_path / "not-a-folder"
    if folder == "file":
        parent.write_bytes(b"a regular file")
    out = parent / "result.mp4"
    before = _files(tmp_path)
    with pytest.raises(OutputError, match="not-a-folder"):
        VideoEditor().extract_and_concatenate_efficient(
            str(clip), [VideoSegment(1.0, 3.0, str(clip))], str(out), mode="accurate"
        )
    with pytest.raises(OutputError, match="not-a-folder"):
        transcode_in_chunks(clip, out, ["-c:v", "libx264"], chunk_duration=1.0)
    assert _files(tmp_path) == before
