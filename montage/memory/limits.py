"""Where is the memory ceiling? Host RAM, the cgroup limits above us, and the user's budget.

psutil reports the host's RAM even inside a container (psutil #2100), so a job in a 2 GiB
container on a 64 GiB host would think it had plenty until the kernel killed it. We read the
kernel's own limits instead: cgroup v2 ``memory.max``/``memory.high`` and cgroup v1
``memory.limit_in_bytes`` for our cgroup *and every ancestor* (a parent slice can be tighter
than the leaf), and take the minimum with MemTotal and a configured budget.

Every read goes through ``root`` so tests can point it at a fake ``/proc`` + ``/sys`` tree.
A malformed file is logged and skipped: a wrong guess about one file must never crash a job.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from montage.errors import ConfigError

__all__ = [
    "UNLIMITED_THRESHOLD_BYTES",
    "CgroupInfo",
    "MemoryLimit",
    "find_cgroup",
    "find_memory_limit",
    "parse_memory_size",
]

logger = logging.getLogger("montage.memory")

UNLIMITED_THRESHOLD_BYTES = 2**60
"""cgroup v1 reports "no limit" as a huge page-aligned number (~2**63): this big means none."""

ENV_VAR = "MONTAGE_MEMORY_LIMIT"
_MIB = 1024 * 1024

_UNIT_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "p": 1024**5,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(?:([kmgtp])i?b?|b)?\s*$", re.I)
_PERCENT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")


# --- sizes ------------------------------------------------------------------------------


def parse_memory_size(text: str | int | float, total_bytes: int | None = None) -> int:
    """Bytes from "2G", "1536M", "512MB", "1.5GiB", "800k", "1073741824" or "60%".

    Units are binary (G = GiB) because that is what cgroup and ``free`` use. A percentage is of
    ``total_bytes`` (the ceiling it narrows). Raises ``ConfigError`` naming the text on nonsense,
    on values <= 0 and on a percentage without a total, so a typo in an environment variable is
    reported rather than silently ignored.
    """
    if isinstance(text, bool):
        raise ConfigError(f"memory size {text!r} is not a size")
    if isinstance(text, (int, float)):
        return _positive_bytes(float(text), text)
    if not isinstance(text, str):
        raise ConfigError(f"memory size {text!r} is not a string or number")
    percent_match = _PERCENT_RE.match(text)
    if percent_match:
        if total_bytes is None or total_bytes <= 0:
            raise ConfigError(f"memory size {text!r} is a percentage, but no total is known")
        percent = float(percent_match.group(1))
        if percent > 100:
            raise ConfigError(f"memory size {text!r} is more than 100%")
        return _positive_bytes(total_bytes * percent / 100.0, text)
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(
            f"memory size {text!r} is not understood; use e.g. '2G', '1536M', '512MB' or '60%'"
        )
    number = float(match.group(1))
    factor = _UNIT_FACTORS[(match.group(2) or "").lower()]
    return _positive_bytes(number * factor, text)


def _positive_bytes(value: float, text: object) -> int:
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"memory size {text!r} must be a positive number of bytes")
    return int(value)


# --- finding our cgroup -----------------------------------------------------------------


@dataclass(frozen=True)
class CgroupInfo:
    """This process's memory cgroup: which version, its directory and the hierarchy's mount."""

    version: int
    path: Path
    mount: Path


@dataclass(frozen=True)
class _Mount:
    point: str  # mount point as the real machine sees it ("/sys/fs/cgroup/memory")
    fs_root: str  # the hierarchy path mounted there ("/" or "/docker/abc" without cgroupns)


def _under(root: Path, absolute: str) -> Path:
    """``absolute`` (a path on the real machine) inside the tree rooted at ``root``."""
    return root / absolute.lstrip("/")


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _parse_mountinfo(text: str) -> tuple[_Mount | None, _Mount | None]:
    """(v1 memory mount, v2 mount) from mountinfo text; either may be None."""
    v1: _Mount | None = None
    v2: _Mount | None = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 1:
            continue
        mount = _Mount(point=_unescape_mountinfo(fields[4]), fs_root=_unescape_mountinfo(fields[3]))
        super_opts = tail[2].split(",") if len(tail) >= 3 else []
        if tail[0] == "cgroup2" and v2 is None:
            v2 = mount
        elif tail[0] == "cgroup" and "memory" in super_opts and v1 is None:
            v1 = mount
    return v1, v2


def _find_mounts(root: Path, pid: str) -> tuple[_Mount | None, _Mount | None]:
    """The cgroup mounts, from mountinfo if present, else the conventional places."""
    for candidate in (root / "proc" / pid / "mountinfo", root / "proc" / "self" / "mountinfo"):
        text = _read_text(candidate)
        if text is not None:
            return _parse_mountinfo(text)
    v1 = _Mount("/sys/fs/cgroup/memory", "/")
    v2 = _Mount("/sys/fs/cgroup", "/")
    has_v1 = _under(root, v1.point).is_dir()
    has_v2 = (_under(root, v2.point) / "cgroup.controllers").is_file()
    return (v1 if has_v1 else None), (v2 if has_v2 else None)


def _parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """(v1 memory path, v2 path) from /proc/<pid>/cgroup text."""
    v1_path: str | None = None
    v2_path: str | None = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if hierarchy_id == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    return v1_path, v2_path


def _resolve_dir(root: Path, mount: _Mount, cgroup_path: str) -> Path:
    """The directory of ``cgroup_path`` in ``mount``; the mount root if it is not there.

    Without a cgroup namespace, a container sees the host's path ("/docker/abc") while the
    mount shows only its own subtree: strip the mounted subtree, and if the result still does
    not exist, the limit we can see is the mount root's.
    """
    mount_dir = _under(root, mount.point)
    relative = cgroup_path
    fs_root = mount.fs_root.rstrip("/")
    if fs_root and (relative == fs_root or relative.startswith(fs_root + "/")):
        relative = relative[len(fs_root) :]
    if ".." in relative.split("/"):
        return mount_dir  # moved outside our cgroup namespace: never read above the mount
    candidate = mount_dir / relative.lstrip("/")
    if relative.strip("/") and not candidate.is_dir():
        return mount_dir
    return candidate


def _v2_has_memory(mount_dir: Path) -> bool:
    """A hybrid host mounts a cgroup2 tree without the memory controller: that one is no use."""
    controllers = _read_text(mount_dir / "cgroup.controllers")
    if controllers is None:
        return (mount_dir / "memory.current").exists() or (mount_dir / "memory.max").exists()
    return "memory" in controllers.split()


def find_cgroup(root: str | Path = "/", pid: str = "self") -> CgroupInfo | None:
    """This process's memory cgroup, or None where there is none we can read (bare host)."""
    root_path = Path(root)
    text = _read_text(root_path / "proc" / pid / "cgroup")
    if text is None:
        return None
    v1_path, v2_path = _parse_proc_cgroup(text)
    v1_mount, v2_mount = _find_mounts(root_path, pid)
    if v2_path is not None and v2_mount is not None:
        mount_dir = _under(root_path, v2_mount.point)
        if _v2_has_memory(mount_dir):
            return CgroupInfo(2, _resolve_dir(root_path, v2_mount, v2_path), mount_dir)
    if v1_path is not None and v1_mount is not None:
        mount_dir = _under(root_path, v1_mount.point)
        if mount_dir.is_dir():
            return CgroupInfo(1, _resolve_dir(root_path, v1_mount, v1_path), mount_dir)
    return None


