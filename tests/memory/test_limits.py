"""The memory ceiling on fake cgroup v1/v2 trees (via the real code path) and on this machine."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from montage.errors import ConfigError
from montage.memory.limits import (
    UNLIMITED_THRESHOLD_BYTES,
    CgroupInfo,
    find_cgroup,
    find_memory_limit,
    parse_memory_size,
)

GIB = 1024**3
MIB = 1024**2
HOST_TOTAL_KIB = 16 * 1024 * 1024  # a 16 GiB fake host
V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 really prints for "no limit"
NO_ENV: dict[str, str] = {}


# --- fake machine trees (shared with test_usage.py) -------------------------------------------


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fake_host(
    root: Path,
    total_kib: int = HOST_TOTAL_KIB,
    available_kib: int | None = None,
    swap_total_kib: int = 0,
    swap_free_kib: int = 0,
) -> None:
    available = total_kib // 2 if available_kib is None else available_kib
    write(
        root,
        "proc/meminfo",
        f"MemTotal:       {total_kib} kB\nMemFree:        {available} kB\n"
        f"MemAvailable:   {available} kB\nBuffers:             0 kB\n"
        f"SwapTotal:      {swap_total_kib} kB\nSwapFree:       {swap_free_kib} kB\n",
    )


def fake_v2(
    root: Path,
    cgroup_path: str,
    files: dict[str, dict[str, str]],
    *,
    mountinfo: bool = False,
    controllers: str = "cpuset cpu io memory pids",
) -> None:
    """A cgroup v2 tree at sys/fs/cgroup; ``files`` maps a cgroup dir ("/" = root) to its files."""
    write(root, "proc/self/cgroup", f"0::{cgroup_path}\n")
    write(root, "sys/fs/cgroup/cgroup.controllers", controllers + "\n")
    if mountinfo:
        write(
            root,
            "proc/self/mountinfo",
            "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
            "30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        )
    for directory, contents in files.items():
        for name, value in contents.items():
            write(root, f"sys/fs/cgroup/{directory.strip('/')}/{name}", value + "\n")
    (root / "sys/fs/cgroup" / cgroup_path.lstrip("/")).mkdir(parents=True, exist_ok=True)


def fake_v1(
    root: Path,
    cgroup_path: str,
    files: dict[str, dict[str, str]],
    *,
    mountinfo: str | None = None,
) -> None:
    """A cgroup v1 memory hierarchy at sys/fs/cgroup/memory (hybrid: also a useless cgroup2)."""
    write(root, "proc/self/cgroup", f"5:cpu,cpuacct:/\n4:memory:{cgroup_path}\n0::/\n")
    if mountinfo is not None:
        write(root, "proc/self/mountinfo", mountinfo)
    (root / "sys/fs/cgroup/memory").mkdir(parents=True, exist_ok=True)
    for directory, contents in files.items():
        for name, value in contents.items():
            write(root, f"sys/fs/cgroup/memory/{directory.strip('/')}/{name}", value + "\n")


# --- cgroup v2 --------------------------------------------------------------------------------


@pytest.mark.parametrize("mountinfo", [False, True])
def test_v2_container_limit_at_mount_root(tmp_path: Path, mountinfo: bool) -> None:
    fake_host(tmp_path)
    fake_v2(tmp_path, "/", {"/": {"memory.max": str(2 * GIB)}}, mountinfo=mountinfo)
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.limit_bytes == 2 * GIB
    assert limit.source == "cgroup-v2:/sys/fs/cgroup/memory.max"
    assert limit.cgroup == CgroupInfo(2, tmp_path / "sys/fs/cgroup", tmp_path / "sys/fs/cgroup")
    assert limit.host_total_bytes == HOST_TOTAL_KIB * 1024
    assert limit.limit_mb == 2048.0


def test_v2_nested_slice_whose_ancestor_is_tighter(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(
        tmp_path,
        "/app.slice/job.scope",
        {"/app.slice": {"memory.max": str(1 * GIB)}, "/app.slice/job.scope": {"memory.max": "max"}},
    )
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.limit_bytes == 1 * GIB
    assert limit.source == "cgroup-v2:/sys/fs/cgroup/app.slice/memory.max"
    assert limit.cgroup is not None
    assert limit.cgroup.path == tmp_path / "sys/fs/cgroup/app.slice/job.scope"
    assert limit.cgroup_limit_dir == tmp_path / "sys/fs/cgroup/app.slice"


def test_v2_leaf_tighter_than_ancestor(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(
        tmp_path,
        "/a/b",
        {"/a": {"memory.max": str(3 * GIB)}, "/a/b": {"memory.max": str(700 * MIB)}},
    )
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert (limit.limit_bytes, limit.source) == (
        700 * MIB,
        "cgroup-v2:/sys/fs/cgroup/a/b/memory.max",
    )


def test_v2_unlimited_everywhere_is_the_host(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(tmp_path, "/user.slice", {"/user.slice": {"memory.max": "max", "memory.high": "max"}})
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.limit_bytes == HOST_TOTAL_KIB * 1024
    assert limit.source == "host:/proc/meminfo"
    assert limit.cgroup_limit_bytes is None and limit.cgroup_source is None
    assert limit.cgroup is not None and limit.cgroup.version == 2


def test_v2_memory_high_below_memory_max_wins(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(tmp_path, "/svc", {"/svc": {"memory.max": str(4 * GIB), "memory.high": str(3 * GIB)}})
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.limit_bytes == 3 * GIB
    assert limit.source == "cgroup-v2:/sys/fs/cgroup/svc/memory.high"


def test_memory_low_and_min_are_not_limits(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(
        tmp_path,
        "/svc",
        {"/svc": {"memory.max": "max", "memory.low": str(64 * MIB), "memory.min": str(32 * MIB)}},
    )
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.source == "host:/proc/meminfo"
    assert limit.limit_bytes == HOST_TOTAL_KIB * 1024


def test_cgroup_limit_above_ram_does_not_win(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(tmp_path, "/", {"/": {"memory.max": str(64 * GIB)}})
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.source == "host:/proc/meminfo"
    assert limit.cgroup_limit_bytes == 64 * GIB  # still reported, it just is not the ceiling


def test_v2_named_path_missing_falls_back_to_mount_root(tmp_path: Path) -> None:
    """A container without a cgroup namespace sees the host's path, which is not mounted here."""
    fake_host(tmp_path)
    fake_v2(tmp_path, "/", {"/": {"memory.max": str(GIB)}})
    write(tmp_path, "proc/self/cgroup", "0::/system.slice/docker-abc.scope\n")
    info = find_cgroup(tmp_path)
    assert info is not None and info.path == tmp_path / "sys/fs/cgroup"
    assert find_memory_limit(tmp_path, env=NO_ENV).limit_bytes == GIB


