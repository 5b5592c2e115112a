"""Prometheus metrics for the memory monitor (optional extra ``metrics``).

Why scrape-time collection: a gauge updated from the sampler would be as stale as the last tick
and would cost work even when nobody scrapes. The collector below reads the monitor's newest
sample (taking one if the sampler is not running or its sample is older than two intervals) and
the tracked ffmpeg processes when Prometheus asks, so values are fresh and idle cost is zero.

Each server has its own ``CollectorRegistry``, so starting, stopping and restarting (tests,
``shutdown_memory_management``) never collides with the global default registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from montage.memory.monitor import MemoryMonitor, MemoryStats

logger = logging.getLogger(__name__)

METRICS_EXTRA_HINT = "pip install 'montage-video[metrics]'"
MIB = 1048576
_LEVEL_RANK = {"low": 0, "moderate": 1, "high": 2, "critical": 3}


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            f"Prometheus metrics need prometheus_client, which is not installed: "
            f"{METRICS_EXTRA_HINT}"
        ) from exc
    return prometheus_client


class MonitorCollector:
    """Builds the montage_* gauges from a monitor at scrape time."""

    def __init__(self, monitor: MemoryMonitor) -> None:
        self._monitor = monitor

    def _fresh_stats(self) -> MemoryStats:
        history = self._monitor.history() if self._monitor.running else []
        if history and time.time() - history[-1].timestamp <= 2 * self._monitor.interval_s:
            return history[-1]
        return self._monitor.get_current_stats()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        stats = self._fresh_stats()
        ffmpeg = self._monitor.get_ffmpeg_processes()
        level = stats.pressure_level.value
        values = [
            ("montage_memory_used_bytes", "Memory used in the ceiling's scope", stats.used_mb),
            ("montage_memory_limit_bytes", "Effective memory ceiling", stats.total_mb),
            ("montage_memory_available_bytes", "Memory we may still grow by", stats.available_mb),
            (
                "montage_tree_rss_bytes",
                "RSS of this process and its children",
                stats.tree_memory_mb,
            ),
            ("montage_ffmpeg_memory_bytes", "RSS of tracked ffmpeg trees", _sum_mb(ffmpeg)),
        ]
        for name, doc, mb in values:
            yield GaugeMetricFamily(name, doc, value=int(mb * MIB))
        yield GaugeMetricFamily(
            "montage_memory_pressure_level",
            "Pressure level: 0 low, 1 moderate, 2 high, 3 critical",
            value=_LEVEL_RANK.get(level, 0),
        )
        yield GaugeMetricFamily(
            "montage_ffmpeg_active_processes", "Live tracked ffmpeg processes", value=len(ffmpeg)
        )


def _sum_mb(processes: list[Any]) -> float:
    return float(sum(p.memory_mb for p in processes))


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``stop()`` closes the socket and joins the thread."""

    port: int
    addr: str
    _httpd: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.addr in ("0.0.0.0", "") else self.addr
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)


def start_metrics_server(
    port: int, monitor: MemoryMonitor | None = None, *, addr: str = "127.0.0.1"
) -> MetricsServer:
    """Serve the montage_* gauges on ``http://addr:port/metrics`` (port 0 picks a free port).

    Binds loopback by default; pass ``addr="0.0.0.0"`` to let a Prometheus outside the
    container scrape it. Raises ImportError naming the extra when prometheus_client is missing.
    """
    prometheus = _import_prometheus()
    if monitor is None:
        from montage.memory.monitor import get_memory_monitor

        monitor = get_memory_monitor()
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(monitor))
    httpd, thread = prometheus.start_http_server(port, addr=addr, registry=registry)
    actual_port = int(httpd.server_port)
    logger.info("Prometheus metrics on http://%s:%d/metrics", addr, actual_port)
    return MetricsServer(actual_port, addr, httpd, thread)
