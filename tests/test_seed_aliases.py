"""The spec's import paths (src.utils.*) are the montage objects, and its examples run."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_MODULES = (
    "montage.memory.monitor",
    "montage.memory.guard",
    "montage.memory.pressure",
    "montage.memory.budget",
    "montage.memory.limits",
    "montage.resources",
    "montage.adaptive",
    "montage.runtime",
)
SPEC_NAMES = {
    "src.utils.memory_manager": (
        "get_memory_monitor", "memory_guard", "MemoryMonitor", "MemoryStats",
        "MemoryPressureLevel",
    ),
    "src.utils.resource_manager": (
        "managed_tempfile", "managed_temp_directory", "managed_opencv_capture",
        "memory_constrained_operation",
    ),
    "src.utils.memory_init": (
        "setup_memory_management", "get_memory_status", "force_memory_cleanup",
        "get_safe_processing_config", "is_memory_management_available",
        "estimate_processing_memory",
    ),
}  # fmt: skip


def _defining_module(obj: object) -> ModuleType:
    """The montage module whose namespace holds ``obj`` under its own name."""
    name = getattr(obj, "__name__", "")
    for module_name in REAL_MODULES:
        module = importlib.import_module(module_name)
        if getattr(module, name, None) is obj and getattr(obj, "__module__", "") == module_name:
            return module
    raise AssertionError(f"{obj!r} is not defined in a montage module")


@pytest.mark.parametrize("alias_name", sorted(SPEC_NAMES))
def test_alias_module_exports_the_spec_names(alias_name: str) -> None:
    alias = importlib.import_module(alias_name)
    assert set(SPEC_NAMES[alias_name]) <= set(alias.__all__)
    for name in alias.__all__:
        obj = getattr(alias, name)
        real = _defining_module(obj)
        assert getattr(real, obj.__name__) is obj, f"{alias_name}.{name} is a copy"


def test_key_aliases_are_identical_objects() -> None:
    from montage import adaptive, resources, runtime
    from montage.memory import budget, monitor, pressure
    from src.utils import memory_init, memory_manager, resource_manager

    assert memory_manager.get_memory_monitor is monitor.get_memory_monitor
    assert memory_manager.get_memory_monitor() is monitor.get_memory_monitor()
    assert memory_manager.MemoryPressureLevel is pressure.MemoryPressureLevel
    assert resource_manager.managed_tempfile is resources.managed_tempfile
    assert resource_manager.memory_constrained_operation is budget.memory_constrained_operation
    assert memory_init.setup_memory_management is runtime.setup_memory_management
    assert memory_init.get_safe_processing_config is adaptive.get_safe_processing_config
    assert memory_init.estimate_processing_memory is adaptive.estimate_processing_memory


def test_importing_the_aliases_starts_nothing() -> None:
    code = textwrap.dedent(
        """
        import signal, sys, threading
        before = signal.getsignal(signal.SIGTERM)
        import src.utils.memory_init, src.utils.memory_manager, src.utils.resource_manager
        heavy = [m for m in ("av", "numpy", "matplotlib", "cv2", "prometheus_client")
                 if m in sys.modules]
        assert not heavy, heavy
        assert threading.active_count() == 1, threading.enumerate()
        assert signal.getsignal(signal.SIGTERM) is before
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "ok", out.stderr


SPEC_BLOCKS = textwrap.dedent(
    """
    from src.utils.memory_init import setup_memory_management

    success = setup_memory_management()
    if not success:
        print("Warning: Memory management not available")

    from src.utils.memory_init import get_safe_processing_config

    config = get_safe_processing_config(VIDEO)
    print(f"Recommended workers: {config['max_workers']}")
    print(f"Chunk size: {config['chunk_size_mb']}MB")
    print(f"Quality preset: {config['quality_preset']}")

    from src.utils.memory_init import get_memory_status

    status = get_memory_status()
    print("Memory Status:", status['memory'])
    print("Active Resources:", status['resources'])
    print("FFmpeg Processes:", status['ffmpeg'])

    from src.utils.memory_init import is_memory_management_available
    print(f"Available: {is_memory_management_available()}")

    from src.utils.memory_init import force_memory_cleanup
    force_memory_cleanup()
    print("done", success)
    """
)


def test_spec_memory_init_examples_run_as_written(clip: Path) -> None:
    code = f"VIDEO = {str(clip)!r}\n" + SPEC_BLOCKS
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stdout
    assert "Recommended workers: " in out.stdout and "Quality preset: " in out.stdout
    assert "Memory Status: {" in out.stdout and "Available: True" in out.stdout
    assert out.stdout.rstrip().endswith("done True")
