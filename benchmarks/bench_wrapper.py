"""What does running ffmpeg through ``run_ffmpeg`` cost, compared with ``subprocess.run``?

Why: every Montage job runs its ffmpeg children through ``memory_safe_ffmpeg`` (budget
reservation, own process group, PDEATHSIG, stderr/progress threads, a 50 ms RSS watchdog).
That must cost next to nothing (target: median wall ratio <= 1.05 on a 30 s 1080p encode).

Side by side in one process, alternating raw / wrapped runs of the same argv:

* raw: ``subprocess.Popen(argv)`` + ``os.wait4`` (peak = the child's ``ru_maxrss``, the kernel's
  exact high-water mark);
* wrapped: ``run_ffmpeg(argv)`` (peak = the child's ``VmHWM`` read at each ``-progress`` block,
  the last one written just before exit, and the wrapper's own 50 ms sampler peak).

Run: ``.venv/bin/python benchmarks/bench_wrapper.py [--runs 3] [--seconds 30] [--preset veryfast]``
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from montage.ffmpeg.binary import find_ffmpeg
from montage.ffmpeg.process import FFmpegProgress, memory_safe_ffmpeg

TARGET_RATIO = 1.05


def machine() -> str:
    cpu = "unknown cpu"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    total_kib = 0
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                total_kib = int(line.split()[1])
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"{total_kib / 1048576:.1f} GiB RAM, Python {platform.python_version()}"
    )


def make_input(ffmpeg: str, folder: Path, seconds: int) -> Path:
    """A 1080p30 H.264 + AAC clip from lavfi (made once, not timed)."""
    source = folder / "input_1080p.mp4"
    subprocess.run(
        [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "60",
            "-c:a", "aac", "-b:a", "96k", str(source),
        ],
        check=True,
    )  # fmt: skip
    return source


def encode_argv(ffmpeg: str, source: Path, target: Path, preset: str) -> list[str]:
    return [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(source),
        "-c:v", "libx264", "-preset", preset, "-c:a", "copy", str(target),
    ]  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One measured run: wall, the ffmpeg child's CPU, this process's CPU, peaks."""

    wall_s: float
    child_cpu_s: float  # user + sys of the reaped ffmpeg (RUSAGE_CHILDREN delta)
    parent_cpu_s: float  # user + sys of this process (all threads) during the run
    peak_mb: float
    sampler_peak_mb: float | None = None


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_raw(argv: list[str]) -> Run:
    """A plain child; its peak is ``ru_maxrss`` from ``os.wait4``."""
    child_before, self_before = _cpu_s(resource.RUSAGE_CHILDREN), _cpu_s(resource.RUSAGE_SELF)
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(child.pid, 0)
    wall_s = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"raw ffmpeg failed ({child.returncode}): {shlex.join(argv)}")
    return Run(
        wall_s,
        _cpu_s(resource.RUSAGE_CHILDREN) - child_before,
        _cpu_s(resource.RUSAGE_SELF) - self_before,
        usage.ru_maxrss / 1024,
    )


