"""The analysis tests' clip: five lavfi sources back to back, one silent, made once a session."""

from __future__ import annotations

from pathlib import Path

import pytest

from montage.video.sample import make_sample_video

DURATION_S = 20.0
FPS = 25


@pytest.fixture(scope="session")
def scenes_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five different lavfi sources back to back, one of them silent (see montage.video.sample)."""
    out = tmp_path_factory.mktemp("analysis") / "scenes.mp4"
    return make_sample_video(out, duration_s=DURATION_S, size="320x240", rate=FPS)
