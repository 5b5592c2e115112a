"""FFmpeg memory profiles and a calibrated model of ffmpeg's peak RSS.

Why: ffmpeg's memory is set by resolution and encoder settings, not by file length, so it can be
predicted *before* a child starts and reserved in the budget. A profile is a set of concrete knobs
that trade speed/quality for memory; the model turns (resolution, codec, preset, threads,
lookahead) into MiB.

Profiles (x264; measured peak RSS of a 1080p H.264+AAC -> x264+AAC transcode with the bundled
ffmpeg n9.0.2 on a 2-CPU machine, see ``benchmarks/results/model.md``):

* MINIMAL  - 1 encoder + 1 decoder thread, ultrafast, rc-lookahead 0: 105 MiB (2160p: 277).
* LOW      - 2 threads, veryfast, rc-lookahead 10: 285 MiB (2160p: 919). superfast (no mbtree)
  would save only ~17 % (238 MiB) for a visibly worse rate/quality, so LOW keeps veryfast.
* BALANCED - min(4, cores) threads, fast with rc-lookahead 20 (not fast's default 30): 351 MiB.
  Each lookahead frame costs ~7 MiB at 1080p, each extra x264 thread ~12-25 MiB.
* HIGH     - auto threads (x264: 1.5 x cores), medium, rc-lookahead 40: 519 MiB with 2 CPUs;
  625 MiB at 8 threads, and ~1.2 GiB at 32 (MEASUREMENTS.md).
Decode alone: 61 MiB (1 thread) to 81 MiB (auto); stream copy ~35-39 MiB at any resolution.
x265 refuses rc-lookahead <= bframes, so a lookahead for x265 must be at least bframes + 1.

The model is physical: a fixed base for the loaded binary, plus *frames held in memory* times the
frame size (width x height x bytes per pixel of the pixel format). Frames are held by the decoder
(reference pictures + one per frame thread), by ffmpeg's queues between decoder, filters and
encoder, and by the encoder: x264 keeps ``max(bframes, lookahead) + threads - 1`` frames in its
lookahead (plus ``bframes + 1`` sync-lookahead frames when threaded), ``refs`` reference frames
with half-pel planes, and per-thread working frames. Each term's weight (frames -> bytes) was
fitted to measured ``ru_maxrss`` of real ffmpeg runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = [
    "MODEL",
    "X264_PRESETS",
    "X265_PRESETS",
    "FFmpegMemoryProfile",
    "ModelConstants",
    "ProfileSettings",
    "bytes_per_pixel",
    "cheaper",
    "cpu_count",
    "predict_peak_mb",
    "profile_for_level",
    "profile_settings",
    "x264_threads",
    "x265_frame_threads",
]

MIB = 1048576


class FFmpegMemoryProfile(str, Enum):
    """How much memory an ffmpeg child may use, cheapest first."""

    MINIMAL = "minimal"
    LOW = "low"
    BALANCED = "balanced"
    HIGH = "high"


_ORDER = (
    FFmpegMemoryProfile.MINIMAL,
    FFmpegMemoryProfile.LOW,
    FFmpegMemoryProfile.BALANCED,
    FFmpegMemoryProfile.HIGH,
)


@dataclass(frozen=True)
class ProfileSettings:
    """The concrete ffmpeg knobs of a profile. Threads 0 means auto (ffmpeg/x264 decide)."""

    encoder_threads: int
    decoder_threads: int
    preset: str
    rc_lookahead: int
    filter_threads: int
    max_muxing_queue_size: int


def cpu_count() -> int:
    """CPUs this process may run on (what x264 and ffmpeg count for 'auto' threads)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _as_profile(profile: FFmpegMemoryProfile | str) -> FFmpegMemoryProfile:
    return profile if isinstance(profile, FFmpegMemoryProfile) else FFmpegMemoryProfile(profile)


