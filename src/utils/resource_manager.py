"""The spec's import path ``src.utils.resource_manager``: thin aliases of ``montage.resources``.

``memory_constrained_operation`` lives in ``montage.memory.budget``; the spec imports it from
here, so it is re-exported as the same object.
"""

from __future__ import annotations

from montage.adaptive import estimate_processing_memory
from montage.memory.budget import memory_constrained_operation
from montage.resources import (
    cleanup_all,
    get_resource_status,
    install_signal_handlers,
    managed_opencv_capture,
    managed_temp_directory,
    managed_tempfile,
    montage_temp_root,
    register_cleanup,
    sweep_stale_temp_dirs,
    unregister_cleanup,
)

__all__ = [
    "cleanup_all",
    "estimate_processing_memory",
    "get_resource_status",
    "install_signal_handlers",
    "managed_opencv_capture",
    "managed_temp_directory",
    "managed_tempfile",
    "memory_constrained_operation",
    "montage_temp_root",
    "register_cleanup",
    "sweep_stale_temp_dirs",
    "unregister_cleanup",
]
