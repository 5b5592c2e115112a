"""Measure ffmpeg's peak RSS on real runs and compare it with ``predict_peak_mb``.

Why: the budget admits ffmpeg children by their *predicted* peak, so the model's error is the
margin every reservation needs. Each case runs the real ffmpeg (the one ``montage`` would use)
on a clip generated here with lavfi ``testsrc2`` + ``sine``; the peak is the child's
``VmHWM`` of the ffmpeg process (the kernel's high-water mark of its own RSS), polled every 5 ms.

Run: ``.venv/bin/python benchmarks/bench_model.py [--runs 3] [--quick]``; prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from montage.ffmpeg.profiles import (
    X265_PRESETS,
    FFmpegMemoryProfile,
    cpu_count,
    predict_peak_mb,
    profile_settings,
)

RESOLUTIONS = {
    "480p": (854, 480),
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "2160p": (3840, 2160),
}
TARGET_PCT = 25.0


@dataclass(frozen=True)
class Case:
    """One measured ffmpeg run and the model inputs that describe it."""

    name: str
    resolution: str
    operation: str  # encode | decode | copy | analyze
    profile: FFmpegMemoryProfile | None = None
    codec: str = "libx264"
    preset: str | None = None
    threads: int | None = None
    rc_lookahead: int | None = None
    extra: tuple[str, ...] = field(default=())


def ffmpeg_exe() -> str:
    """The ffmpeg binary montage runs (binary.find_ffmpeg if present, else imageio-ffmpeg's)."""
    try:
        from montage.ffmpeg.binary import ffmpeg_path

        return ffmpeg_path()
    except Exception:  # any failure: fall back to the wheel's binary
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())


def peak_rss_mb(argv: Sequence[str]) -> float:
    """Run ``argv`` to completion; its peak RSS in MiB: ``VmHWM`` polled every 5 ms.

    Not ``wait4``'s ``ru_maxrss``: that also counts the RSS the child inherited from this
    Python process at fork, which inflates small peaks (stream copy, decode).
    """
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    drained: list[bytes] = []
    drain = threading.Thread(target=lambda: drained.append(proc.stderr.read()), daemon=True)
    drain.start()
    peak_kib = 0
    try:
        while proc.poll() is None:
            peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
            time.sleep(0.005)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    drain.join()
    proc.stderr.close()
    if proc.returncode != 0:
        stderr = b"".join(drained).decode(errors="replace")
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(argv)}\n{stderr[-800:]}")
    return peak_kib / 1024.0


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def make_input(exe: str, folder: Path, resolution: str, seconds: float) -> Path:
    """An H.264 (preset fast: 3 B-frames, 2 refs) + AAC clip, like a typical camera/web file."""
    width, height = RESOLUTIONS[resolution]
    out = folder / f"in_{resolution}.mp4"
    if not out.exists():
        size = f"{width}x{height}"
        subprocess.run(
            [exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
             "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={seconds}",
             "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
             "-c:v", "libx264", "-preset", "fast", "-pix_fmt", "yuv420p", "-g", "60",
             "-c:a", "aac", "-b:a", "96k", str(out)],
            check=True,
        )  # fmt: skip
    return out


