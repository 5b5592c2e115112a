"""The spec's ``memory_init``: the one place that starts things.

Why one entry point: importing Montage must start nothing (no threads, no signal handlers), yet an
application wants one call at startup that turns everything on. ``setup_memory_management()``
configures the monitor's limit, starts the sampler, sweeps temp folders left by dead processes,
installs the cleanup signal handlers (main thread only), lets the ffmpeg manager respond to
pressure and, on request, serves Prometheus metrics. Every step is idempotent and the whole call
is serialised by a lock, so calling it twice (or from two threads) is harmless.
"""

from __future__ import annotations

import gc
import importlib
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from montage import resources
from montage.adaptive import estimate_processing_memory, get_safe_processing_config

if TYPE_CHECKING:
    from montage.memory.monitor import MemoryMonitor
    from montage.metrics import MetricsServer

logger = logging.getLogger(__name__)

MIB = 1048576

__all__ = [
    "estimate_processing_memory",
    "force_memory_cleanup",
    "get_memory_status",
    "get_safe_processing_config",
    "is_memory_management_available",
    "setup_memory_management",
    "shutdown_memory_management",
]


@dataclass
class _RuntimeState:
    initialized: bool = False
    memory_limit: str | int | None = None
    signal_handlers: bool = False
    pressure_responses: bool = False
    metrics: MetricsServer | None = None


_lock = threading.RLock()
_state = _RuntimeState()


def _monitor() -> MemoryMonitor:
    from montage.memory.monitor import get_memory_monitor

    return get_memory_monitor()


def _configure_monitor(memory_limit: str | int | None, interval_s: float) -> MemoryMonitor:
    """Apply limit and interval; reading ``limit`` validates it now (ConfigError on nonsense)."""
    from montage.memory.limits import find_memory_limit

    monitor = _monitor()
    if memory_limit is not None:  # validate first so a bad value leaves the monitor as it was
        find_memory_limit(monitor.root, configured=memory_limit)
    monitor.configure(memory_limit=memory_limit, interval_s=interval_s)
    _ = monitor.limit
    return monitor


def _enable_pressure_responses() -> bool:
    """Ask the ffmpeg manager to react to pressure, if the ffmpeg layer provides it."""
    try:  # looked up by name: the ffmpeg layer is optional for the memory core
        manager_module = importlib.import_module("montage.ffmpeg.manager")
    except ImportError as exc:
        logger.info("ffmpeg pressure responses unavailable: %s", exc)
        return False
    manager = manager_module.get_ffmpeg_memory_manager()
    enable = getattr(manager, "enable_pressure_responses", None)
    if enable is None:
        logger.info("ffmpeg manager has no pressure responses")
        return False
    enable()
    return True


def _start_metrics(port: int, addr: str, monitor: MemoryMonitor) -> None:
    if _state.metrics is not None:
        if port not in (0, _state.metrics.port):
            logger.warning("metrics already served on port %d", _state.metrics.port)
        return
    try:
        from montage.metrics import start_metrics_server

        _state.metrics = start_metrics_server(port, monitor, addr=addr)
    except (ImportError, OSError) as exc:
        logger.warning("metrics not started: %s", exc)


def _sweep() -> None:
    try:
        resources.sweep_stale_temp_dirs()
    except OSError as exc:  # never essential
        logger.warning("stale temp folder sweep failed: %s", exc)


def setup_memory_management(
    memory_limit: str | int | None = None,
    *,
    start_monitor: bool = True,
    interval_s: float = 0.1,
    install_signal_handlers: bool = True,
    enable_pressure_responses: bool = True,
    metrics_port: int | None = None,
    metrics_addr: str = "127.0.0.1",
) -> bool:
    """Turn memory management on; True when it works, False (with a logged reason) if not.

    ``memory_limit`` ("2G", "1536M", "60%", bytes) is the configured budget; a malformed value
    raises ConfigError, because that is a mistake to fix rather than an environment to survive.
    """
    with _lock:
        monitor = _configure_monitor(memory_limit, interval_s)
        try:
            monitor.get_current_stats()
        except Exception as exc:  # memory cannot be read here: say so, do not crash the app
            logger.warning("memory management unavailable: cannot sample memory: %s", exc)
            return False
        if start_monitor:
            monitor.start()
        if not _state.initialized:
            _sweep()
        if install_signal_handlers:
            _state.signal_handlers = resources.install_signal_handlers() or _state.signal_handlers
        if enable_pressure_responses and not _state.pressure_responses:
            _state.pressure_responses = _enable_pressure_responses()
        if metrics_port is not None:
            _start_metrics(metrics_port, metrics_addr, monitor)
        if memory_limit is not None:
            _state.memory_limit = memory_limit
        _state.initialized = True
        return True


