"""The spec's import path ``src.utils.memory_manager``: thin aliases of ``montage.memory``.

Every name here *is* the montage object (``is``, not a copy), so code written against the spec
and code written against ``montage`` share one monitor, one budget and one set of levels.
"""

from __future__ import annotations

from montage.memory.budget import MemoryBudget, get_memory_budget, memory_constrained_operation
from montage.memory.limits import MemoryLimit, find_memory_limit, parse_memory_size
from montage.memory.monitor import (
    MemoryGuard,
    MemoryMonitor,
    MemoryStats,
    ProcessInfo,
    current_budget_mb,
    get_memory_monitor,
    memory_guard,
)
from montage.memory.pressure import MemoryPressureLevel, PressureThresholds

__all__ = [
    "MemoryBudget",
    "MemoryGuard",
    "MemoryLimit",
    "MemoryMonitor",
    "MemoryPressureLevel",
    "MemoryStats",
    "PressureThresholds",
    "ProcessInfo",
    "current_budget_mb",
    "find_memory_limit",
    "get_memory_budget",
    "get_memory_monitor",
    "memory_constrained_operation",
    "memory_guard",
    "parse_memory_size",
]