# --- cgroup v1 --------------------------------------------------------------------------------


def test_v1_container_limit_at_mount_root(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v1(tmp_path, "/", {"/": {"memory.limit_in_bytes": str(GIB)}})
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.limit_bytes == GIB
    assert limit.source == "cgroup-v1:/sys/fs/cgroup/memory/memory.limit_in_bytes"
    assert limit.cgroup is not None and limit.cgroup.version == 1


def test_v1_nested_path_whose_ancestor_is_tighter(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v1(
        tmp_path,
        "/docker/abc",
        {
            "/": {"memory.limit_in_bytes": V1_UNLIMITED},
            "/docker": {"memory.limit_in_bytes": str(512 * MIB)},
            "/docker/abc": {"memory.limit_in_bytes": V1_UNLIMITED},
        },
    )
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.limit_bytes == 512 * MIB
    assert limit.source == "cgroup-v1:/sys/fs/cgroup/memory/docker/memory.limit_in_bytes"
    assert limit.cgroup is not None
    assert limit.cgroup.path == tmp_path / "sys/fs/cgroup/memory/docker/abc"


def test_v1_unlimited_sentinel_is_ignored(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v1(tmp_path, "/job", {"/job": {"memory.limit_in_bytes": str(UNLIMITED_THRESHOLD_BYTES)}})
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.source == "host:/proc/meminfo" and limit.cgroup_limit_bytes is None


def test_v1_without_cgroupns_strips_the_mounted_subtree(tmp_path: Path) -> None:
    """mountinfo says the mount shows /docker/abc: /proc/self/cgroup's path is the mount root."""
    fake_host(tmp_path)
    mountinfo = (
        "40 30 0:35 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
        "41 30 0:38 /docker/abc /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    fake_v1(
        tmp_path,
        "/docker/abc",
        {"/": {"memory.limit_in_bytes": str(300 * MIB)}},
        mountinfo=mountinfo,
    )
    write(tmp_path, "sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")
    info = find_cgroup(tmp_path)
    assert info == CgroupInfo(
        1, tmp_path / "sys/fs/cgroup/memory", tmp_path / "sys/fs/cgroup/memory"
    )
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert (limit.limit_bytes, limit.source) == (
        300 * MIB,
        "cgroup-v1:/sys/fs/cgroup/memory/memory.limit_in_bytes",
    )


def test_hybrid_host_prefers_v1_memory_over_a_cgroup2_without_memory(tmp_path: Path) -> None:
    """This project's machines: "0::/" plus a v1 memory line; the cgroup2 mount has only hugetlb."""
    fake_host(tmp_path)
    mountinfo = (
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    fake_v1(
        tmp_path,
        "/process_api/x1",
        {"/process_api": {"memory.limit_in_bytes": str(GIB)}},
        mountinfo=mountinfo,
    )
    write(tmp_path, "sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")
    (tmp_path / "sys/fs/cgroup/memory/process_api/x1").mkdir(parents=True)
    info = find_cgroup(tmp_path)
    assert info is not None and info.version == 1
    assert info.path == tmp_path / "sys/fs/cgroup/memory/process_api/x1"
    assert find_memory_limit(tmp_path, env=NO_ENV).limit_bytes == GIB


def test_no_cgroup_files_at_all_is_the_host(tmp_path: Path) -> None:
    fake_host(tmp_path)
    assert find_cgroup(tmp_path) is None
    limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert (limit.limit_bytes, limit.source, limit.cgroup) == (
        HOST_TOTAL_KIB * 1024,
        "host:/proc/meminfo",
        None,
    )


# --- configured budgets -----------------------------------------------------------------------


def test_configured_percent_is_of_the_cgroup_ceiling(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(tmp_path, "/", {"/": {"memory.max": str(2 * GIB)}})
    limit = find_memory_limit(tmp_path, configured="60%", env=NO_ENV)
    assert limit.limit_bytes == int(2 * GIB * 0.6)
    assert limit.source == "configured:setup_memory_management"
    assert limit.cgroup_limit_bytes == 2 * GIB
    assert limit.configured_bytes == limit.limit_bytes


def test_configured_from_environment_below_all(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v1(tmp_path, "/", {"/": {"memory.limit_in_bytes": str(GIB)}})
    limit = find_memory_limit(tmp_path, env={"MONTAGE_MEMORY_LIMIT": "400M"})
    assert (limit.limit_bytes, limit.source) == (400 * MIB, "configured:MONTAGE_MEMORY_LIMIT")


def test_configured_argument_beats_environment(tmp_path: Path) -> None:
    fake_host(tmp_path)
    limit = find_memory_limit(tmp_path, configured=300 * MIB, env={"MONTAGE_MEMORY_LIMIT": "200M"})
    assert (limit.limit_bytes, limit.source) == (300 * MIB, "configured:setup_memory_management")


def test_configured_above_the_ceiling_does_not_raise_it(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(tmp_path, "/", {"/": {"memory.max": str(GIB)}})
    limit = find_memory_limit(tmp_path, configured="8G", env=NO_ENV)
    assert limit.limit_bytes == GIB and limit.source.startswith("cgroup-v2:")
    assert limit.configured_bytes == 8 * GIB


def test_nonsense_environment_budget_names_the_variable(tmp_path: Path) -> None:
    fake_host(tmp_path)
    with pytest.raises(ConfigError, match=r"MONTAGE_MEMORY_LIMIT.*'lots'"):
        find_memory_limit(tmp_path, env={"MONTAGE_MEMORY_LIMIT": "lots"})


# --- malformed files: logged, ignored, never fatal --------------------------------------------


def test_malformed_v2_file_is_logged_and_the_next_source_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_host(tmp_path)
    fake_v2(tmp_path, "/svc", {"/svc": {"memory.max": "12 gigabytes", "memory.high": str(GIB)}})
    with caplog.at_level(logging.WARNING, logger="montage.memory"):
        limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.limit_bytes == GIB and limit.source.endswith("svc/memory.high")
    assert any(
        "memory.max" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )


def test_malformed_v1_file_falls_back_to_the_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_host(tmp_path)
    fake_v1(tmp_path, "/", {"/": {"memory.limit_in_bytes": "\x00\x01garbage"}})
    with caplog.at_level(logging.WARNING, logger="montage.memory"):
        limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.source == "host:/proc/meminfo"
    assert "memory.limit_in_bytes" in caplog.text


def test_malformed_proc_cgroup_and_mountinfo_do_not_crash(tmp_path: Path) -> None:
    fake_host(tmp_path)
    write(tmp_path, "proc/self/cgroup", "nonsense\n::\n\x00\n")
    write(tmp_path, "proc/self/mountinfo", "garbage line\n - \n")
    assert find_cgroup(tmp_path) is None
    assert find_memory_limit(tmp_path, env=NO_ENV).source == "host:/proc/meminfo"


def test_missing_meminfo_is_logged_and_uses_physical_pages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "proc/meminfo", "MemTotal: lots\n")
    with caplog.at_level(logging.WARNING, logger="montage.memory"):
        limit = find_memory_limit(tmp_path, env=NO_ENV)
    assert limit.host_total_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert "MemTotal" in caplog.text


# --- parse_memory_size ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 * GIB),
        ("2GB", 2 * GIB),
        ("2GiB", 2 * GIB),
        ("2g", 2 * GIB),
        ("1536M", 1536 * MIB),
        ("512m", 512 * MIB),
        ("512MB", 512 * MIB),
        ("1.5GiB", 3 * GIB // 2),
        ("800K", 800 * 1024),
        ("1073741824", GIB),
        (" 3 T ", 3 * 1024**4),
        ("100B", 100),
        (4096, 4096),
        (1e6, 1_000_000),
    ],
)
def test_parse_memory_size(text: str | int | float, expected: int) -> None:
    assert parse_memory_size(text) == expected


def test_parse_percent_needs_a_total() -> None:
    assert parse_memory_size("60%", total_bytes=1000) == 600
    assert parse_memory_size("12.5 %", total_bytes=8 * GIB) == GIB
    with pytest.raises(ConfigError, match="60%"):
        parse_memory_size("60%")


@pytest.mark.parametrize(
    "text", ["", "abc", "-1G", "0", "0M", "2X", "2 ib", "150%", "0%", "nan", True]
)
def test_parse_rejects_nonsense_naming_the_text(text: str | bool) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(text))):
        parse_memory_size(text, total_bytes=GIB)


@given(
    number=st.integers(min_value=1, max_value=10**6),
    unit=st.sampled_from(["K", "M", "G"]),
    suffix=st.sampled_from(["", "B", "iB", "i"]),
    lower=st.booleans(),
)
def test_parse_units_are_binary(number: int, unit: str, suffix: str, lower: bool) -> None:
    text = f"{number}{unit}{suffix}"
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}[unit]
    assert parse_memory_size(text.lower() if lower else text) == number * factor


# --- this machine -----------------------------------------------------------------------------


def test_real_machine_is_read() -> None:
    limit = find_memory_limit(env=NO_ENV)
    assert 0 < limit.limit_bytes <= limit.host_total_bytes
    assert re.fullmatch(r"(host:/proc/meminfo|cgroup-v[12]:/sys/fs/cgroup/\S+)", limit.source)
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    assert limit.host_total_bytes == total_kib * 1024


def test_real_machine_cgroup_matches_proc_self_cgroup() -> None:
    memory_lines = [
        line.split(":", 2)[2].strip()
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        if "memory" in line.split(":")[1].split(",")
    ]
    if not memory_lines or not Path("/sys/fs/cgroup/memory").is_dir():
        pytest.skip("not a cgroup v1 memory host")
    info = find_cgroup()
    assert info is not None and info.version == 1
    assert info.mount == Path("/sys/fs/cgroup/memory")
    expected = Path("/sys/fs/cgroup/memory") / memory_lines[0].lstrip("/")
    assert info.path == (expected if expected.is_dir() else info.mount)


def test_path_outside_the_namespace_never_escapes_the_mount(tmp_path: Path) -> None:
    """cgroupns shows "/../sibling" for a process moved out of our namespace root."""
    fake_host(tmp_path)
    fake_v2(tmp_path, "/", {"/": {"memory.max": str(GIB)}})
    write(tmp_path, "sys/memory.max", str(MIB))  # what "../.." would reach: must not be read
    write(tmp_path, "proc/self/cgroup", "0::/../..\n")
    info = find_cgroup(tmp_path)
    assert info is not None and info.path == info.mount == tmp_path / "sys/fs/cgroup"
    assert find_memory_limit(tmp_path, env=NO_ENV).limit_bytes == GIB


limit_values = st.one_of(
    st.none(),  # file absent
    st.just("max"),
    st.integers(min_value=MIB, max_value=64 * GIB).map(str),
    st.integers(min_value=UNLIMITED_THRESHOLD_BYTES, max_value=2**63 - 1).map(str),
)


def _numeric(value: str | None) -> int | None:
    if value is None or value == "max" or int(value) >= UNLIMITED_THRESHOLD_BYTES:
        return None
    return int(value)


@given(
    levels=st.lists(st.tuples(limit_values, limit_values, limit_values), min_size=1, max_size=4),
    configured_mib=st.one_of(st.none(), st.integers(min_value=1, max_value=32 * 1024)),
    version=st.sampled_from([1, 2]),
)
def test_ceiling_is_the_minimum_of_every_source(
    levels: list[tuple[str | None, str | None, str | None]],
    configured_mib: int | None,
    version: int,
) -> None:
    """Random nesting depth, random limits at each level (incl. memory.low), optional budget."""
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        fake_host(root)
        names = ["a", "b", "c", "d"][: len(levels) - 1]
        cgroup_path = "/" + "/".join(names)
        files: dict[str, dict[str, str]] = {}
        expected: list[int] = [HOST_TOTAL_KIB * 1024]
        for depth, (first, second, low) in enumerate(levels):
            directory = "/" + "/".join(names[:depth])
            contents: dict[str, str] = {}
            keys = ("memory.max", "memory.high") if version == 2 else ("memory.limit_in_bytes",)
            for key, value in zip(keys, (first, second)):
                if value is not None:
                    contents[key] = value
                    expected += [v for v in [_numeric(value)] if v is not None]
            if low is not None:
                contents["memory.low" if version == 2 else "memory.soft_limit_in_bytes"] = low
            files[directory] = contents
        if version == 2:
            fake_v2(root, cgroup_path, files)
        else:
            fake_v1(root, cgroup_path, files)
            (root / "sys/fs/cgroup/memory" / cgroup_path.lstrip("/")).mkdir(
                parents=True, exist_ok=True
            )
        if configured_mib is not None:
            expected.append(configured_mib * MIB)
        configured = f"{configured_mib}M" if configured_mib is not None else None
        limit = find_memory_limit(root, configured=configured, env=NO_ENV)
    assert limit.limit_bytes == min(expected)
    assert limit.cgroup is not None and limit.cgroup.version == version
