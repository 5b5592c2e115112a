"""Hatchling build hook: compile montage/memory/_native_sampler.c, or go on without it.

The native sampler (montage.memory.native) runs the memory monitor's steady 10 Hz tick in a C
thread. It is optional: without a C compiler, Python headers or Linux, this hook logs a warning
and the package installs as pure Python (the monitor then samples in Python, as before). The
extension is compiled with the building interpreter's own sysconfig (CC, CFLAGS for shared
objects, include dir, LDSHARED, EXT_SUFFIX), no setuptools involved, into the source tree next to
the .c file: an editable install imports it from there, a wheel gets it as an artifact (the .so
is gitignored) and is then tagged for this interpreter and platform instead of py3-none-any.
``MONTAGE_BUILD_NATIVE=0`` skips the compilation.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("montage") / "memory" / "_native_sampler.c"


def _target(root: Path) -> Path:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return (root / SOURCE).with_name("_native_sampler" + suffix)


def _compile(root: Path) -> Path:
    """Build the extension next to its source; the path of the .so. Raises on any failure."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"the native sampler is Linux-only (platform {sys.platform})")
    source = root / SOURCE
    target = _target(root)
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    ldshared = shlex.split(sysconfig.get_config_var("LDSHARED") or f"{cc[0]} -shared")
    cflags = shlex.split(sysconfig.get_config_var("CCSHARED") or "-fPIC")
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "_native_sampler.o"
        partial = Path(tmp) / target.name
        compile_cmd = [*cc, *cflags, "-O2", "-std=gnu11", "-Wall", "-pthread", f"-I{include}"]
        compile_cmd += ["-c", str(source), "-o", str(obj)]
        subprocess.run(compile_cmd, check=True, capture_output=True, text=True)
        link_cmd = [*ldshared, "-pthread", str(obj), "-o", str(partial)]
        subprocess.run(link_cmd, check=True, capture_output=True, text=True)
        os.replace(partial, target)  # never leave a half-written .so to import
    return target


class NativeSamplerHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("MONTAGE_BUILD_NATIVE", "1") == "0":
            self.app.display_info("montage: MONTAGE_BUILD_NATIVE=0, native sampler not built")
            return
        root = Path(self.root)
        try:
            target = _compile(root)
        except Exception as error:  # a missing compiler or header must not fail the install
            _target(root).unlink(missing_ok=True)  # never import a .so older than its source
            detail = getattr(error, "stderr", None) or error
            self.app.display_warning(
                "montage: the native memory sampler was not built, the pure-Python sampler "
                f"will be used ({detail})"
            )
            return
        relative = target.relative_to(root).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # the editable install imports it from the source tree
            build_data["force_include"][str(target)] = relative
        self.app.display_info(f"montage: built {relative}")
