"""Usage in the ceiling's scope (fake v1/v2/host trees) and the RSS of real process trees."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from montage.memory.limits import find_memory_limit
from montage.memory.usage import (
    MemoryUsage,
    UsageReader,
    _field,
    _meminfo_kb,
    process_tree_memory,
    read_usage,
    rss_bytes,
)

from .test_limits import GIB, HOST_TOTAL_KIB, MIB, NO_ENV, fake_host, fake_v1, fake_v2, write

PSI_TEXT = (
    "some avg10=12.50 avg60=3.00 avg300=1.00 total=123456\n"
    "full avg10=4.25 avg60=1.00 avg300=0.50 total=6543\n"
)


def _v2_stat(inactive_file_bytes: int) -> str:
    return f"anon 1000\nfile 2000\nactive_file 77\ninactive_file {inactive_file_bytes}\nslab 5\n"


def _v1_stat(inactive_file_bytes: int, total_inactive_file_bytes: int) -> str:
    return (
        f"cache 100\nrss 200\ninactive_file {inactive_file_bytes}\n"
        f"total_cache 300\ntotal_inactive_file {total_inactive_file_bytes}\n"
    )


# --- scopes -----------------------------------------------------------------------------------


def test_host_scope_is_memtotal_minus_memavailable(tmp_path: Path) -> None:
    fake_host(tmp_path, available_kib=HOST_TOTAL_KIB // 4, swap_total_kib=2048, swap_free_kib=512)
    usage = read_usage(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    total = HOST_TOTAL_KIB * 1024
    assert usage.scope == "host"
    assert usage.used_bytes == total - total // 4
    assert usage.available_bytes == total // 4
    assert usage.swap_used_bytes == (2048 - 512) * 1024
    assert usage.ceiling_bytes == total
    assert (usage.psi_some_avg10, usage.psi_full_avg10) == (None, None)


def test_v2_usage_excludes_inactive_file(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(
        tmp_path,
        "/app.slice/job.scope",
        {
            "/app.slice": {
                "memory.max": str(2 * GIB),
                "memory.current": str(900 * MIB),
                "memory.stat": _v2_stat(600 * MIB),
                "memory.swap.current": str(5 * MIB),
                "memory.pressure": PSI_TEXT,
            },
            "/app.slice/job.scope": {"memory.current": str(100 * MIB)},
        },
    )
    write(tmp_path, "proc/pressure/memory", "some avg10=99.00\nfull avg10=99.00\n")
    usage = read_usage(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    assert usage.scope == "cgroup-v2"
    assert usage.used_bytes == 300 * MIB  # read where the limit is, page cache excluded
    assert usage.available_bytes == 2 * GIB - 300 * MIB
    assert usage.ceiling_bytes == 2 * GIB
    assert usage.swap_used_bytes == 5 * MIB
    assert (usage.psi_some_avg10, usage.psi_full_avg10) == (12.5, 4.25)  # the cgroup's PSI


def test_v1_usage_excludes_total_inactive_file(tmp_path: Path) -> None:
    fake_host(tmp_path, swap_total_kib=1000, swap_free_kib=1000)
    fake_v1(
        tmp_path,
        "/",
        {
            "/": {
                "memory.limit_in_bytes": str(GIB),
                "memory.usage_in_bytes": str(700 * MIB),
                "memory.stat": _v1_stat(1 * MIB, 450 * MIB),
            }
        },
    )
    write(tmp_path, "proc/pressure/memory", PSI_TEXT)
    usage = read_usage(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    assert usage.scope == "cgroup-v1"
    assert usage.used_bytes == 250 * MIB  # total_ (hierarchical) inactive_file, not the local one
    assert usage.available_bytes == GIB - 250 * MIB
    assert usage.swap_used_bytes == 0
    assert (usage.psi_some_avg10, usage.psi_full_avg10) == (12.5, 4.25)  # host PSI for v1


def test_unlimited_cgroup_measures_the_host(tmp_path: Path) -> None:
    fake_host(tmp_path, available_kib=HOST_TOTAL_KIB // 2)
    fake_v1(tmp_path, "/", {"/": {"memory.limit_in_bytes": "9223372036854771712"}})
    usage = read_usage(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    assert usage.scope == "host" and usage.used_bytes == HOST_TOTAL_KIB * 1024 // 2


def test_available_never_exceeds_host_memavailable(tmp_path: Path) -> None:
    fake_host(tmp_path, available_kib=100 * 1024)  # the host itself is nearly full
    fake_v2(
        tmp_path,
        "/",
        {"/": {"memory.max": str(4 * GIB), "memory.current": str(GIB), "memory.stat": _v2_stat(0)}},
    )
    usage = read_usage(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    assert usage.available_bytes == 100 * MIB
    assert usage.host_available_bytes == 100 * MIB


def test_used_above_the_ceiling_floors_available_at_zero(tmp_path: Path) -> None:
    fake_host(tmp_path)
    fake_v2(
        tmp_path,
        "/",
        {
            "/": {
                "memory.high": str(GIB),
                "memory.current": str(3 * GIB),
                "memory.stat": _v2_stat(0),
            }
        },
    )
    usage = read_usage(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    assert usage.used_bytes == 3 * GIB and usage.available_bytes == 0


def test_configured_budget_is_not_a_usage_scope(tmp_path: Path) -> None:
    """Other programs' memory must not count against the user's budget: scope stays the host."""
    fake_host(tmp_path, available_kib=HOST_TOTAL_KIB // 2)
    limit = find_memory_limit(tmp_path, configured="400M", env=NO_ENV)
    usage = read_usage(limit, tmp_path)
    assert limit.limit_bytes == 400 * MIB
    assert usage.scope == "host" and usage.ceiling_bytes == HOST_TOTAL_KIB * 1024


# --- the kept-open fast path ------------------------------------------------------------------


def test_reader_rereads_kept_files(tmp_path: Path) -> None:
    fake_host(tmp_path)
    files = {"memory.max": str(2 * GIB), "memory.current": str(GIB), "memory.stat": _v2_stat(0)}
    fake_v2(tmp_path, "/", {"/": files})
    write(tmp_path, "proc/pressure/memory", PSI_TEXT)
    with UsageReader(find_memory_limit(tmp_path, env=NO_ENV), tmp_path) as reader:
        first = reader.read()
        write(tmp_path, "sys/fs/cgroup/memory.current", f"{GIB + 200 * MIB}\n")
        write(tmp_path, "sys/fs/cgroup/memory.stat", _v2_stat(50 * MIB))
        write(
            tmp_path,
            "proc/pressure/memory",
            PSI_TEXT.replace("full avg10=4.25", "full avg10=30.00"),
        )
        second = reader.read()
    assert first.used_bytes == GIB
    assert second.used_bytes == GIB + 150 * MIB
    assert second.psi_full_avg10 == 30.0


def test_reader_follows_a_psi_file_longer_than_its_first_read(tmp_path: Path) -> None:
    fake_host(tmp_path)
    long_text = PSI_TEXT.replace("total=6543", "total=6543" + " " * 300)  # > 256 bytes
    write(tmp_path, "proc/pressure/memory", long_text)
    with UsageReader(find_memory_limit(tmp_path, env=NO_ENV), tmp_path) as reader:
        assert reader.read().psi_full_avg10 == 4.25
        assert reader.read().psi_full_avg10 == 4.25  # the kept text, compared whole
        write(tmp_path, "proc/pressure/memory", long_text.replace("4.25", "9.50"))
        assert reader.read().psi_full_avg10 == 9.5


def test_reader_handles_large_files(tmp_path: Path) -> None:
    fake_host(tmp_path)
    padding = "".join(f"pad_counter_{i} {i}\n" for i in range(2000))  # ~40 KB, bigger than a page
    files = {
        "memory.max": str(GIB),
        "memory.current": str(500 * MIB),
        "memory.stat": padding + f"inactive_file {100 * MIB}\n",
    }
    fake_v2(tmp_path, "/", {"/": files})
    usage = read_usage(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    assert usage.used_bytes == 400 * MIB


def test_reader_closes_its_files(tmp_path: Path) -> None:
    fake_host(tmp_path)
    write(tmp_path, "proc/pressure/memory", PSI_TEXT)
    before = len(os.listdir("/proc/self/fd"))
    reader = UsageReader(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before + 2
    reader.close()
    reader.close()  # idempotent
    assert len(os.listdir("/proc/self/fd")) == before


def test_missing_cgroup_usage_file_falls_back_to_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_host(tmp_path)
    fake_v2(tmp_path, "/", {"/": {"memory.max": str(GIB)}})  # no memory.current / memory.stat
    with caplog.at_level(logging.WARNING, logger="montage.memory"):
        usage = read_usage(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    assert usage.scope == "host" and usage.ceiling_bytes == HOST_TOTAL_KIB * 1024
    assert "cannot read cgroup usage" in caplog.text


# --- PSI --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PSI_TEXT, (12.5, 4.25)),
        ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", (0.0, None)),  # old kernels: no full
        ("some avg10=abc avg60=1\nfull avg10=7.5 avg60=1\n", (None, 7.5)),
        ("garbage\n", (None, None)),
    ],
)
def test_psi_parsing(
    tmp_path: Path, text: str, expected: tuple[float | None, float | None]
) -> None:
    fake_host(tmp_path)
    write(tmp_path, "proc/pressure/memory", text)
    usage = read_usage(find_memory_limit(tmp_path, env=NO_ENV), tmp_path)
    assert (usage.psi_some_avg10, usage.psi_full_avg10) == expected


def test_real_machine_sample_is_plausible() -> None:
    limit = find_memory_limit(env=NO_ENV)
    with UsageReader(limit) as reader:
        samples = [reader.read() for _ in range(3)]
    for usage in samples:
        assert isinstance(usage, MemoryUsage)
        assert 0 < usage.used_bytes < limit.host_total_bytes
        assert 0 < usage.available_bytes <= usage.host_available_bytes
        assert usage.scope in ("host", "cgroup-v1", "cgroup-v2")
    if Path("/proc/pressure/memory").exists():
        assert samples[0].psi_some_avg10 is not None


# --- process trees ----------------------------------------------------------------------------

ALLOCATE_50MB = (
    "import sys\n"
    "block = b'x' * (50 * 1024 * 1024)\n"  # written pages, so they are resident
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def allocating_child() -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", ALLOCATE_50MB],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        yield child
    finally:
        child.kill()
        child.communicate()


def test_process_tree_sees_a_real_child(allocating_child: subprocess.Popen[str]) -> None:
    tree = process_tree_memory()
    by_pid = dict(tree.children)
    assert allocating_child.pid in by_pid
    assert by_pid[allocating_child.pid] >= 50 * MIB
    assert tree.tree_rss_bytes >= tree.process_rss_bytes + 50 * MIB
    assert tree.tree_rss_bytes == tree.process_rss_bytes + sum(by_pid.values())
    assert tree.process_rss_bytes == rss_bytes(os.getpid())


def test_process_tree_grows_by_the_child_allocation() -> None:
    """The same child, before and after it allocates: the tree grows by roughly 50 MB."""
    script = (
        "import sys\n"
        "sys.stdin.readline()\n"
        "block = b'x' * (50 * 1024 * 1024)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        before = dict(process_tree_memory().children)[child.pid]
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"
        after = dict(process_tree_memory().children)[child.pid]
    finally:
        child.kill()
        child.communicate()
    assert 45 * MIB <= after - before <= 60 * MIB


def test_process_tree_includes_grandchildren() -> None:
    script = (
        "import subprocess, sys\n"
        "g = subprocess.Popen([sys.executable, '-c', "
        "\"import sys; b = b'y' * (30 * 1024 * 1024); print(flush=True); sys.stdin.read()\"], "
        "stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        "g.stdout.readline()\n"
        "print(g.pid, flush=True)\n"
        "sys.stdin.read()\n"
        "g.kill(); g.wait()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        pids = [pid for pid, _ in process_tree_memory().children]
        by_pid = dict(process_tree_memory().children)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert pids.index(child.pid) < pids.index(grandchild)  # parents before children
    assert by_pid[grandchild] >= 30 * MIB
    assert rss_bytes(grandchild) is None  # the child reaped it on the way out


def test_gone_processes_are_none_or_empty() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert rss_bytes(child.pid) is None
    gone = process_tree_memory(child.pid)
    assert (gone.process_rss_bytes, gone.tree_rss_bytes, gone.children) == (0, 0, ())


def _fake_process(root: Path, pid: int, rss_pages: int | None, children: dict[int, str]) -> None:
    if rss_pages is not None:
        write(root, f"proc/{pid}/statm", f"{rss_pages * 3} {rss_pages} 10 1 0 5 0\n")
    for tid, text in children.items():
        write(root, f"proc/{pid}/task/{tid}/children", text)


def test_fake_tree_walk_skips_vanished_and_cuts_cycles(tmp_path: Path) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    _fake_process(tmp_path, 100, 10, {100: "101 ", 105: "102 103 "})  # two threads, both fork
    _fake_process(tmp_path, 101, 20, {101: "104 "})
    _fake_process(tmp_path, 102, None, {})  # exited between listing and reading statm
    _fake_process(tmp_path, 103, 30, {103: "100 "})  # a recycled pid pointing back up: no loop
    _fake_process(tmp_path, 104, 40, {104: ""})
    tree = process_tree_memory(100, tmp_path)
    assert tree.process_rss_bytes == 10 * page
    assert sorted(tree.children) == [(101, 20 * page), (103, 30 * page), (104, 40 * page)]
    assert tree.tree_rss_bytes == 100 * page


def test_without_children_files_psutil_walks_the_tree(tmp_path: Path) -> None:
    """Kernels without CONFIG_PROC_CHILDREN: the task directory exists but has no children file."""
    me = os.getpid()
    child = subprocess.Popen(["sleep", "30"])
    try:
        _fake_process(tmp_path, me, 7, {})
        (tmp_path / f"proc/{me}/task/{me}").mkdir(parents=True)
        _fake_process(tmp_path, child.pid, 3, {})
        tree = process_tree_memory(me, tmp_path)
    finally:
        child.kill()
        child.wait()
    page = os.sysconf("SC_PAGE_SIZE")
    assert tree.children == ((child.pid, 3 * page),)
    assert tree.tree_rss_bytes == 10 * page


# --- meminfo parsing --------------------------------------------------------------------------


def _reference_meminfo(data: bytes) -> tuple[int | None, int | None, int, int]:
    return (
        _field(data, b"MemTotal:"),
        _field(data, b"MemAvailable:"),
        _field(data, b"SwapTotal:") or 0,
        _field(data, b"SwapFree:") or 0,
    )


MEMINFO_KEYS = ["MemTotal", "MemFree", "MemAvailable", "Buffers", "SwapTotal", "SwapFree", "Zswap"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(MEMINFO_KEYS),
            st.integers(min_value=0, max_value=10**12),
            st.sampled_from([" kB", "", " MB", "kB"]),
            st.integers(min_value=0, max_value=9),
        ),
        max_size=9,
        unique_by=lambda line: line[0],  # the kernel writes each key once
    )
)
def test_meminfo_fast_parse_agrees_with_the_field_parser(
    lines: list[tuple[str, int, str, int]],
) -> None:
    """The sampler's find-based parse gives what ``_field`` gives, for any layout."""
    text = "".join(f"{key}:{' ' * pad}{value}{unit}\n" for key, value, unit, pad in lines)
    data = text.encode()
    assert _meminfo_kb(data) == _reference_meminfo(data)


def test_meminfo_fast_parse_of_the_real_file() -> None:
    data = Path("/proc/meminfo").read_bytes()
    assert _meminfo_kb(data) == _reference_meminfo(data)
    assert _meminfo_kb(data)[1] is not None
