"""Every Python code block of the seed spec (../shared/seed/MEMORY_MANAGEMENT.md) runs as written.

See ``snippets.py`` for how: in order, one namespace, repository root on the import path, a fresh
folder per block with generated media for input.mp4, video.mp4, large_video.mp4, large_input.mp4.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from snippets import REPO_ROOT, python_blocks, run_python_blocks

SPEC = REPO_ROOT.parent / "shared" / "seed" / "MEMORY_MANAGEMENT.md"


def _blocks() -> list[str]:
    return python_blocks(SPEC) if SPEC.is_file() else []


@pytest.fixture(scope="module")
def spec_results(tmp_path_factory: pytest.TempPathFactory, make_clip: Any) -> list[dict[str, Any]]:
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} is absent (a user's clone has no ../shared)")
    root = tmp_path_factory.mktemp("spec")
    media = root / "media"
    media.mkdir()
    long_clip = make_clip(duration=100.0, size="320x240", rate=25, gop=50)
    short_clip = make_clip(duration=6.0, size="320x240", rate=25, gop=25)
    for name, source in (
        ("input.mp4", long_clip),
        ("large_video.mp4", long_clip),
        ("large_input.mp4", long_clip),
        ("video.mp4", short_clip),
    ):
        os.link(source, media / name)
    return run_python_blocks(SPEC, media, root)


@pytest.mark.parametrize("index", range(len(_blocks()) or 1))
def test_spec_block_runs_as_written(spec_results: list[dict[str, Any]], index: int) -> None:
    result = spec_results[index]
    assert result["ok"], f"spec block {index} failed:\n{result.get('error')}"


def test_spec_examples_really_produced_output(spec_results: list[dict[str, Any]]) -> None:
    for result, code in zip(spec_results, _blocks()):
        if "extract_and_concatenate_efficient" in code or "memory_safe_ffmpeg(cmd" in code:
            assert "output.mp4" in result["files"], (result["index"], result["files"])


def test_spec_has_its_blocks() -> None:
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} is absent (a user's clone has no ../shared)")
    assert len(_blocks()) >= 20
