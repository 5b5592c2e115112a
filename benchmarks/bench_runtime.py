"""What does turning memory management on cost? (spec: < 10 MB RAM and < 1 % CPU overhead)

Why: ``setup_memory_management()`` is meant to be called at every application start and left
running for the whole job, so its price must be negligible. Side by side in one run, in fresh
child Pythons that sleep for ``--seconds``:

* ``bare``: Python alone;
* ``import``: ``import montage, montage.runtime`` (what importing costs, nothing started);
* ``setup``: ``setup_memory_management()`` with the sampler at 10 Hz, handlers installed.

Each child reports its RSS after setup (``VmRSS``), its peak RSS (``VmHWM``) and the CPU time
(user + sys of all threads, ``getrusage``) spent during the sleep; CPU share = CPU time / wall
time, in % of one core. The table shows medians over ``--runs`` runs. It also times, in this
process, ``get_safe_processing_config`` on a generated 720p clip (PyAV probe included) and without
a file, and one Prometheus scrape.

Run: ``.venv/bin/python benchmarks/bench_runtime.py [--seconds 10] [--runs 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

CHILD = """
import json, os, resource, sys, time
def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads, microsecond resolution
    return usage.ru_utime + usage.ru_stime
mode, seconds = sys.argv[1], float(sys.argv[2])
if mode in ("import", "setup"):
    import montage, montage.runtime
if mode == "setup":
    assert montage.runtime.setup_memory_management(interval_s=0.1)
rss = status_mb("VmRSS")
start = cpu_s()
time.sleep(seconds)
used = cpu_s() - start
print(json.dumps({"rss_mb": rss, "cpu_pct": 100 * used / seconds,
                  "maxrss_mb": status_mb("VmHWM")}))
"""
MODES = ("bare", "import", "setup")
TARGET_MB = 10.0
TARGET_CPU_PCT = 1.0


def _ffmpeg() -> tuple[str, str]:
    import imageio_ffmpeg

    exe = str(imageio_ffmpeg.get_ffmpeg_exe())
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30)
    return exe, out.stdout.splitlines()[0] if out.stdout else "unknown"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _run_child(mode: str, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def _children(seconds: float, runs: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(runs):  # interleaved, so machine noise hits every mode alike
        for mode in MODES:
            results[mode].append(_run_child(mode, seconds))
    return results


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def _time_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _in_process(ffmpeg_exe: str, repeat: int) -> dict[str, float]:
    from montage.adaptive import get_safe_processing_config
    from montage.memory.monitor import get_memory_monitor
    from montage.metrics import start_metrics_server

    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip720.mp4"
        subprocess.run(
            [ffmpeg_exe, "-v", "error", "-f", "lavfi", "-i",
             "testsrc2=size=1280x720:rate=25:duration=5", "-c:v", "libx264",
             "-preset", "ultrafast", str(clip)],
            check=True,
        )  # fmt: skip
        with_file = _time_ms(lambda: get_safe_processing_config(clip), repeat)
    without_file = _time_ms(get_safe_processing_config, repeat)
    server = start_metrics_server(0, get_memory_monitor())
    try:
        scrape = _time_ms(lambda: urllib.request.urlopen(server.url, timeout=10).read(), repeat)
    finally:
        server.stop()
    return {"config_file_ms": with_file, "config_ms": without_file, "scrape_ms": scrape}


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _report(args: argparse.Namespace, rows: dict[str, list[dict[str, float]]]) -> list[str]:
    exe, version = _ffmpeg()
    timing = _in_process(exe, args.repeat)
    bare_rss = _median(rows["bare"], "rss_mb")
    added_rss = _median(rows["setup"], "rss_mb") - bare_rss
    added_cpu = _median(rows["setup"], "cpu_pct") - _median(rows["bare"], "cpu_pct")
    lines = [
        "## Runtime overhead: setup_memory_management() left running",
        "",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
        f"- ffmpeg: {version}",
        f"- Command: `.venv/bin/python benchmarks/bench_runtime.py --seconds {args.seconds:g} "
        f"--runs {args.runs} --repeat {args.repeat}`",
        f"- Medians of {args.runs} interleaved runs; each child sleeps {args.seconds:g} s.",
        "",
        "| child | RSS after start (MiB) | peak RSS (MiB) | CPU during sleep (% of one core) |",
        "|---|---:|---:|---:|",
    ]
    for mode in MODES:
        lines.append(
            f"| {mode} | {_median(rows[mode], 'rss_mb'):.1f} | "
            f"{_median(rows[mode], 'maxrss_mb'):.1f} | {_median(rows[mode], 'cpu_pct'):.3f} |"
        )
    lines += [
        "",
        f"- Added by import + setup + 10 Hz sampler: **{added_rss:.1f} MiB RSS** (target < "
        f"{TARGET_MB:.0f}: {_verdict(added_rss < TARGET_MB)}), **{added_cpu:.3f} % of one core** "
        f"(target < {TARGET_CPU_PCT:.0f} %: {_verdict(added_cpu < TARGET_CPU_PCT)}).",
        f"- `get_safe_processing_config(clip)` on a 720p clip (PyAV probe included): "
        f"{timing['config_file_ms']:.1f} ms; without a file: {timing['config_ms']:.2f} ms "
        f"(medians of {args.repeat}).",
        f"- One Prometheus scrape of /metrics over loopback: {timing['scrape_ms']:.2f} ms "
        f"(median of {args.repeat}).",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    rows = _children(args.seconds, args.runs)
    print("\n".join(_report(args, rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
