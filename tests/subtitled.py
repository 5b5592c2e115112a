"""Clips with text subtitle and timecode tracks, for the stream-mapping tests.

``write_srt`` makes cues "cue N" every ``step_s`` seconds (each ``length_s`` long) plus, when
asked, one long cue spanning the whole clip; ``make_subtitled`` muxes them with a testsrc2
video (and a sine audio) into mp4 (``mov_text``) or mkv (``srt``/``ass``), optionally with an
mp4 ``tmcd`` timecode track. ffmpeg writes version-1 ``tkhd`` boxes for an mp4 with audio and
``mov_text``, which is worth having in tests by itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_srt(path: Path, duration_s: float, step_s: float = 0.5, length_s: float = 0.4) -> Path:
    blocks = []
    n = 0
    while n * step_s + length_s <= duration_s:
        start = n * step_s
        blocks.append(f"{n + 1}\n{srt_time(start)} --> {srt_time(start + length_s)}\ncue {n}\n")
        n += 1
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def make_subtitled(
    ffmpeg_exe: str,
    out: Path,
    *,
    codec: str,
    duration_s: float = 6.0,
    audio: bool = True,
    timecode: str | None = None,
    language: str | None = "eng",
) -> Path:
    srt = write_srt(out.with_suffix(".srt"), duration_s)
    cmd = [ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    cmd += ["-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={duration_s}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={duration_s}"]
    cmd += ["-i", str(srt), "-map", "0:v", *(["-map", "1:a"] if audio else [])]
    cmd += ["-map", f"{2 if audio else 1}:s"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25"]
    cmd += ["-c:a", "aac", "-b:a", "96k"] if audio else []
    cmd += ["-c:s", codec]
    if language:
        cmd += ["-metadata:s:s:0", f"language={language}"]
    if timecode:
        cmd += ["-timecode", timecode]
    subprocess.run([*cmd, str(out)], check=True, timeout=60)
    return out
