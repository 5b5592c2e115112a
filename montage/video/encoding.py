"""The editor's video encoder settings: the user's choice, a lean default, and memory limits.

Only accurate mode, smart mode's partial GOPs and crossfades re-encode; copy never does.

The default is x264 ``ultrafast`` at CRF 18 with 2 encoder threads: the speed and memory of the
fastest tools, at a high quality, in exchange for larger files. Measured at 1080p30 on 2 CPUs
with the bundled ffmpeg (600 frames re-encoded from an ultrafast source; CPU s, peak RSS of the
ffmpeg child, size, SSIM against the source): ultrafast 5.7 s, 120 MiB, 47 MB, 31.1 dB;
superfast 11.3 s, 231 MiB, 35 MB, 29.9 dB; veryfast 14.3 s, 278 MiB, 21 MB, 25.5 dB; medium
(rc-lookahead 40, the editor's old setting) 29.3 s, 483 MiB, 23 MB, 26.8 dB. Side by side with
MoviePy (which encodes with ultrafast at CRF 23), only ultrafast beat it on wall time on a
loaded 2-CPU machine; superfast used less CPU but lost on wall (``benchmarks/results/peers.md``).
Pick ``preset="veryfast"`` or slower for files ~half the size at 2.5x the CPU or more. Smart
mode's heads and tails are a second or two each: they run on one encoder thread.

Limits: x264's lookahead is capped at ``MAX_LOOKAHEAD`` frames (each costs ~7 MiB at 1080p;
medium's 40 costs ~200 MiB more than 10 for little gain); threads at ``MAX_THREADS``. Under
memory pressure or a tight budget the adaptive profile (``get_safe_processing_config``) lowers
them further: below its top profile, preset, threads and lookahead become the cheaper of the
chosen and the profile's, and a preset whose predicted peak does not fit the usable memory is
stepped down to faster ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

from montage.ffmpeg.command import PRESET_ORDER
from montage.video.cutting import SourceIndex
from montage.video.pieces import EncodeSettings

log = logging.getLogger(__name__)

PRESETS = PRESET_ORDER  # fastest first (x264 and x265 share the names)
DEFAULT_PRESET = "ultrafast"
DEFAULT_CRF = 18
MAX_LOOKAHEAD = 20
MAX_THREADS = 4
SMART_THREADS = 1
CRF_RANGE = (0, 51)

_X264_PROFILES = {
    "baseline": "baseline",
    "constrained baseline": "baseline",
    "main": "main",
    "high": "high",
    "high 10": "high10",
    "high 4:2:2": "high422",
    "high 4:4:4 predictive": "high444",
}


@dataclass(frozen=True)
class EncoderChoice:
    """What the caller asked for; None = the default (``DEFAULT_PRESET``, ``DEFAULT_CRF``)."""

    preset: str | None = None
    crf: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "preset", check_preset(self.preset))
        object.__setattr__(self, "crf", check_crf(self.crf))

    def over(self, fallback: EncoderChoice) -> EncoderChoice:
        """This choice with its unset fields taken from ``fallback``."""
        return EncoderChoice(
            self.preset if self.preset is not None else fallback.preset,
            self.crf if self.crf is not None else fallback.crf,
        )


def check_preset(preset: object) -> str | None:
    if preset is None:
        return None
    if not isinstance(preset, str) or preset.strip().lower() not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    return preset.strip().lower()


def check_crf(crf: object) -> int | None:
    if crf is None:
        return None
    low, high = CRF_RANGE
    if isinstance(crf, bool) or not isinstance(crf, (int, float)) or not math.isfinite(crf):
        raise ValueError(f"crf must be a whole number from {low} to {high}; got {crf!r}")
    if crf != int(crf) or not low <= crf <= high:
        raise ValueError(f"crf must be a whole number from {low} to {high}; got {crf!r}")
    return int(crf)


_DEFAULTS: ContextVar[EncoderChoice] = ContextVar("montage_encoder_defaults")


@contextmanager
def encoder_defaults(preset: str | None = None, crf: int | None = None) -> Iterator[None]:
    """Within the block, editors made without a preset/crf use these (for code that builds its
    own ``VideoEditor``, such as ``make_highlights``). Per thread/task, restored on exit."""
    token = _DEFAULTS.set(EncoderChoice(preset, crf).over(current_defaults()))
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def current_defaults() -> EncoderChoice:
    return _DEFAULTS.get(EncoderChoice())


def faster(a: str, b: str) -> str:
    """The faster (cheaper) of two presets."""
    return a if PRESETS.index(a) <= PRESETS.index(b) else b


def _preset_lookahead(preset: str) -> int:
    from montage.ffmpeg.profiles import X264_PRESETS

    return X264_PRESETS[preset][2]


def base_settings(choice: EncoderChoice) -> EncodeSettings:
    """Settings for ``choice`` before any memory limit: bounded threads and lookahead."""
    from montage.ffmpeg.profiles import cpu_count

    preset = choice.preset or DEFAULT_PRESET
    crf = choice.crf if choice.crf is not None else DEFAULT_CRF
    return EncodeSettings(
        preset=preset,
        crf=crf,
        threads=min(MAX_THREADS, cpu_count()),
        rc_lookahead=min(MAX_LOOKAHEAD, _preset_lookahead(preset)),
    )


def fit_to_memory(
    enc: EncodeSettings, source: SourceIndex, memory_limit_mb: float | None
) -> EncodeSettings:
    """``enc`` lowered to what the adaptive profile allows now for ``source`` (module doc)."""
    from montage.adaptive import HEADROOM_FRACTION, get_safe_processing_config
    from montage.ffmpeg.profiles import FFmpegMemoryProfile, predict_peak_mb, profile_settings

    config = get_safe_processing_config(source.path, memory_limit_mb=memory_limit_mb)
    out = enc
    if config.ffmpeg_profile is not FFmpegMemoryProfile.HIGH:
        knobs = profile_settings(config.ffmpeg_profile)
        threads = knobs.encoder_threads or enc.threads
        out = replace(
            out,
            preset=faster(enc.preset, knobs.preset),
            threads=min(enc.threads, threads) if enc.threads else threads,
            rc_lookahead=min(enc.rc_lookahead, knobs.rc_lookahead),
        )
    fmt = source.fmt
    usable_mb = config.available_mb * (1 - HEADROOM_FRACTION)

    def peak(s: EncodeSettings) -> float:
        return predict_peak_mb(
            (fmt.width, fmt.height),
            config.ffmpeg_profile,
            codec="libx264",
            preset=s.preset,
            threads=s.threads,
            rc_lookahead=s.rc_lookahead,
            pix_fmt=fmt.pix_fmt or "yuv420p",
        )

    while out.preset != PRESETS[0] and peak(out) > usable_mb:
        preset = PRESETS[PRESETS.index(out.preset) - 1]
        lookahead = min(out.rc_lookahead, _preset_lookahead(preset))
        out = replace(out, preset=preset, rc_lookahead=lookahead)
    if out != enc:
        log.info(
            "encoder lowered for memory (profile %s, %.0f MiB usable): preset %s -> %s, "
            "threads %d -> %d, rc-lookahead %d -> %d",
            config.ffmpeg_profile.value,
            usable_mb,
            enc.preset,
            out.preset,
            enc.threads,
            out.threads,
            enc.rc_lookahead,
            out.rc_lookahead,
        )
    return out


def smart_settings(source: SourceIndex, enc: EncodeSettings) -> EncodeSettings:
    """Settings whose output can sit between the source's own GOPs: same codec, profile and
    level, no B-frames; one thread (the pieces are short, and a thread is ~50 MiB at 1080p)."""
    fmt = source.fmt
    encoder = "libx265" if fmt.codec == "hevc" else "libx264"
    profile = (fmt.profile or "").lower()
    threads = min(enc.threads, SMART_THREADS) if enc.threads else SMART_THREADS
    if encoder == "libx264":
        level = f"{fmt.level // 10}.{fmt.level % 10}" if fmt.level else None
        return replace(
            enc,
            encoder=encoder,
            profile=_X264_PROFILES.get(profile),
            level=level,
            no_bframes=True,
            threads=threads,
        )
    hevc_profile = profile.replace(" ", "") if profile in ("main", "main 10") else None
    return replace(enc, encoder=encoder, profile=hevc_profile, no_bframes=True, threads=threads)


def describe(enc: EncodeSettings) -> dict[str, object]:
    """The settings as the edit report shows them."""
    return {
        "encoder": enc.encoder,
        "preset": enc.preset,
        "crf": enc.crf,
        "threads": enc.threads,
        "rc_lookahead": enc.rc_lookahead if enc.encoder == "libx264" else None,
    }
