"""Every code block of the README is executed.

Python blocks run as in ``snippets.py``. Console blocks: each ``$ montage-video ...`` line runs
for real (in a folder with a generated ``talk.mp4``), and must exit 0, or the code its
``# exits N`` comment states. The quick start's ``bash`` block is what ``.ci/run`` runs on a
fresh clone, so here we check that ``.ci/run`` really runs those commands.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from snippets import REPO_ROOT, python_blocks, run_python_blocks

README = REPO_ROOT / "README.md"


def _fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def _console_commands() -> list[tuple[str, int]]:
    commands = []
    for block in _fenced("console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                command, _, comment = line[2:].partition("  # ")
                match = re.search(r"exits (\d+)", comment)
                commands.append((command.strip(), int(match.group(1)) if match else 0))
    return commands


def test_every_fenced_block_has_a_known_language() -> None:
    languages = set(re.findall(r"^```(\w*)$", README.read_text(), re.M)) - {""}
    assert languages <= {"bash", "console", "python", "text"}, languages
    assert len(_fenced("bash")) == 1, "only the quick start may be a bash block (run by .ci/run)"


def test_quick_start_is_what_ci_runs() -> None:
    (block,) = _fenced("bash")
    install, tests = [line.strip() for line in block.strip().splitlines()]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "montage-video demo" in install and "montage-video demo" in ci
    assert "python3 -m venv .venv" in install and "python3 -m venv .venv" in ci
    assert "pip install" in install and "-e '.[" in ci
    assert tests == ".venv/bin/python -m pytest" and tests in ci


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from montage.video.sample import make_sample_video

    folder = tmp_path_factory.mktemp("readme")
    make_sample_video(folder / "talk.mp4", duration_s=110, size="320x240")
    return folder


@pytest.mark.parametrize(("command", "expected"), _console_commands())
def test_console_command_runs(workdir: Path, command: str, expected: int) -> None:
    argv = shlex.split(command)
    assert argv[0] == "montage-video"
    result = subprocess.run(
        [sys.executable, "-m", "montage", *argv[1:], *(["-y"] if "-o" in argv else [])],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == expected, result.stderr[-2000:]


@pytest.fixture(scope="module")
def python_results(
    tmp_path_factory: pytest.TempPathFactory, make_clip: Any
) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("readme-py")
    media = root / "media"
    media.mkdir()
    long_clip = make_clip(duration=100.0, size="320x240", rate=25, gop=50)  # the spec cuts 60-90 s
    for name in ("input.mp4", "large_video.mp4", "large_input.mp4"):
        os.link(long_clip, media / name)
    os.link(make_clip(duration=6.0, size="320x240", gop=25), media / "video.mp4")
    return run_python_blocks(README, media, root)


def test_readme_carries_every_spec_example_verbatim() -> None:
    spec = REPO_ROOT.parent / "shared" / "seed" / "MEMORY_MANAGEMENT.md"
    if not spec.is_file():
        pytest.skip(f"{spec} is absent (a user's clone has no ../shared)")
    readme_blocks = python_blocks(README)
    for block in python_blocks(spec):
        assert block in readme_blocks, f"spec example missing from the README:\n{block[:300]}"


@pytest.mark.parametrize("index", range(len(python_blocks(README))))
def test_python_block_runs(python_results: list[dict[str, Any]], index: int) -> None:
    result = python_results[index]
    assert result["ok"], f"README python block {index} failed:\n{result.get('error')}"
