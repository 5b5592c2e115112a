"""The spec's import path ``src.utils.memory_init``: thin aliases of ``montage.runtime``.

Importing this starts nothing; ``setup_memory_management()`` does.
"""

from __future__ import annotations

from montage.adaptive import ProcessingConfig, ProcessingMode
from montage.runtime import (
    estimate_processing_memory,
    force_memory_cleanup,
    get_memory_status,
    get_safe_processing_config,
    is_memory_management_available,
    setup_memory_management,
    shutdown_memory_management,
)

__all__ = [
    "ProcessingConfig",
    "ProcessingMode",
    "estimate_processing_memory",
    "force_memory_cleanup",
    "get_memory_status",
    "get_safe_processing_config",
    "is_memory_management_available",
    "setup_memory_management",
    "shutdown_memory_management",
]
