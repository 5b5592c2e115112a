"""A built-in sample video: lavfi test patterns with tones, scene changes and a silent gap.

Used by ``montage-video demo`` so the main job can be tried on a fresh machine with no media.
The scenes differ in picture and sound, so the analysis has real cuts, loud and quiet parts and
a silence to find.
"""

from __future__ import annotations

from pathlib import Path

# (video source, audio source + its options, audio filters, share of the total duration)
_SCENES: tuple[tuple[str, str, str, float], ...] = (
    ("testsrc2", "sine=frequency=440", "volume=1.0", 0.25),
    ("smptehdbars", "anullsrc=channel_layout=mono", "anull", 0.10),
    ("testsrc", "sine=frequency=880", "volume=0.8", 0.20),
    ("rgbtestsrc", "sine=frequency=220", "volume=0.2", 0.15),
    ("testsrc2", "sine=frequency=660", "volume=1.5", 0.30),
)


def scene_starts(duration_s: float) -> list[float]:
    """Where each scene of the sample starts (the first is 0), in seconds."""
    starts, t = [], 0.0
    for *_, share in _SCENES:
        starts.append(round(t, 6))
        t += share * duration_s
    return starts


def make_sample_video(
    output: str | Path,
    duration_s: float = 120.0,
    size: str = "1920x1080",
    rate: int = 25,
) -> Path:
    """Write the sample (H.264 ultrafast + AAC, keyframe every 2 s) to ``output``."""
    from montage.ffmpeg.binary import ffmpeg_path
    from montage.ffmpeg.process import run_ffmpeg

    if not duration_s > 0:
        raise ValueError(f"duration must be positive, got {duration_s!r}")
    out = Path(output).resolve()
    parts, labels_v, labels_a = [], [], []
    for i, (video, audio, audio_filter, share) in enumerate(_SCENES):
        length = f"{share * duration_s:.6f}"
        parts.append(f"{video}=size={size}:rate={rate}:duration={length},format=yuv420p[v{i}]")
        parts.append(
            f"{audio}:sample_rate=48000,atrim=duration={length},{audio_filter},"
            f"aformat=channel_layouts=mono[a{i}]"
        )
        labels_v.append(f"[v{i}]")
        labels_a.append(f"[a{i}]")
    n = len(_SCENES)
    graph = (
        ";".join(parts)
        + ";"
        + "".join(v + a for v, a in zip(labels_v, labels_a))
        + f"concat=n={n}:v=1:a=1[v][a]"
    )
    tmp = out.with_name(f".{out.name}.part{out.suffix}")
    cmd = [
        ffmpeg_path(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-filter_complex",
        graph,
        "-map",
        "[v]",
        "-map",
        "[a]",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        str(2 * rate),
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-movflags",
        "+faststart",
        f"file:{tmp}",
    ]
    try:
        run_ffmpeg(cmd, name="make-sample", reserve_mb=300.0)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