def profile_settings(profile: FFmpegMemoryProfile | str) -> ProfileSettings:
    """The knobs of ``profile``; BALANCED's thread count is resolved against this machine's CPUs."""
    p = _as_profile(profile)
    if p is FFmpegMemoryProfile.MINIMAL:
        return ProfileSettings(1, 1, "ultrafast", 0, 1, 64)
    if p is FFmpegMemoryProfile.LOW:
        return ProfileSettings(2, 2, "veryfast", 10, 1, 128)
    if p is FFmpegMemoryProfile.BALANCED:
        threads = min(4, cpu_count())
        return ProfileSettings(threads, threads, "fast", 20, threads, 512)
    return ProfileSettings(0, 0, "medium", 40, 0, 1024)


def cheaper(profile: FFmpegMemoryProfile | str) -> FFmpegMemoryProfile | None:
    """The next cheaper profile, or None when ``profile`` is already MINIMAL."""
    index = _ORDER.index(_as_profile(profile))
    return _ORDER[index - 1] if index > 0 else None


_LEVEL_TO_PROFILE = {
    "low": FFmpegMemoryProfile.HIGH,
    "moderate": FFmpegMemoryProfile.BALANCED,
    "high": FFmpegMemoryProfile.LOW,
    "critical": FFmpegMemoryProfile.MINIMAL,
}


def profile_for_level(level: Any) -> FFmpegMemoryProfile:
    """Profile to use at a memory pressure level (a MemoryPressureLevel or its value string).

    Duck-typed so this module does not import the memory layer at import time.
    """
    key = str(getattr(level, "value", level)).lower()
    try:
        return _LEVEL_TO_PROFILE[key]
    except KeyError:
        raise ValueError(f"unknown memory pressure level: {level!r}") from None


# --- the peak-memory model -------------------------------------------------------------------

# x264 preset -> (bframes, refs, rc_lookahead, mbtree). Lookahead only holds frames with mbtree
# (or VBV): ultrafast/superfast turn mbtree off, so their lookahead holds no frames.
X264_PRESETS: dict[str, tuple[int, int, int, bool]] = {
    "ultrafast": (0, 1, 0, False),
    "superfast": (3, 1, 0, False),
    "veryfast": (3, 1, 10, True),
    "faster": (3, 2, 20, True),
    "fast": (3, 2, 30, True),
    "medium": (3, 3, 40, True),
    "slow": (3, 5, 50, True),
    "slower": (3, 8, 60, True),
    "veryslow": (8, 16, 60, True),
    "placebo": (16, 16, 60, True),
}
# x265 preset -> (bframes, refs, rc_lookahead)
X265_PRESETS: dict[str, tuple[int, int, int]] = {
    "ultrafast": (3, 1, 5),
    "superfast": (3, 1, 10),
    "veryfast": (4, 2, 15),
    "faster": (4, 2, 15),
    "fast": (4, 3, 15),
    "medium": (4, 3, 20),
    "slow": (4, 4, 25),
    "slower": (8, 5, 40),
    "veryslow": (8, 5, 40),
    "placebo": (8, 5, 60),
}

# bytes per pixel of one decoded frame, as ffmpeg stores it (10-bit formats use 16-bit samples)
_BYTES_PER_PIXEL: dict[str, float] = {
    "gray": 1.0,
    "yuv420p": 1.5,
    "yuvj420p": 1.5,
    "nv12": 1.5,
    "nv21": 1.5,
    "yuv422p": 2.0,
    "yuvj422p": 2.0,
    "yuyv422": 2.0,
    "uyvy422": 2.0,
    "yuv444p": 3.0,
    "yuvj444p": 3.0,
    "rgb24": 3.0,
    "bgr24": 3.0,
    "rgba": 4.0,
    "bgra": 4.0,
    "argb": 4.0,
    "abgr": 4.0,
    "gray10le": 2.0,
    "yuv420p10le": 3.0,
    "p010le": 3.0,
    "yuv422p10le": 4.0,
    "yuv444p10le": 6.0,
}

_OPERATIONS = ("encode", "decode", "copy", "analyze")