def case_argv(exe: str, case: Case, source: Path) -> list[str]:
    """The ffmpeg command of ``case``: knobs placed where the profile puts them."""
    settings = profile_settings(case.profile) if case.profile else None
    argv = [exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if settings and settings.filter_threads:
        argv += ["-filter_threads", str(settings.filter_threads)]
    if settings and settings.decoder_threads:
        argv += ["-threads", str(settings.decoder_threads)]
    argv += ["-i", str(source)]
    if case.operation == "copy":
        return [*argv, "-c", "copy", "-f", "mp4", os.devnull]
    if case.operation == "decode":
        return [*argv, "-f", "null", "-"]
    if case.operation == "analyze":
        return [*argv, "-an", "-vf", "scale=64:36,format=gray", "-f", "rawvideo", os.devnull]
    return [*argv, *encoder_args(case, settings), "-c:a", "aac", "-f", "null", "-"]


def encoder_args(case: Case, settings: object) -> list[str]:
    """``-c:v``, ``-preset``, ``-threads`` and lookahead options for an encode case."""
    from montage.ffmpeg.profiles import ProfileSettings

    prof = settings if isinstance(settings, ProfileSettings) else None
    preset = case.preset or (prof.preset if prof else "medium")
    threads = case.threads if case.threads is not None else (prof.encoder_threads if prof else 0)
    lookahead = (
        case.rc_lookahead
        if case.rc_lookahead is not None
        else (prof.rc_lookahead if prof else None)
    )
    args = ["-c:v", case.codec, "-preset", preset, *case.extra]
    if threads:
        args += ["-threads", str(threads)]
    if lookahead is not None and case.codec == "libx265":
        # x265 refuses a lookahead not deeper than its B-frame run (rc-lookahead=0 fails)
        bframes = X265_PRESETS.get(preset, X265_PRESETS["medium"])[0]
        args += ["-x265-params", f"rc-lookahead={max(lookahead, bframes + 1)}"]
    elif lookahead is not None:
        args += ["-x264-params", f"rc-lookahead={lookahead}"]
    return args


def predicted_mb(case: Case) -> float:
    """The model's prediction for ``case``."""
    return predict_peak_mb(
        RESOLUTIONS[case.resolution], case.profile, case.operation, codec=case.codec,
        preset=case.preset, threads=case.threads, rc_lookahead=case.rc_lookahead,
    )  # fmt: skip


def default_cases(quick: bool = False) -> list[Case]:
    """3 resolutions x 4 profiles of encodes, decode/copy/analyze per resolution, and extras."""
    cases = [
        Case(f"encode {res} {p.value}", res, "encode", p)
        for res in ("480p", "720p", "1080p")
        for p in FFmpegMemoryProfile
    ]
    for res in ("480p", "720p", "1080p"):
        cases += [
            Case(f"decode {res} minimal", res, "decode", FFmpegMemoryProfile.MINIMAL),
            Case(f"decode {res} auto threads", res, "decode", FFmpegMemoryProfile.HIGH),
            Case(f"copy {res}", res, "copy"),
            Case(f"analyze {res} low", res, "analyze", FFmpegMemoryProfile.LOW),
        ]
    if quick:
        return cases
    return [*cases, *extra_cases()]


def extra_cases() -> list[Case]:
    """Settings outside the profiles: more threads, other presets, x265, 2160p."""
    hi, mini, low = FFmpegMemoryProfile.HIGH, FFmpegMemoryProfile.MINIMAL, FFmpegMemoryProfile.LOW
    return [
        Case("encode 1080p medium threads 8", "1080p", "encode", hi, threads=8),
        Case("encode 1080p veryfast threads 1 (no profile)", "1080p", "encode", None,
             preset="veryfast", threads=1),
        Case("encode 1080p medium lookahead 10", "1080p", "encode", hi, rc_lookahead=10),
        Case("encode 1080p superfast threads 2", "1080p", "encode", low, preset="superfast"),
        Case("encode 720p x265 ultrafast", "720p", "encode", mini, codec="libx265"),
        Case("encode 720p x265 medium (no profile)", "720p", "encode", None, codec="libx265"),
        Case("encode 720p mpeg4", "720p", "encode", low, codec="mpeg4"),
        Case("decode 2160p auto threads", "2160p", "decode", hi),
        Case("encode 2160p minimal", "2160p", "encode", mini),
        Case("encode 2160p low", "2160p", "encode", low),
    ]  # fmt: skip


def measure(cases: Sequence[Case], runs: int, folder: Path) -> list[tuple[Case, float, float]]:
    """(case, median measured MiB, predicted MiB) for each case."""
    exe = ffmpeg_exe()
    rows = []
    for case in cases:
        seconds = 2.0 if case.resolution == "2160p" else 4.0
        source = make_input(exe, folder, case.resolution, seconds)
        argv = case_argv(exe, case, source)
        samples = [peak_rss_mb(argv) for _ in range(runs)]
        rows.append((case, statistics.median(samples), predicted_mb(case)))
        print(f"  measured {case.name}: {samples}", file=sys.stderr)
    return rows


def steady_state_check(exe: str, folder: Path) -> tuple[float, float]:
    """Peak of the same 1080p HIGH encode on 2 s and 8 s inputs: must not grow with duration."""
    case = Case("steady", "1080p", "encode", FFmpegMemoryProfile.HIGH)
    peaks = []
    for seconds in (2.0, 8.0):
        sub = folder / f"steady{int(seconds)}"
        sub.mkdir(exist_ok=True)
        peaks.append(peak_rss_mb(case_argv(exe, case, make_input(exe, sub, "1080p", seconds))))
    return peaks[0], peaks[1]


def report(
    rows: Sequence[tuple[Case, float, float]], runs: int, steady: tuple[float, float] | None
) -> str:
    """The Markdown section."""
    exe = ffmpeg_exe()
    version = subprocess.run([exe, "-version"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    lines = [
        "## ffmpeg peak-memory model (`montage.ffmpeg.profiles.predict_peak_mb`)",
        "",
        f"Machine: {platform.machine()}, {cpu_count()} CPUs available, Linux {platform.release()}; "
        f"{version}.",
        f"Command: `.venv/bin/python benchmarks/bench_model.py --runs {runs}`. Peak = child's "
        "`VmHWM` polled every 5 ms, median of "
        f"{runs} runs. Inputs: 4 s lavfi testsrc2 + sine (2 s at 2160p), H.264 preset fast + AAC; "
        "encodes also re-encode the audio to AAC and write to `-f null`.",
        "",
        "| case | measured MiB | predicted MiB | error % |",
        "|---|---:|---:|---:|",
    ]
    worst = 0.0
    misses = []
    for case, measured, predicted in rows:
        error = 100.0 * (predicted - measured) / measured
        worst = max(worst, abs(error))
        if abs(error) > TARGET_PCT:
            misses.append(case.name)
        lines.append(f"| {case.name} | {measured:.0f} | {predicted:.0f} | {error:+.1f} |")
    verdict = f"MISSED on {', '.join(misses)}." if misses else "met on every case."
    lines += ["", f"Worst error: {worst:.1f} % over {len(rows)} cases "
              f"(target ±{TARGET_PCT:.0f} %): {verdict}"]  # fmt: skip
    if steady:
        lines.append(f"Steady state: 1080p HIGH encode peaks at {steady[0]:.0f} MiB on a 2 s input "
                     f"and {steady[1]:.0f} MiB on an 8 s input.")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure every case, print the Markdown table; exit 1 if any case misses the target."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="only the profile/operation grid")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="montage_bench_model_") as tmp:
        folder = Path(tmp)
        rows = measure(default_cases(args.quick), args.runs, folder)
        steady = None if args.quick else steady_state_check(ffmpeg_exe(), folder)
    text = report(rows, args.runs, steady)
    print(text + f"\n(benchmark wall time {time.monotonic() - started:.0f} s)")
    return 0 if all(abs(p - m) <= m * TARGET_PCT / 100 for _, m, p in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