def vm_hwm_kib(pid: int) -> int:
    """The kernel's RSS high-water mark of a live process, 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_wrapped(argv: list[str]) -> Run:
    """``run_ffmpeg(argv)`` written out to learn the pid: peak = VmHWM read at each progress
    block (the last one just before exit), plus the wrapper's own 50 ms sampler peak."""
    pids: list[int] = []
    hwm_kib = [0]

    def on_progress(_progress: FFmpegProgress) -> None:
        if pids:
            hwm_kib[0] = max(hwm_kib[0], vm_hwm_kib(pids[0]))

    child_before, self_before = _cpu_s(resource.RUSAGE_CHILDREN), _cpu_s(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with memory_safe_ffmpeg(argv, name="bench", on_progress=on_progress) as process:
        pids.append(process.pid)
        process.wait()
    wall_s = time.perf_counter() - started
    return Run(
        wall_s,
        _cpu_s(resource.RUSAGE_CHILDREN) - child_before,
        _cpu_s(resource.RUSAGE_SELF) - self_before,
        hwm_kib[0] / 1024,
        process.peak_memory_mb,
    )


def fixed_overhead_ms(ffmpeg: str, runs: int = 15) -> tuple[float, float]:
    """Median wall (ms) of a tiny job (1 s of 160x120 to null), raw and wrapped."""
    argv = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi",
        "-i", "testsrc2=size=160x120:rate=25:duration=1", "-f", "null", "-",
    ]  # fmt: skip
    raw_ms: list[float] = []
    wrapped_ms: list[float] = []
    for _ in range(runs):
        raw_ms.append(run_raw(argv).wall_s * 1000)
        wrapped_ms.append(run_wrapped(argv).wall_s * 1000)
    return statistics.median(raw_ms), statistics.median(wrapped_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--preset", default="ultrafast")
    args = parser.parse_args(argv)
    binary = find_ffmpeg()
    with tempfile.TemporaryDirectory(prefix="montage-bench-wrapper-") as tmp:
        folder = Path(tmp)
        source = make_input(binary.path, folder, args.seconds)
        command = encode_argv(binary.path, source, folder / "out.mp4", args.preset)
        run_wrapped(command)  # warm-up: first-call imports and the monitor/budget singletons
        raw: list[Run] = []
        wrapped: list[Run] = []
        for _ in range(args.runs):
            raw.append(run_raw(command))
            wrapped.append(run_wrapped(command))
        fixed = fixed_overhead_ms(binary.path)
        print(report(args, binary.version, command, raw, wrapped, fixed))
    return 0


def _median(runs: list[Run], field: str) -> float:
    return float(statistics.median(getattr(run, field) for run in runs))


def report(
    args: argparse.Namespace,
    version: str,
    command: Sequence[str],
    raw: list[Run],
    wrapped: list[Run],
    fixed_ms: tuple[float, float],
) -> str:
    wall_ratio = _median(wrapped, "wall_s") / _median(raw, "wall_s")
    pair_ratios = [w.wall_s / r.wall_s for r, w in zip(raw, wrapped, strict=True)]
    cpu_raw = _median(raw, "child_cpu_s") + _median(raw, "parent_cpu_s")
    cpu_wrapped = _median(wrapped, "child_cpu_s") + _median(wrapped, "parent_cpu_s")
    cpu_ratio = cpu_wrapped / cpu_raw
    shown = ["ffmpeg", *command[1:]]
    shown[shown.index("-i") + 1] = "input_1080p.mp4"
    shown[-1] = "out.mp4"
    load_1m = os.getloadavg()[0]
    rows = [
        ("raw `subprocess`", raw, "ru_maxrss"),
        ("`run_ffmpeg`", wrapped, "VmHWM"),
    ]
    lines = [
        "## Wrapper overhead: run_ffmpeg vs subprocess (bench_wrapper.py)",
        "",
        f"- Machine: {machine()}; load average at the end: {load_1m:.1f}",
        f"- ffmpeg: {version}",
        f"- Input: {args.seconds} s 1080p30 testsrc2 + sine (H.264 ultrafast + AAC), generated",
        f"- Command (both sides): `{shlex.join(shown)}`",
        f"- Runs: {args.runs} raw and {args.runs} wrapped, alternating, in one process "
        "(after one wrapped warm-up run)",
        f"- Benchmark: `python benchmarks/bench_wrapper.py --runs {args.runs} "
        f"--seconds {args.seconds} --preset {args.preset}`",
        "",
        "| | median wall (s) | walls (s) | ffmpeg CPU (s) | Python CPU (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for label, runs, peak_kind in rows:
        sampler = ""
        if runs[0].sampler_peak_mb is not None:
            sampler = f", {statistics.median(r.sampler_peak_mb or 0 for r in runs):.1f} (sampler)"
        lines.append(
            f"| {label} | {_median(runs, 'wall_s'):.2f} | {_list(r.wall_s for r in runs)} | "
            f"{_median(runs, 'child_cpu_s'):.2f} | {_median(runs, 'parent_cpu_s'):.3f} | "
            f"{_median(runs, 'peak_mb'):.1f} ({peak_kind}){sampler} |"
        )
    lines += [
        "",
        f"- **Median wall ratio wrapped/raw: {wall_ratio:.3f}** (per pair: "
        f"{_list(pair_ratios, 3)}); target <= {TARGET_RATIO}: "
        f"{'met' if wall_ratio <= TARGET_RATIO else 'MISSED'}.",
        f"- CPU ratio wrapped/raw (ffmpeg + Python, user + sys): {cpu_ratio:.3f}.",
        f"- Fixed cost per job (1 s 160x120 to null, median of 15): raw {fixed_ms[0]:.1f} ms, "
        f"wrapped {fixed_ms[1]:.1f} ms (+{fixed_ms[1] - fixed_ms[0]:.1f} ms).",
        "",
        "The wrapper adds three threads (stderr drain, progress reader, an RSS watchdog at 20 Hz",
        "reading a kept-open /proc/<pid>/statm), one budget reservation and `-progress`.",
        "On a shared 2-CPU machine single walls swing with other load; CPU time does not.",
    ]
    return "\n".join(lines)


def _list(values: Iterable[float], digits: int = 2) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


if __name__ == "__main__":
    sys.exit(main())
