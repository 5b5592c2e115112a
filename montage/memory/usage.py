"""What is used against the ceiling, and how much of it is ours?

Used memory excludes reclaimable page cache, as the kernel counts it: reading a 50 GB video fills
the page cache, and counting that as "used" (Ray #35989) would make every long job look like an
emergency. So: cgroup v2 ``memory.current - inactive_file``, v1 ``usage_in_bytes -
total_inactive_file``, host ``MemTotal - MemAvailable``.

Usage is measured in the scope of the machine ceiling: the cgroup whose limit is tightest (it
counts every process under it, siblings included), else the host. A configured budget is *not*
a scope: other programs' memory must not count against the user's budget, so the monitor compares
our own process tree (``process_tree_memory``) with the budget, and ``MemoryUsage`` with the
machine ceiling (``MemoryUsage.ceiling_bytes``).

The monitor samples ten times a second, so ``UsageReader`` keeps its files open and re-reads them
with ``pread`` at offset 0: one system call per file, no open/close, no Python file objects.

Our process tree (``TreeMemory``, ``process_tree_memory``, ``rss_bytes``) lives in
``montage.memory.tree`` and its kept-open reader (``ProcessTreeReader``) in
``montage.memory.tree_reader``; both are re-exported here, where callers have always imported them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from montage.memory.limits import MemoryLimit
from montage.memory.tree import TreeMemory, process_tree_memory, rss_bytes
from montage.memory.tree_reader import ProcessTreeReader

__all__ = [
    "MemoryUsage",
    "ProcessTreeReader",
    "TreeMemory",
    "UsageReader",
    "UsageSample",
    "process_tree_memory",
    "read_usage",
    "rss_bytes",
]

logger = logging.getLogger("montage.memory")

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC


@dataclass(frozen=True)
class MemoryUsage:
    """One sample of the machine (or cgroup) we live in."""

    used_bytes: int
    available_bytes: int
    scope: str
    swap_used_bytes: int
    psi_some_avg10: float | None
    psi_full_avg10: float | None
    ceiling_bytes: int = 0
    """The machine ceiling ``used_bytes`` is measured against (cgroup limit or MemTotal)."""
    host_available_bytes: int = 0
    """MemAvailable of the host, the hard cap on ``available_bytes``."""


# --- kept-open files --------------------------------------------------------------------


class _KeptFile:
    """A small kernel file opened once and re-read from offset 0 on every sample."""

    __slots__ = ("fd", "path", "size")

    def __init__(self, path: Path, size: int = 4096) -> None:
        self.path = path
        self.size = size
        self.fd = os.open(path, _READ_FLAGS)

    def read(self) -> bytes:
        data = os.pread(self.fd, self.size, 0)
        while len(data) >= self.size:  # did not fit: grow and read again
            self.size *= 4
            data = os.pread(self.fd, self.size, 0)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_optional(path: Path) -> _KeptFile | None:
    try:
        kept = _KeptFile(path, size=256)  # PSI and swap files are one or two short lines
        kept.read()  # PSI files can exist yet refuse reads (psi=0 on the kernel command line)
    except OSError:
        return None
    return kept


def _field(data: bytes, key: bytes) -> int | None:
    """The first number after ``key`` (which must start a line) in ``data``."""
    index = data.find(b"\n" + key)
    if index >= 0:
        index += 1
    elif data.startswith(key):
        index = 0
    else:
        return None
    start = index + len(key)
    end = data.find(b"\n", start)
    words = data[start : end if end >= 0 else len(data)].split()
    try:
        return int(words[0])
    except (IndexError, ValueError):
        return None


def _first_int(data: bytes) -> int | None:
    """A single-number file (memory.current, memory.swap.current)."""
    try:
        return int(data)
    except ValueError:
        return None


def _psi_avg10(data: bytes, kind: bytes) -> float | None:
    """``avg10`` of the ``some`` or ``full`` line of a PSI file (percent)."""
    key = kind + b" avg10="
    index = data.find(key)
    if index < 0:
        return None
    start = index + len(key)
    end = data.find(b" ", start)
    try:
        return float(data[start : end if end >= 0 else len(data)])
    except ValueError:
        return None


def _meminfo_kb(data: bytes) -> tuple[int | None, int | None, int, int]:
    """MemTotal, MemAvailable, SwapTotal and SwapFree (kB) of a meminfo text.

    Why not ``_field`` four times: the sampler parses meminfo ten times a second, and on a
    10 Hz thread every Python operation runs with cold caches (~11 µs a tick saved against a
    loop over the keys, benchmarks/results/monitor.md). The kernel's layout (MemTotal first,
    SwapFree right after SwapTotal, " kB" units) is read with six ``find``s and four ``int``s;
    ``int`` ignores the padding. Anything else (a missing line, no unit, a fake file) takes
    the ``_field`` path, which gives the same results.
    """
    if data.startswith(b"MemTotal:"):
        total_end = data.find(b" kB\n", 9)
        available_at = data.find(b"\nMemAvailable:") + 14
        available_end = data.find(b" kB\n", available_at)
        swap_at = data.find(b"\nSwapTotal:") + 11
        swap_end = data.find(b" kB\nSwapFree:", swap_at)
        free_end = data.find(b" kB\n", swap_end + 13)
        found = total_end > 0 and 13 < available_at < available_end
        if found and 11 < swap_at <= swap_end < free_end:
            try:
                return (
                    int(data[9:total_end]),
                    int(data[available_at:available_end]),
                    int(data[swap_at:swap_end]),
                    int(data[swap_end + 13 : free_end]),
                )
            except ValueError:
                pass
    return (
        _field(data, b"MemTotal:"),
        _field(data, b"MemAvailable:"),
        _field(data, b"SwapTotal:") or 0,
        _field(data, b"SwapFree:") or 0,
    )


def _psi_both(data: bytes) -> tuple[float | None, float | None]:
    """``some`` and ``full`` avg10 of a PSI file; the kernel's fixed layout read directly.

    ``some avg10=X avg60=...\nfull avg10=Y ...``: X starts at byte 11 and Y 11 bytes after
    the newline. Any other layout takes ``_psi_avg10``.
    """
    newline = data.find(b"\n")
    if data.startswith(b"some avg10=") and data.startswith(b"full avg10=", newline + 1):
        try:
            return (
                float(data[11 : data.find(b" ", 11)]),
                float(data[newline + 12 : data.find(b" ", newline + 12)]),
            )
        except ValueError:
            pass
    return _psi_avg10(data, b"some"), _psi_avg10(data, b"full")


UsageSample = tuple[int, int, int, float | None, float | None, int, int]
"""``UsageReader.sample()``: used, available, swap used (bytes), PSI some / full avg10 (%),
ceiling, host available (bytes); the fields of ``MemoryUsage`` in its order, without ``scope``."""


# --- the reader -------------------------------------------------------------------------


class UsageReader:
    """Samples usage in the ceiling's scope with kept-open files (the monitor's fast path).

    Raises ``OSError`` if ``<root>/proc/meminfo`` cannot be opened (not Linux). Cgroup files
    that vanish later (cgroup removed) are logged once and the reader falls back to the host.
    """

    def __init__(self, limit: MemoryLimit, root: str | Path = "/") -> None:
        self._root = Path(root)
        self._limit = limit
        self._meminfo = _KeptFile(self._root / "proc" / "meminfo")
        self._current: _KeptFile | None = None
        self._stat: _KeptFile | None = None
        self._swap: _KeptFile | None = None
        self._psi: _KeptFile | None = None
        self._psi_raw: bytes | None = None  # the PSI file as last read, and what it said
        self._psi_last: tuple[float | None, float | None] = (None, None)
        self._version = 0
        self._ceiling_bytes = limit.host_total_bytes
        self._open_cgroup_files()
        self._open_psi()

    @property
    def scope(self) -> str:
        return f"cgroup-v{self._version}" if self._version else "host"

    def _open_cgroup_files(self) -> None:
        limit = self._limit
        directory = limit.cgroup_limit_dir
        if limit.cgroup is None or directory is None or limit.cgroup_limit_bytes is None:
            return
        if limit.cgroup_limit_bytes >= limit.host_total_bytes:
            return  # a cgroup limit above RAM limits nothing: the host is the scope
        version = limit.cgroup.version
        current_name = "memory.current" if version == 2 else "memory.usage_in_bytes"
        try:
            self._current = _KeptFile(directory / current_name)
            self._stat = _KeptFile(directory / "memory.stat", size=8192)
        except OSError as error:
            logger.warning(
                "cannot read cgroup usage in %s (%s); measuring the host", directory, error
            )
            self._close_cgroup_files()
            return
        if version == 2:
            self._swap = _open_optional(directory / "memory.swap.current")
        self._version = version
        self._ceiling_bytes = limit.cgroup_limit_bytes

    def _open_psi(self) -> None:
        candidates: list[Path] = []
        limit = self._limit
        if self._version == 2 and limit.cgroup_limit_dir is not None and limit.cgroup is not None:
            candidates += [
                limit.cgroup_limit_dir / "memory.pressure",
                limit.cgroup.path / "memory.pressure",
            ]
        candidates.append(self._root / "proc" / "pressure" / "memory")
        for path in candidates:
            self._psi = _open_optional(path)
            if self._psi is not None:
                return

    def _close_cgroup_files(self) -> None:
        for kept in (self._current, self._stat, self._swap):
            if kept is not None:
                kept.close()
        self._current = self._stat = self._swap = None
        self._version = 0
        self._ceiling_bytes = self._limit.host_total_bytes

    def _cgroup_used(self) -> int | None:
        """Cgroup usage minus inactive page cache; None (after one warning) if unreadable."""
        assert self._current is not None and self._stat is not None
        try:
            current = _first_int(self._current.read())
            stat = self._stat.read()
        except OSError as error:
            logger.warning("cgroup usage unreadable (%s); measuring the host from now on", error)
            self._close_cgroup_files()
            return None
        key = b"inactive_file " if self._version == 2 else b"total_inactive_file "
        inactive = _field(stat, key) or 0
        return max(0, (current or 0) - inactive)

    def _psi_values(self) -> tuple[float | None, float | None]:
        """PSI some / full avg10; parsed again only when the file's text changed.

        The kernel recomputes the averages every 2 s, so most reads repeat the last one.
        """
        if self._psi is None:
            return None, None
        try:
            data = self._psi.read()
        except OSError:
            self._psi.close()
            self._psi = None
            return None, None
        if data != self._psi_raw:
            self._psi_raw, self._psi_last = data, _psi_both(data)
        return self._psi_last

    def _swap_used(self, swap_total_kb: int, swap_free_kb: int) -> int:
        if self._swap is not None:
            try:
                return _first_int(self._swap.read()) or 0
            except OSError:
                self._swap.close()
                self._swap = None
        return max(0, swap_total_kb - swap_free_kb) * 1024

    def sample(self) -> UsageSample:
        """``read()`` as a plain tuple: what the sampler needs, ten times a second.

        Why a tuple: building the frozen ``MemoryUsage`` costs the sampler more CPU than
        the two ``pread`` calls of a host sample; the monitor only unpacks the numbers. Why
        flat (the kept files read here, not through their methods): on a thread that wakes
        ten times a second every extra Python call and attribute runs with cold caches.
        """
        meminfo = self._meminfo
        data = os.pread(meminfo.fd, meminfo.size, 0)
        if len(data) >= meminfo.size:
            data = meminfo.read()
        total_kb, available_kb, swap_total_kb, swap_free_kb = _meminfo_kb(data)
        total_bytes = (total_kb or 0) * 1024 or self._limit.host_total_bytes
        host_available_bytes = total_bytes if available_kb is None else available_kb * 1024
        used = self._cgroup_used() if self._current is not None else None
        if used is None:
            used = max(0, total_bytes - host_available_bytes)
        available = min(max(0, self._ceiling_bytes - used), host_available_bytes)
        psi = self._psi
        if psi is None:
            psi_some = psi_full = None
        else:
            try:
                text: bytes | None = os.pread(psi.fd, psi.size, 0)
            except OSError:
                text = None
            if text is None or text != self._psi_raw:  # also a failed read, a long file
                psi_some, psi_full = self._psi_values()
            else:
                psi_some, psi_full = self._psi_last
        if self._swap is None:
            swap_used = max(0, swap_total_kb - swap_free_kb) * 1024
        else:
            swap_used = self._swap_used(swap_total_kb, swap_free_kb)
        return (
            used,
            available,
            swap_used,
            psi_some,
            psi_full,
            self._ceiling_bytes,
            host_available_bytes,
        )

    def native_args(self) -> tuple[int, int, int, bytes, int, int, int]:
        """What the native sampler re-reads (``montage.memory.native``): meminfo, cgroup
        current and stat fds, the stat key of inactive page cache, swap and PSI fds (-1: none),
        and the ceiling. The fds stay Python's; the native side reads its own copies."""

        def fd(kept: _KeptFile | None) -> int:
            return -1 if kept is None else kept.fd

        key = b"inactive_file " if self._version == 2 else b"total_inactive_file "
        return (
            self._meminfo.fd,
            fd(self._current),
            fd(self._stat),
            key,
            fd(self._swap),
            fd(self._psi),
            self._ceiling_bytes,
        )

    def read(self) -> MemoryUsage:
        """One sample; cheap enough to call every 100 ms (see benchmarks/bench_sampling.py)."""
        used, available, swap_used, psi_some, psi_full, ceiling, host_available = self.sample()
        return MemoryUsage(
            used_bytes=used,
            available_bytes=available,
            scope=self.scope,
            swap_used_bytes=swap_used,
            psi_some_avg10=psi_some,
            psi_full_avg10=psi_full,
            ceiling_bytes=ceiling,
            host_available_bytes=host_available,
        )

    def close(self) -> None:
        """Close every kept file (idempotent)."""
        self._close_cgroup_files()
        for kept in (self._meminfo, self._psi):
            if kept is not None:
                kept.close()
        self._psi = None

    def __enter__(self) -> UsageReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown nothing is left to do
            self.close()


def read_usage(limit: MemoryLimit, root: str | Path = "/") -> MemoryUsage:
    """One sample without keeping files open (for one-off status reports)."""
    with UsageReader(limit, root) as reader:
        return reader.read()
