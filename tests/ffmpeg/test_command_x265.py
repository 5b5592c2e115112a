"""x265 outputs get a lookahead the encoder accepts (a real encode at the leanest profile)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from montage.ffmpeg.binary import ffmpeg_path
from montage.ffmpeg.command import build_memory_safe_ffmpeg_command
from montage.ffmpeg.probe import probe
from montage.ffmpeg.profiles import X265_PRESETS


def test_minimal_profile_x265_encode_opens_and_finishes(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "x265.mp4"
    argv = build_memory_safe_ffmpeg_command(
        ["ffmpeg", "-i", str(clip), "-t", "1", "-c:v", "libx265", "-an", str(out)],
        profile="minimal",
        progress_url=None,
    )
    params = argv[argv.index("-x265-params") + 1]
    preset = argv[argv.index("-preset") + 1]
    lookahead = int(params.split("rc-lookahead=")[1].split(":")[0])
    assert lookahead > X265_PRESETS[preset][0]
    argv[0] = ffmpeg_path()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    info = probe(out)
    assert info.video is not None and info.video.codec == "hevc"
