"""VideoEditor side by side with the raw ffmpeg commands it replaces (10-minute 1080p clip).

Prints a Markdown section. Copy mode is compared with the equivalent raw ffmpeg stream copies
(one ``-ss kf -t dur -c copy`` per segment + the concat demuxer ``-c copy``); smart with
accurate. Walls are medians of runs interleaved in one session (so the machine's load hits
both sides alike); peaks are process-tree RSS (the runner and all its children), sampled
every 10 ms by a separate sampler over a child process running the job.

    python benchmarks/bench_extract.py [--runs 5] [--clip PATH] [--segment-s 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CLIP_SECONDS = 600
STARTS_S = (61.3, 247.55, 433.8)  # not on keyframes (GOP 60 at 30 fps = every 2 s)
SAMPLE_S = 0.01


def ffmpeg_exe() -> str:
    from montage.ffmpeg.binary import ffmpeg_path

    return ffmpeg_path()


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    load = os.getloadavg()[0]
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"{mem_kib / 1048576:.0f} GiB RAM, load average {load:.1f} at start, "
        f"Python {platform.python_version()}"
    )


def ffmpeg_version(ffmpeg: str) -> str:
    out = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def make_clip(ffmpeg: str, folder: Path) -> Path:
    """The 10-minute 1080p30 H.264 (ultrafast, -g 60) + AAC clip, made once and reused."""
    clip = folder / f"clip_{CLIP_SECONDS}s_1080p.mp4"
    if clip.exists():
        return clip
    partial = clip.with_suffix(".partial.mp4")
    src = f"testsrc2=size=1920x1080:rate=30:duration={CLIP_SECONDS}"
    tone = f"sine=frequency=440:sample_rate=48000:duration={CLIP_SECONDS}"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", src, "-f", "lavfi", "-i", tone,
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "60",
         "-c:a", "aac", "-b:a", "128k", str(partial)],
        check=True,
    )  # fmt: skip
    partial.replace(clip)
    return clip


# --- process-tree peak -----------------------------------------------------------------------


def _tree_rss_bytes(pid: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * page
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def tree_peak(argv: list[str]) -> tuple[float, float]:
    """Run ``argv``; return (wall seconds, peak RSS of its whole process tree in MiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_bytes(proc.pid))
        time.sleep(SAMPLE_S)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed with {proc.returncode}")
    return wall, peak / 1048576


# --- the jobs --------------------------------------------------------------------------------


def raw_copy_script(ffmpeg: str, clip: Path, cuts: list[tuple[float, float]], out: Path) -> str:
    """The raw ffmpeg equivalent of copy mode, as a shell script (what a user would type)."""
    lines = ["set -e", f"cd {out.parent}"]
    names = []
    for i, (start, end) in enumerate(cuts):
        name = f"raw_seg{i}.mp4"
        names.append(name)
        lines.append(
            f"{ffmpeg} -hide_banner -loglevel error -nostdin -y -ss {start:.6f} -i {clip} "
            f"-t {end - start:.6f} -c copy -avoid_negative_ts make_zero {name}"
        )
    listing = "\\n".join(f"file {n}" for n in names)
    lines.append(f"printf '{listing}\\n' > raw_list.txt")
    lines.append(
        f"{ffmpeg} -hide_banner -loglevel error -nostdin -y -f concat -i raw_list.txt "
        f"-c copy {out.name}"
    )
    return "\n".join(lines) + "\n"


def editor_argv(clip: Path, seg_s: float, out: Path, mode: str) -> list[str]:
    code = (
        "import sys\n"
        "from montage.video.editor import VideoEditor\n"
        "from montage.video.segments import VideoSegment\n"
        f"segs = [VideoSegment(s, s + {seg_s}, {str(clip)!r}) for s in {STARTS_S!r}]\n"
        f"r = VideoEditor().extract_and_concatenate_efficient({str(clip)!r}, segs, "
        f"{str(out)!r}, mode={mode!r})\n"
        "print(r.mode, r.output_duration_s, r.peak_memory_mb, r.elapsed_s)\n"
    )
    return [sys.executable, "-c", code]