# --- reading limits ---------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryLimit:
    """The effective ceiling and where each candidate came from (so a user can see why)."""

    limit_bytes: int
    source: str
    host_total_bytes: int
    cgroup_limit_bytes: int | None
    cgroup_source: str | None
    configured_bytes: int | None
    cgroup: CgroupInfo | None
    cgroup_limit_dir: Path | None = None
    """Directory (under root) of the cgroup whose limit is tightest: usage is read there."""

    @property
    def limit_mb(self) -> float:
        return self.limit_bytes / _MIB


def _display_path(root: Path, path: Path) -> str:
    """``path`` as the real machine would name it (the fake root stripped)."""
    try:
        return "/" + path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _read_limit_file(path: Path) -> int | None:
    """A limit file's value in bytes; None when absent, unlimited or malformed (logged)."""
    text = _read_text(path)
    if text is None:
        return None
    value = text.strip()
    if value == "max":
        return None
    try:
        number = int(value)
    except ValueError:
        logger.warning("ignoring malformed memory limit file %s: %r", path, value[:80])
        return None
    if number < 0:
        logger.warning("ignoring negative memory limit in %s: %d", path, number)
        return None
    if number >= UNLIMITED_THRESHOLD_BYTES:
        return None
    return number


def _ancestors(cgroup: CgroupInfo) -> list[Path]:
    """Our cgroup directory and each parent up to and including the mount root."""
    dirs = [cgroup.path]
    current = cgroup.path
    while current != cgroup.mount and cgroup.mount in current.parents:
        current = current.parent
        dirs.append(current)
    return dirs