@dataclass(frozen=True)
class ModelConstants:
    """Weights of the peak-RSS model. ``*_frames`` are multiples of one frame's bytes."""

    base_mb: float = 36.4  # static binary mapped + demuxer/muxer state, no frames
    copy_mb: float = 0.0  # stream copy: a few packets in flight (measured 34-39 MiB in all)
    analyze_mb: float = 1.0  # scale to a small grey frame + pipe buffers
    dec_frames: float = 5.7  # decoder references + output pictures
    dec_thread_frames: float = 2.6  # each decoder frame thread holds pictures
    pipe_frames: float = 3.1  # ffmpeg's frame queues between decoder, filters, encoder
    x264_mb: float = 8.9  # x264 fixed allocations
    x264_la_frames: float = 2.33  # a lookahead frame: planes + lowres planes
    x264_ref_frames: float = 2.59  # a reference/reconstructed frame with half-pel planes
    x264_thread_frames: float = 3.91  # per frame thread: its frame being encoded + scratch
    x264_lean_frames: float = 1.5  # an ultrafast frame: planes only (fixed, not fitted)
    x264_subpel_frames: float = 15.5  # presets above ultrafast: half-pel, B-frame, mbtree buffers
    x265_mb: float = 79.9  # x265's thread pool and CTU analysis structures
    x265_la_frames: float = 1.0
    x265_ref_frames: float = 12.2
    x265_thread_frames: float = 12.05  # per frame thread (frame encoder with its own buffers)
    other_mb: float = 16.7  # other encoders (mpeg4, ...): one calibration point only
    other_thread_frames: float = 2.0


MODEL = ModelConstants()


def bytes_per_pixel(pix_fmt: str | None) -> float:
    """Bytes one pixel takes in a decoded frame of ``pix_fmt`` (yuv420p: 1.5)."""
    if not pix_fmt:
        return 1.5
    known = _BYTES_PER_PIXEL.get(pix_fmt)
    if known is not None:
        return known
    deep = any(bits in pix_fmt for bits in ("10", "12", "14", "16"))
    return 3.0 if deep else 1.5


def _media_facts(media: Any) -> tuple[int, int, str | None]:
    """(width, height, pix_fmt) of a MediaInfo (duck-typed), a (w, h) tuple, or None (1080p)."""
    if media is None:
        return 1920, 1080, None
    if isinstance(media, tuple):
        width, height = int(media[0]), int(media[1])
        return max(1, width), max(1, height), None
    video = getattr(media, "video", None)
    width = getattr(video, "width", None) or 1920
    height = getattr(video, "height", None) or 1080
    return int(width), int(height), getattr(video, "pix_fmt", None)


def _decoder_threads(requested: int) -> int:
    """ffmpeg's decoder threads: 0 = auto = min(cpus + 1, 16) frame threads.

    (ffmpeg also caps auto at one thread per macroblock row; that only matters for tiny frames,
    and ignoring it keeps "auto is the most" true, which the profile ordering relies on.)
    """
    if requested > 0:
        return requested
    cpus = cpu_count()
    return min(cpus + 1, 16) if cpus > 1 else 1