def shutdown_memory_management() -> None:
    """Stop what setup started (sampler, metrics, handlers); for tests and embedding apps."""
    global _state
    with _lock:
        _monitor().stop()
        if _state.metrics is not None:
            _state.metrics.stop()
        if _state.signal_handlers:
            resources.uninstall_signal_handlers()
        _state = _RuntimeState()


def is_memory_management_available() -> bool:
    """Whether memory can be read here (ceiling and usage); independent of setup."""
    try:
        _monitor().get_current_stats()
    except Exception as exc:
        logger.info("memory management unavailable: %s", exc)
        return False
    return True


def _ffmpeg_status(monitor: MemoryMonitor) -> dict[str, Any]:
    processes = monitor.get_ffmpeg_processes()
    return {
        "active_processes": len(processes),
        "total_memory_mb": round(sum(p.memory_mb for p in processes), 1),
        "processes": [
            {
                "pid": p.pid,
                "name": p.name,
                "memory_mb": round(p.memory_mb, 1),
                "peak_memory_mb": round(p.peak_memory_mb, 1),
                "started_at": p.started_at,
            }
            for p in processes
        ],
    }


def _config_status(monitor: MemoryMonitor) -> dict[str, Any]:
    from montage.memory import native

    limit = monitor.limit
    metrics = _state.metrics
    return {
        "initialized": _state.initialized,
        "monitor_running": monitor.running,
        "sampler": monitor.sampler_kind,
        "sampler_reason": native.python_reason() if monitor.sampler_kind == "python" else None,
        "interval_s": monitor.interval_s,
        "limit_mb": round(limit.limit_mb, 1),
        "limit_source": limit.source,
        "configured_limit": _state.memory_limit,
        "signal_handlers": resources.signal_handlers_installed(),
        "pressure_responses": _state.pressure_responses,
        "metrics_url": metrics.url if metrics is not None else None,
        "processing": get_safe_processing_config().to_dict(),
    }


def get_memory_status() -> dict[str, Any]:
    """``{'memory', 'resources', 'ffmpeg', 'config'}``; an ``'error'`` key instead of raising."""
    try:
        monitor = _monitor()
        return {
            "memory": monitor.get_current_stats().to_dict(),
            "resources": resources.get_resource_status(),
            "ffmpeg": _ffmpeg_status(monitor),
            "config": _config_status(monitor),
        }
    except Exception as exc:
        logger.warning("memory status failed: %s", exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def force_memory_cleanup() -> dict[str, Any]:
    """Free what can be freed without breaking running work; returns what it did.

    Runs a full garbage collection, returns freed heap to the OS, forgets registry entries whose
    files are already gone and drops dead tracked processes. It does NOT delete temp files of
    blocks still running (that would break the job that owns them); those go when their block
    ends, at exit, or on SIGTERM/SIGINT.
    """
    monitor = _monitor()
    before = monitor.get_current_stats()
    collected = gc.collect()
    trimmed = resources.release_freed_memory()
    forgotten = resources.forget_missing()
    live = len(monitor.get_tracked_processes())
    after = monitor.get_current_stats()
    summary = {
        "gc_collected": collected,
        "malloc_trim": trimmed,
        "registry_entries_forgotten": forgotten,
        "tracked_processes_alive": live,
        "process_memory_before_mb": round(before.process_memory_mb, 1),
        "process_memory_after_mb": round(after.process_memory_mb, 1),
        "freed_mb": round(max(0.0, before.process_memory_mb - after.process_memory_mb), 1),
        "pressure_level": after.pressure_level.value,
    }
    logger.info("forced memory cleanup: %s", summary)
    return summary
