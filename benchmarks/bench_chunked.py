"""Chunked vs single-pass encode of a long 1080p clip: wall time and peak process-tree memory.

Why: chunking must not cost much speed (target: median wall ratio <= 1.15) and its peak memory
must be set by the chunk jobs running at once, not by the file's length (so a 5-minute and a
10-minute file peak alike). Runs alternate (single, chunked, single, chunked...) so both see the
same machine load; ratios are taken per round. Each job runs in a child process whose whole tree
(Python + ffmpeg children) is sampled every 50 ms.

    .venv/bin/python benchmarks/bench_chunked.py [--minutes 10] [--runs 2] [--preset ultrafast]
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
import threading
import time
from pathlib import Path
from typing import Any

import psutil

Run = tuple[float, float, str]  # (wall s, peak tree MiB, stdout)

_CHUNKED_CHILD = """
import dataclasses, json, sys
from montage.ffmpeg.chunks import transcode_in_chunks
report = transcode_in_chunks(sys.argv[1], sys.argv[2], sys.argv[3:], overwrite=True)
print(json.dumps(dataclasses.asdict(report)))
"""


def _tree_rss_bytes(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return total


def run_sampled(cmd: list[str], interval_s: float = 0.05) -> Run:
    """Run ``cmd``; return (wall s, peak tree RSS MiB, stdout), sampling every ``interval_s``."""
    started = time.monotonic()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = psutil.Process(child.pid)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, _tree_rss_bytes(root))
            except psutil.NoSuchProcess:
                return
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    wall_s = time.monotonic() - started
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{cmd[:3]}... failed ({child.returncode}): {err.decode()[-2000:]}")
    return wall_s, peak / 1048576, out.decode()


def make_clip(ffmpeg: str, path: Path, minutes: float) -> None:
    seconds = int(minutes * 60)
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "60",
         "-c:a", "aac", "-b:a", "128k", str(path)],
        check=True,
    )  # fmt: skip


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_gib:.0f} GiB, Linux {platform.release()}; "
        f"load avg at start {load} (shared machine)"
    )


def main(argv: list[str] | None = None) -> int:
    from montage.ffmpeg.binary import find_ffmpeg

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--short-minutes", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--preset", default="ultrafast")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    binary = find_ffmpeg()
    out_args = ["-c:v", "libx264", "-preset", args.preset, "-c:a", "aac", "-b:a", "128k"]
    with tempfile.TemporaryDirectory(prefix="bench_chunked_", dir=args.workdir) as tmp:
        work = Path(tmp)
        long_clip, short_clip = work / "long.mp4", work / "short.mp4"
        t0 = time.monotonic()
        make_clip(binary.path, long_clip, args.minutes)
        subprocess.run(
            [binary.path, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i",
             str(long_clip), "-t", str(args.short_minutes * 60), "-c", "copy", str(short_clip)],
            check=True,
        )  # fmt: skip
        gen_s = time.monotonic() - t0
        single_cmd = [binary.path, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                      "-i", str(long_clip), *out_args, str(work / "single.mp4")]  # fmt: skip

        def chunked_cmd(src: Path) -> list[str]:
            dst = work / f"chunked_{src.stem}.mp4"
            return [sys.executable, "-c", _CHUNKED_CHILD, str(src), str(dst), *out_args]

        rounds: list[tuple[Run, Run, dict[str, Any]]] = []
        for _ in range(args.runs):
            single = run_sampled(single_cmd)
            chunked = run_sampled(chunked_cmd(long_clip))
            rounds.append((single, chunked, json.loads(chunked[2])))
        short = run_sampled(chunked_cmd(short_clip))
        short_report = json.loads(short[2])

    print(_render(args, binary.version, binary.path, gen_s, out_args, rounds, short, short_report))
    return 0


def _render(
    args: argparse.Namespace,
    version: str,
    path: str,
    gen_s: float,
    out_args: list[str],
    rounds: list[tuple[Run, Run, dict[str, Any]]],
    short: Run,
    short_report: dict[str, Any],
) -> str:
    singles = [r[0] for r in rounds]
    chunks = [r[1] for r in rounds]
    reports = [r[2] for r in rounds]
    ratios = [c[0] / s[0] for s, c, _ in rounds]
    med = statistics.median
    rep = reports[-1]
    ratio = med(ratios)
    lines = [
        "## Chunked vs single-pass encode (`montage.ffmpeg.chunks.transcode_in_chunks`)",
        "",
        f"- Machine: {_machine()}",
        f"- ffmpeg: {version} (`{Path(path).name}`)",
        f"- Input: {args.minutes:g}-minute 1920x1080 30 fps testsrc2 + 48 kHz sine, x264 "
        f"ultrafast -g 60, AAC (generated in {gen_s:.0f} s); the {args.short_minutes:g}-minute "
        f"input is its first {args.short_minutes:g} minutes (stream copy)",
        f"- Output args (both): `{' '.join(out_args)}`",
        "- Single pass: `ffmpeg -i long.mp4 " + " ".join(out_args) + " single.mp4`",
        "- Chunked: `transcode_in_chunks(long.mp4, chunked.mp4, output_args)` in a child Python "
        "(defaults: chunk duration, workers = CPUs, audio encoded once)",
        f"- Runs: {args.runs} rounds, alternating single/chunked; memory = peak RSS of the whole "
        "process tree (Python + ffmpeg children) sampled every 50 ms",
        "",
        "| case | runs | median wall (s) | walls (s) | median peak tree (MiB) |",
        "|---|---|---|---|---|",
        _row(f"single pass, {args.minutes:g} min", singles),
        _row(
            f"chunked, {args.minutes:g} min ({rep['chunks']} chunks x "
            f"{rep['chunk_duration_s']:.0f} s, {rep['workers']} workers)",
            chunks,
        ),
        _row(f"chunked, {args.short_minutes:g} min ({short_report['chunks']} chunks)", [short]),
        "",
        f"- Wall ratio chunked/single (per round, median): **{ratio:.2f}** "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); target <= 1.15: "
        f"**{'met' if ratio <= 1.15 else 'missed'}**",
        f"- Chunked phases (last round): split {rep['split_s']:.1f} s, chunk encodes + audio "
        f"{rep['process_s']:.1f} s, join + verify {rep['join_s']:.1f} s; largest single chunk "
        f"job peak {rep['peak_chunk_memory_mb']:.0f} MiB",
        f"- Peak tree memory, chunked {args.short_minutes:g} min vs {args.minutes:g} min: "
        f"{short[1]:.0f} vs {med(c[1] for c in chunks):.0f} MiB (independent of length if "
        "these match); single pass: "
        f"{med(s[1] for s in singles):.0f} MiB",
        f"- Exactness (each run verified by the library): {rep['input_frames']} frames in, "
        f"{rep['output_frames']} out; duration {rep['input_duration_s']:.3f} s in, "
        f"{rep['output_duration_s']:.3f} s out",
    ]
    return "\n".join(lines)


def _row(label: str, runs: list[Run]) -> str:
    walls = [r[0] for r in runs]
    peaks = [r[1] for r in runs]
    return (
        f"| {label} | {len(runs)} | {statistics.median(walls):.1f} | "
        f"{', '.join(f'{w:.1f}' for w in walls)} | {statistics.median(peaks):.0f} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