def in_process(clip: Path, seg_s: float, out: Path, mode: str) -> tuple[float, object]:
    from montage.video.editor import VideoEditor
    from montage.video.segments import VideoSegment

    segs = [VideoSegment(s, s + seg_s, clip) for s in STARTS_S]
    started = time.perf_counter()
    report = VideoEditor().extract_and_concatenate_efficient(clip, segs, out, mode=mode)
    return time.perf_counter() - started, report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def interleave(
    runs: int, jobs: dict[str, Callable[[], tuple[float, float]]]
) -> dict[str, list[tuple[float, float]]]:
    """Run every job ``runs`` times, alternating, and collect (wall, peak) pairs."""
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    for _ in range(runs):
        for name, job in jobs.items():
            results[name].append(job())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--encode-runs", type=int, default=3)
    parser.add_argument("--segment-s", type=float, default=10.0)
    parser.add_argument("--clip", type=Path, default=None)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "montage-bench-extract"
    )
    args = parser.parse_args(argv)
    ffmpeg = ffmpeg_exe()
    args.cache.mkdir(parents=True, exist_ok=True)
    clip = args.clip or make_clip(ffmpeg, args.cache)
    seg_s = args.segment_s
    print("## VideoEditor.extract_and_concatenate_efficient vs raw ffmpeg\n")
    print(f"- machine: {machine()}")
    print(f"- ffmpeg: {ffmpeg_version(ffmpeg)}")
    print(
        f"- input: {CLIP_SECONDS} s 1920x1080 30 fps H.264 (x264 ultrafast, -g 60) + AAC, "
        f"{clip.stat().st_size / 1048576:.0f} MiB"
    )
    print(
        f"- 3 segments of {seg_s:g} s starting at {', '.join(f'{s:g}' for s in STARTS_S)} s "
        f"(none on a keyframe)\n"
    )
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        folder = Path(tmp)
        _, probe_report = in_process(clip, seg_s, folder / "probe.mp4", "copy")
        cuts = [(s.actual_start_s, s.actual_end_s) for s in probe_report.segments]  # type: ignore[attr-defined]
        script = folder / "raw.sh"
        script.write_text(raw_copy_script(ffmpeg, clip, cuts, folder / "raw.mp4"))
        copy_rows(args.runs, clip, seg_s, folder, script)
        encode_rows(args.encode_runs, clip, seg_s, folder)
    return 0


def copy_rows(runs: int, clip: Path, seg_s: float, folder: Path, script: Path) -> None:
    walls: dict[str, list[float]] = {"raw": [], "lib": []}
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["sh", str(script)], check=True)
        walls["raw"].append(time.perf_counter() - started)
        walls["lib"].append(in_process(clip, seg_s, folder / "lib.mp4", "copy")[0])
    ratios = [lib / raw for lib, raw in zip(walls["lib"], walls["raw"])]
    peaks = interleave(runs, {
        "raw": lambda: tree_peak(["sh", str(script)]),
        "lib": lambda: tree_peak(editor_argv(clip, seg_s, folder / "libc.mp4", "copy")),
    })  # fmt: skip
    raw_peak = median([p for _, p in peaks["raw"]])
    lib_peak = median([p for _, p in peaks["lib"]])
    print("### copy mode vs raw ffmpeg stream copy\n")
    print(
        "raw: `sh raw.sh` = 3x `ffmpeg -ss <kf> -i in.mp4 -t <dur> -c copy segN.mp4` + "
        "`ffmpeg -f concat -i list.txt -c copy out.mp4`; "
        "montage: `VideoEditor().extract_and_concatenate_efficient(in, segs, out, "
        "mode='copy')` (same keyframe-snapped cuts)\n"
    )
    print("| job | wall median (s) | walls (s) | tree peak median (MiB) | peaks (MiB) |")
    print("|---|---|---|---|---|")
    print(
        f"| raw ffmpeg | {median(walls['raw']):.2f} | {fmt(walls['raw'])} | {raw_peak:.1f} | "
        f"{fmt([p for _, p in peaks['raw']], 1)} |"
    )
    print(
        f"| montage copy (in-process) | {median(walls['lib']):.2f} | {fmt(walls['lib'])} | "
        f"{lib_peak:.1f} | {fmt([p for _, p in peaks['lib']], 1)} |"
    )
    child_walls = [w for w, _ in peaks["lib"]]
    print(
        f"| montage copy (child python, incl. interpreter start) | {median(child_walls):.2f} | "
        f"{fmt(child_walls)} | | |\n"
    )
    ratio = median(ratios)
    print(
        f"- wall ratio montage/raw (median of paired runs): **{ratio:.2f}** "
        f"(target <= 1.1: {'met' if ratio <= 1.1 else 'MISSED'}); pairs: {fmt(ratios)}"
    )
    print(
        f"- tree peak (python + ffmpeg): **{lib_peak:.1f} MiB** (target <= 100 MiB: "
        f"{'met' if lib_peak <= 100 else 'MISSED'})\n"
    )


def encode_rows(runs: int, clip: Path, seg_s: float, folder: Path) -> None:
    results = interleave(runs, {
        "smart": lambda: tree_peak(editor_argv(clip, seg_s, folder / "smart.mp4", "smart")),
        "accurate": lambda: tree_peak(editor_argv(clip, seg_s, folder / "acc.mp4", "accurate")),
    })  # fmt: skip
    print("### smart vs accurate (frame-exact cuts)\n")
    print(
        "Each run is a child Python process (interpreter start included), with the editor's "
        "default encoder (x264 ultrafast, CRF 18, 2 threads; smart's heads and tails on 1 "
        "thread) unless memory pressure lowers it.\n"
    )
    print("| mode | wall median (s) | walls (s) | tree peak median (MiB) | peaks (MiB) |")
    print("|---|---|---|---|---|")
    for name, pairs in results.items():
        walls, peaks = [w for w, _ in pairs], [p for _, p in pairs]
        print(
            f"| {name} | {median(walls):.2f} | {fmt(walls)} | {median(peaks):.1f} | "
            f"{fmt(peaks, 1)} |"
        )
    ratio = median([w for w, _ in results["accurate"]]) / median([w for w, _ in results["smart"]])
    print(f"\n- smart is **{ratio:.1f}x** faster than accurate here.\n")


if __name__ == "__main__":
    raise SystemExit(main())
