"""managed_opencv_capture with the real OpenCV (the ``opencv`` extra, installed for tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from montage.resources import managed_opencv_capture


def test_reads_every_frame_and_releases(clip: Path) -> None:
    pytest.importorskip("cv2", reason="the opencv extra is not installed")
    frames = 0
    with managed_opencv_capture(clip) as cap:
        assert cap.isOpened()
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape == (240, 320, 3)
            frames += 1
    assert frames == 100  # 4 s at 25 fps
    assert not cap.isOpened()  # released on leaving the block


def test_releases_on_error(clip: Path) -> None:
    pytest.importorskip("cv2", reason="the opencv extra is not installed")
    with pytest.raises(RuntimeError), managed_opencv_capture(clip) as cap:
        cap.read()
        raise RuntimeError("boom")
    assert not cap.isOpened()