def _tightest_cgroup_limit(root: Path, cgroup: CgroupInfo) -> tuple[int, str, Path] | None:
    """(bytes, source string, directory) of the smallest limit along the path, if any."""
    names = ("memory.max", "memory.high") if cgroup.version == 2 else ("memory.limit_in_bytes",)
    prefix = f"cgroup-v{cgroup.version}:"
    best: tuple[int, str, Path] | None = None
    for directory in _ancestors(cgroup):
        for name in names:
            value = _read_limit_file(directory / name)
            if value is not None and (best is None or value < best[0]):
                best = (value, prefix + _display_path(root, directory / name), directory)
    return best


def _meminfo_kib(text: str, key: str) -> int | None:
    match = re.search(rf"^{re.escape(key)}:\s+(\d+)\s*kB", text, re.M)
    return int(match.group(1)) if match else None


def read_host_total_bytes(root: str | Path = "/") -> int:
    """MemTotal from ``<root>/proc/meminfo``; the real machine's RAM if that is unreadable."""
    path = Path(root) / "proc" / "meminfo"
    text = _read_text(path)
    total_kib = _meminfo_kib(text, "MemTotal") if text is not None else None
    if total_kib is None or total_kib <= 0:
        fallback = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        logger.warning("no MemTotal in %s; using physical pages (%d bytes)", path, fallback)
        return int(fallback)
    return total_kib * 1024


def _configured(
    configured: str | int | None, env: Mapping[str, str] | None
) -> tuple[str | int | None, str]:
    """The configured budget and the name of where it came from."""
    if configured is not None:
        return configured, "configured:setup_memory_management"
    environ = os.environ if env is None else env
    value = environ.get(ENV_VAR)
    if value is not None and value.strip():
        return value, f"configured:{ENV_VAR}"
    return None, ""


def find_memory_limit(
    root: str | Path = "/",
    configured: str | int | None = None,
    env: Mapping[str, str] | None = None,
) -> MemoryLimit:
    """The effective ceiling: the minimum of host RAM, every cgroup limit above us and a budget.

    A percentage budget ("60%") is of the ceiling it narrows (host or cgroup, whichever is
    lower). A nonsense budget raises ``ConfigError``; malformed machine files are only logged.
    """
    root_path = Path(root)
    host_total = read_host_total_bytes(root_path)
    limit_bytes, source = host_total, "host:/proc/meminfo"
    cgroup = find_cgroup(root_path)
    found = _tightest_cgroup_limit(root_path, cgroup) if cgroup is not None else None
    if found is not None and found[0] < limit_bytes:
        limit_bytes, source = found[0], found[1]
    configured_value, configured_source = _configured(configured, env)
    configured_bytes: int | None = None
    if configured_value is not None:
        try:
            configured_bytes = parse_memory_size(configured_value, total_bytes=limit_bytes)
        except ConfigError as error:
            raise ConfigError(f"{configured_source.split(':', 1)[1]}: {error}") from error
        if configured_bytes < limit_bytes:
            limit_bytes, source = configured_bytes, configured_source
    return MemoryLimit(
        limit_bytes=limit_bytes,
        source=source,
        host_total_bytes=host_total,
        cgroup_limit_bytes=found[0] if found else None,
        cgroup_source=found[1] if found else None,
        configured_bytes=configured_bytes,
        cgroup=cgroup,
        cgroup_limit_dir=found[2] if found else None,
    )
