"""Adaptive configuration: how to run a job so it fits in the memory we actually have.

Why: the same job needs very different settings on a 64 GiB workstation and in a 1 GiB
container, and the difference is knowable *before* starting, because ffmpeg's peak memory depends
on resolution, pixel format and encoder settings, not on file length.

The model (``get_safe_processing_config``):

1. **Budget.** ``ceiling`` = the monitor's effective limit (host / cgroup / configured), narrowed by
   ``memory_limit_mb`` and by any enclosing ``memory_guard``. ``available_mb`` = what we may still
   grow by (the monitor's figure, and ``limit - our tree's RSS`` for an explicit limit).
   ``usable_mb`` = ``available_mb x (1 - HEADROOM_FRACTION)``: 20 % stays free for Python, page
   cache and model error.
2. **Profile.** Start from the pressure level's profile (LOW -> HIGH, MODERATE -> BALANCED,
   HIGH -> LOW, CRITICAL -> MINIMAL) and step to ``cheaper()`` profiles while
   ``predict_peak_mb(media, profile, operation)`` (resolution x bytes per pixel x frames held, see
   ``montage.ffmpeg.profiles``) exceeds ``usable_mb``.
3. **Mode.** The worse of the level's mode (LOW -> FULL_QUALITY ... CRITICAL -> SURVIVAL) and the
   chosen profile's mode (HIGH -> FULL_QUALITY ... MINIMAL -> SURVIVAL); SURVIVAL when even MINIMAL
   does not fit.
4. **Workers.** ``min(cores, usable_mb // per-job peak)``, at least 1; at most half the cores in
   MEMORY_OPTIMIZED and 1 in SURVIVAL. ``estimated_peak_mb`` = workers x per-job peak.
5. **Chunking.** On when the file is large (> 500 MiB, the spec's threshold, or longer than 20
   min), when pressure is HIGH or worse, or in SURVIVAL. Chunks last 300/120/60/30 s by mode, and
   ``chunk_size_mb`` (input bytes per chunk, from the bit rate) is capped at 256/128/64/32 MiB and
   at a quarter of the usable budget by shortening the chunk.

Every choice is explained, with its numbers, in ``ProcessingConfig.reasons``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, KeysView
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from montage.ffmpeg.profiles import (
    FFmpegMemoryProfile,
    cheaper,
    cpu_count,
    predict_peak_mb,
    profile_for_level,
    profile_settings,
)
from montage.memory.pressure import MemoryPressureLevel

logger = logging.getLogger(__name__)

MIB = 1048576
HEADROOM_FRACTION = 0.2
LARGE_FILE_MB = 500.0
LONG_DURATION_S = 1200.0
MIN_CHUNK_S = 2.0
MIN_CHUNK_MB = 8.0

# operation names people pass (the spec uses "custom") -> the model's operations
_OPERATION_ALIASES = {
    "encode": "encode",
    "transcode": "encode",
    "custom": "encode",
    "render": "encode",
    "decode": "decode",
    "copy": "copy",
    "remux": "copy",
    "concat": "copy",
    "analyze": "analyze",
    "analysis": "analyze",
}


class ProcessingMode(str, Enum):
    """How much quality we trade for memory, best first."""

    FULL_QUALITY = "full_quality"
    BALANCED = "balanced"
    MEMORY_OPTIMIZED = "memory_optimized"
    SURVIVAL = "survival"

    @property
    def rank(self) -> int:
        return list(ProcessingMode).index(self)


_MODE_FOR_LEVEL = {
    "low": ProcessingMode.FULL_QUALITY,
    "moderate": ProcessingMode.BALANCED,
    "high": ProcessingMode.MEMORY_OPTIMIZED,
    "critical": ProcessingMode.SURVIVAL,
}
_MODE_FOR_PROFILE = {
    FFmpegMemoryProfile.HIGH: ProcessingMode.FULL_QUALITY,
    FFmpegMemoryProfile.BALANCED: ProcessingMode.BALANCED,
    FFmpegMemoryProfile.LOW: ProcessingMode.MEMORY_OPTIMIZED,
    FFmpegMemoryProfile.MINIMAL: ProcessingMode.SURVIVAL,
}
_CHUNK_S = {
    ProcessingMode.FULL_QUALITY: 300.0,
    ProcessingMode.BALANCED: 120.0,
    ProcessingMode.MEMORY_OPTIMIZED: 60.0,
    ProcessingMode.SURVIVAL: 30.0,
}
_CHUNK_CAP_MB = {
    ProcessingMode.FULL_QUALITY: 256.0,
    ProcessingMode.BALANCED: 128.0,
    ProcessingMode.MEMORY_OPTIMIZED: 64.0,
    ProcessingMode.SURVIVAL: 32.0,
}


@dataclass
class ProcessingConfig:
    """A plan for one job; also reads like the spec's dict (``config['max_workers']``)."""

    mode: ProcessingMode
    max_workers: int
    chunk_size_mb: float
    chunk_duration_s: float
    quality_preset: str
    ffmpeg_profile: FFmpegMemoryProfile
    use_chunking: bool
    estimated_peak_mb: float
    memory_limit_mb: float
    available_mb: float
    per_job_peak_mb: float = 0.0
    pressure_level: str = "low"
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (enums as their string values)."""
        return {
            "mode": self.mode.value,
            "max_workers": self.max_workers,
            "chunk_size_mb": self.chunk_size_mb,
            "chunk_duration_s": self.chunk_duration_s,
            "quality_preset": self.quality_preset,
            "ffmpeg_profile": self.ffmpeg_profile.value,
            "use_chunking": self.use_chunking,
            "estimated_peak_mb": self.estimated_peak_mb,
            "per_job_peak_mb": self.per_job_peak_mb,
            "memory_limit_mb": self.memory_limit_mb,
            "available_mb": self.available_mb,
            "pressure_level": self.pressure_level,
            "reasons": dict(self.reasons),
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def keys(self) -> KeysView[str]:
        return self.to_dict().keys()

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self.to_dict().items())


@dataclass(frozen=True)
class MediaFacts:
    """What the plan needs from a probe (kept small so plans can be made without a file)."""

    width: int | None = None
    height: int | None = None
    pix_fmt: str | None = None
    codec: str | None = None
    duration_s: float = 0.0
    size_bytes: int = 0
    bit_rate: int | None = None

    @property
    def resolution(self) -> tuple[int, int] | None:
        if self.width and self.height:
            return (self.width, self.height)
        return None


def media_facts(path: str | Path) -> MediaFacts:
    """Probe ``path`` (PyAV, demux only) for the facts the model uses."""
    from montage.ffmpeg.probe import probe

    media = probe(path)
    video = media.video
    return MediaFacts(
        width=video.width if video else None,
        height=video.height if video else None,
        pix_fmt=video.pix_fmt if video else None,
        codec=video.codec if video else None,
        duration_s=media.duration_s,
        size_bytes=media.size_bytes,
        bit_rate=media.bit_rate,
    )


def _model_operation(operation: str) -> str:
    model_op = _OPERATION_ALIASES.get(operation.lower())
    if model_op is None:
        logger.debug("operation %r unknown to the model: estimating it as an encode", operation)
        return "encode"
    return model_op


def _predict(facts: MediaFacts | None, profile: FFmpegMemoryProfile, operation: str) -> float:
    if facts is None:
        return predict_peak_mb(None, profile, _model_operation(operation))
    return predict_peak_mb(
        facts.resolution,
        profile,
        _model_operation(operation),
        pix_fmt=facts.pix_fmt or "yuv420p",
    )


def estimate_processing_memory(
    path: str | Path, operation: str = "encode", *, profile: FFmpegMemoryProfile | None = None
) -> float:
    """Predicted peak MiB of one ffmpeg job on ``path``: from resolution, pixel format and
    operation (never file size, which says nothing about frame buffers).

    ``profile`` defaults to the one the current pressure level would choose. Unknown operation
    names (the spec's ``"custom"``) are estimated as an encode, the most expensive common case.
    """
    if profile is None:
        from montage.memory.monitor import get_memory_monitor

        profile = profile_for_level(get_memory_monitor().level)
    return _predict(media_facts(path), profile, operation)


def _pick_profile(
    level: MemoryPressureLevel, facts: MediaFacts | None, operation: str, usable_mb: float
) -> tuple[FFmpegMemoryProfile, float, bool, list[str]]:
    """Cheapest-needed profile: start from the level's and step down until it fits."""
    profile = profile_for_level(level)
    peak = _predict(facts, profile, operation)
    tried = [f"{profile.value} {peak:.0f} MiB"]
    while peak > usable_mb:
        next_profile = cheaper(profile)
        if next_profile is None:
            return profile, peak, False, tried
        profile = next_profile
        peak = _predict(facts, profile, operation)
        tried.append(f"{profile.value} {peak:.0f} MiB")
    return profile, peak, True, tried


def _workers(mode: ProcessingMode, cores: int, usable_mb: float, per_job_mb: float) -> int:
    by_memory = int(usable_mb // per_job_mb) if per_job_mb > 0 else cores
    workers = max(1, min(cores, by_memory))
    if mode is ProcessingMode.MEMORY_OPTIMIZED:
        workers = min(workers, max(1, cores // 2))
    if mode is ProcessingMode.SURVIVAL:
        workers = 1
    return workers


def _chunking(
    mode: ProcessingMode, level: MemoryPressureLevel, facts: MediaFacts | None, fits: bool
) -> tuple[bool, str]:
    size_mb = facts.size_bytes / MIB if facts else 0.0
    duration_s = facts.duration_s if facts else 0.0
    if size_mb > LARGE_FILE_MB:
        return True, f"file is {size_mb:.0f} MiB > {LARGE_FILE_MB:.0f} MiB"
    if duration_s > LONG_DURATION_S:
        return True, f"file lasts {duration_s:.0f} s > {LONG_DURATION_S:.0f} s"
    if level >= MemoryPressureLevel.HIGH:
        return True, f"pressure is {level.value}"
    if not fits or mode is ProcessingMode.SURVIVAL:
        return True, "survival mode: smallest pieces of work"
    if facts is None:
        return False, "no file given and pressure is below high"
    return False, f"file is small ({size_mb:.1f} MiB, {duration_s:.1f} s) and pressure is low"


def _chunk_size(
    mode: ProcessingMode, facts: MediaFacts | None, usable_mb: float
) -> tuple[float, float, str]:
    duration_s = _CHUNK_S[mode]
    cap_mb = max(MIN_CHUNK_MB, min(_CHUNK_CAP_MB[mode], usable_mb / 4))
    bit_rate = facts.bit_rate if facts else None
    if not bit_rate:
        return (
            cap_mb,
            duration_s,
            f"{mode.value} chunks of {duration_s:.0f} s, {cap_mb:.0f} MiB cap",
        )
    size_mb = bit_rate * duration_s / 8 / MIB
    if size_mb > cap_mb:
        duration_s = max(MIN_CHUNK_S, cap_mb * MIB * 8 / bit_rate)
        size_mb = bit_rate * duration_s / 8 / MIB
    why = (
        f"{duration_s:.0f} s at {bit_rate / 1000:.0f} kb/s = {size_mb:.1f} MiB "
        f"(cap {cap_mb:.0f} MiB for {mode.value})"
    )
    return size_mb, duration_s, why


def plan_processing(
    *,
    available_mb: float,
    memory_limit_mb: float,
    level: MemoryPressureLevel,
    cores: int,
    facts: MediaFacts | None = None,
    operation: str = "encode",
) -> ProcessingConfig:
    """The pure part of the model: budget, level, cores and media facts in, a plan out."""
    usable_mb = max(0.0, available_mb * (1 - HEADROOM_FRACTION))
    profile, per_job_mb, fits, tried = _pick_profile(level, facts, operation, usable_mb)
    mode = max(_MODE_FOR_LEVEL[level.value], _MODE_FOR_PROFILE[profile], key=lambda m: m.rank)
    if not fits:
        mode = ProcessingMode.SURVIVAL
    workers = _workers(mode, max(1, cores), usable_mb, per_job_mb)
    use_chunking, chunk_why = _chunking(mode, level, facts, fits)
    chunk_mb, chunk_s, size_why = _chunk_size(mode, facts, usable_mb)
    preset = profile_settings(profile).preset
    fit_word = "fits" if fits else "does NOT fit even at minimal"
    reasons = {
        "memory": (
            f"ceiling {memory_limit_mb:.0f} MiB, available {available_mb:.0f} MiB, usable "
            f"{usable_mb:.0f} MiB after {HEADROOM_FRACTION:.0%} headroom"
        ),
        "ffmpeg_profile": (
            f"level {level.value} suggests {profile_for_level(level).value}; tried "
            f"{', '.join(tried)}: {profile.value} {fit_word} in {usable_mb:.0f} MiB"
        ),
        "mode": f"worse of level {level.value} and profile {profile.value}: {mode.value}",
        "max_workers": (
            f"min({cores} cores, {usable_mb:.0f} // {per_job_mb:.0f} MiB per job) "
            f"under {mode.value} = {workers}"
        ),
        "use_chunking": ("on: " if use_chunking else "off: ") + chunk_why,
        "chunk_size_mb": size_why,
        "quality_preset": (
            f"slowest x264/x265 preset of the {profile.value} profile: {preset}; `run` and "
            "`chunked` lower a slower one to it, the editor (default ultrafast) only below "
            "the high profile"
        ),
    }
    return ProcessingConfig(
        mode=mode,
        max_workers=workers,
        chunk_size_mb=round(chunk_mb, 2),
        chunk_duration_s=round(chunk_s, 2),
        quality_preset=preset,
        ffmpeg_profile=profile,
        use_chunking=use_chunking,
        estimated_peak_mb=round(round(per_job_mb, 1) * workers, 1),
        memory_limit_mb=round(float(memory_limit_mb), 1),
        available_mb=round(float(available_mb), 1),
        per_job_peak_mb=round(per_job_mb, 1),
        pressure_level=level.value,
        reasons=reasons,
    )


def _measure_budget(memory_limit_mb: float | None) -> tuple[float, float, MemoryPressureLevel]:
    """(ceiling MiB, available MiB, level) now, narrowed by an explicit limit and guards."""
    from montage.memory.monitor import current_budget_mb, get_memory_monitor
    from montage.memory.pressure import classify

    stats = get_memory_monitor().get_current_stats()
    limit_mb, available_mb, level = stats.total_mb, stats.available_mb, stats.pressure_level
    narrower = [b for b in (memory_limit_mb, current_budget_mb()) if b is not None]
    if narrower:
        job_limit_mb = min(narrower)
        if job_limit_mb <= 0:
            from montage.errors import ConfigError

            raise ConfigError(f"memory_limit_mb must be > 0, got {job_limit_mb!r}")
        limit_mb = min(limit_mb, job_limit_mb)
        available_mb = min(available_mb, max(0.0, job_limit_mb - stats.tree_memory_mb))
        job_level = classify(100.0 * stats.tree_memory_mb / job_limit_mb)
        level = max(level, job_level, key=lambda lv: lv.rank)
    return limit_mb, available_mb, level


def get_safe_processing_config(
    video_path: str | Path | None = None,
    *,
    memory_limit_mb: float | None = None,
    operation: str = "encode",
) -> ProcessingConfig:
    """Workers, chunking, profile and preset that fit the memory we have now (see module doc)."""
    limit_mb, available_mb, level = _measure_budget(memory_limit_mb)
    facts = media_facts(video_path) if video_path is not None else None
    config = plan_processing(
        available_mb=available_mb,
        memory_limit_mb=limit_mb,
        level=level,
        cores=cpu_count(),
        facts=facts,
        operation=operation,
    )
    if facts is not None:
        config.reasons["media"] = (
            f"{facts.width}x{facts.height} {facts.pix_fmt} {facts.codec}, "
            f"{facts.duration_s:.1f} s, {facts.size_bytes / MIB:.1f} MiB"
        )
    return config