def x264_threads(requested: int, height: int) -> int:
    """x264's frame threads: 0 = auto = 1.5 x cpus, at most one per two macroblock rows."""
    threads = requested if requested > 0 else cpu_count() * 3 // 2
    return max(1, min(threads, 128, max(1, (height + 15) // 16 // 2)))


def _x264_mb(frame_mb: float, preset: str, threads: int, lookahead: int | None) -> float:
    bframes, refs, default_la, mbtree = X264_PRESETS.get(preset, X264_PRESETS["medium"])
    la = default_la if lookahead is None else lookahead
    held = max(bframes, la if mbtree else 0) + threads - 1
    if threads > 1:
        held += bframes + 1  # sync-lookahead
    if preset == "ultrafast":
        # full-pel motion search, no B-frames, no scenecut: no half-pel or lowres planes
        frames = MODEL.x264_lean_frames * (held + refs + 1)
    else:
        frames = (
            MODEL.x264_subpel_frames
            + MODEL.x264_la_frames * held
            + MODEL.x264_ref_frames * (refs + 1)
        )
    frames += MODEL.x264_thread_frames * threads
    return MODEL.x264_mb + frame_mb * frames


def x265_frame_threads(requested: int) -> int:
    """x265 frame threads: explicit, or x265's auto choice from the CPU count."""
    if requested > 0:
        return requested
    cpus = cpu_count()
    for min_cpus, frame_threads in ((32, 6), (16, 5), (8, 4), (4, 3), (2, 2)):
        if cpus >= min_cpus:
            return frame_threads
    return 1


def _x265_mb(frame_mb: float, preset: str, threads: int, lookahead: int | None) -> float:
    bframes, refs, default_la = X265_PRESETS.get(preset, X265_PRESETS["medium"])
    la = max(default_la if lookahead is None else lookahead, bframes + 1)  # x265 needs > bframes
    frames = (
        MODEL.x265_la_frames * (la + bframes)
        + MODEL.x265_ref_frames * (refs + 1)
        + MODEL.x265_thread_frames * threads
    )
    return MODEL.x265_mb + frame_mb * frames


def _encoder_mb(
    frame_mb: float, codec: str, preset: str, threads: int, lookahead: int | None, height: int
) -> float:
    if codec in ("libx264", "h264", "libx264rgb"):
        return _x264_mb(frame_mb, preset, x264_threads(threads, height), lookahead)
    if codec in ("libx265", "hevc", "h265"):
        return _x265_mb(frame_mb, preset, x265_frame_threads(threads), lookahead)
    resolved = threads if threads > 0 else cpu_count()
    return MODEL.other_mb + frame_mb * MODEL.other_thread_frames * resolved


def predict_peak_mb(
    media: Any = None,
    profile: FFmpegMemoryProfile | str | None = FFmpegMemoryProfile.BALANCED,
    operation: str = "encode",
    *,
    codec: str = "libx264",
    preset: str | None = None,
    threads: int | None = None,
    rc_lookahead: int | None = None,
    pix_fmt: str | None = "yuv420p",
) -> float:
    """Predicted peak RSS in MiB of one ffmpeg child doing ``operation`` on ``media``.

    ``media``: a MediaInfo (its video width/height/pix_fmt are used), a (width, height) tuple, or
    None for 1080p. ``profile`` supplies threads/preset/lookahead that are not given explicitly;
    ``profile=None`` means ffmpeg's own defaults (auto threads, medium, the preset's lookahead).
    ``threads`` is the encoder's thread count (0 = auto); the decoder uses the profile's.
    Operations: "encode" (decode + encode), "decode" (decode to null), "copy" (stream copy),
    "analyze" (decode + scale to a small grey frame). Accuracy: see benchmarks/results/model.md.
    """
    if operation not in _OPERATIONS:
        raise ValueError(f"operation must be one of {_OPERATIONS}, not {operation!r}")
    width, height, source_fmt = _media_facts(media)
    if operation == "copy" or codec == "copy":
        return MODEL.base_mb + MODEL.copy_mb
    settings = profile_settings(profile) if profile is not None else None
    dec_threads = _decoder_threads(settings.decoder_threads if settings else 0)
    source_mb = width * height * bytes_per_pixel(source_fmt or pix_fmt) / MIB
    peak_mb = MODEL.base_mb + source_mb * (MODEL.dec_frames + MODEL.dec_thread_frames * dec_threads)
    if operation == "decode":
        return peak_mb
    if operation == "analyze":
        return peak_mb + MODEL.analyze_mb
    frame_mb = width * height * bytes_per_pixel(pix_fmt or source_fmt) / MIB
    if threads is None:
        threads = settings.encoder_threads if settings else 0
    if preset is None:
        preset = settings.preset if settings else "medium"
    if rc_lookahead is None and settings is not None:
        rc_lookahead = settings.rc_lookahead
    encoder_mb = _encoder_mb(frame_mb, codec, preset, threads, rc_lookahead, height)
    return peak_mb + frame_mb * MODEL.pipe_frames + encoder_mb
