"""Cutting 3 segments: montage ``VideoEditor`` (copy / smart / accurate) vs MoviePy 2.x.

Why (issue 4): a Python user who wants "these 3 pieces of my video, joined" picks MoviePy today;
``VideoEditor`` should be much faster and much leaner for the same job. Side by side on the
10-minute 1080p30 clip, in interleaved rounds (each job once per round, so all see the same
machine load; ratios are taken per round, then the median):

* ``montage-copy`` / ``montage-smart`` / ``montage-accurate``:
  ``VideoEditor().extract_and_concatenate_efficient(clip, segments, out, mode=...)`` in a fresh
  Python (the project venv), with the editor's default encoder (x264 ultrafast, CRF 18: the
  preset MoviePy is run with here, at a higher quality); ``montage-accurate-veryfast``: the
  same with ``VideoEditor(preset="veryfast")``, the smaller-file choice;
* ``moviepy``: ``VideoFileClip(clip)``, ``subclipped`` per segment, ``concatenate_videoclips``,
  ``write_videofile(preset="ultrafast")`` (libx264 + AAC) in a fresh Python of the peers' venv
  (``--peers-venv``, default ``/tmp/peers/venv``, created with MoviePy if missing).

Each run is measured by ``_common.measure``: ``/usr/bin/time -v`` max RSS (largest process) and
a 50 ms sampler of the whole process tree's RSS (MoviePy's ffmpeg reader/writer children
included). Each output's duration is probed. Raw-ffmpeg copy and smart-vs-accurate in detail are
in ``bench_extract.py``.

    .venv/bin/python benchmarks/run.py peers [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import (
    DEFAULT_PEERS_VENV,
    Run,
    base_clip,
    ensure_peers_venv,
    ffmpeg_exe,
    ffmpeg_version,
    fmt,
    has_gnu_time,
    load_average,
    machine,
    measure,
    median,
    peer_versions,
    shorten,
    summary,
    workdir,
)

ROOT = Path(__file__).resolve().parent.parent
# starts and ends off the 2 s keyframe grid, so smart/accurate really cut inside GOPs
SEGMENTS = [(30.5, 50.25), (200.1, 230.7), (400.33, 420.9)]

MONTAGE_CHILD = """
import json, sys
from montage.video.editor import VideoEditor
from montage.video.segments import VideoSegment
clip, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
segments = [VideoSegment(s, e, clip) for s, e in json.loads(sys.argv[4])]
preset = sys.argv[5] if len(sys.argv) > 5 else None  # None: the default encoder
editor = VideoEditor(preset=preset)
report = editor.extract_and_concatenate_efficient(clip, segments, out, mode=mode)
print(json.dumps(report.to_dict()))
"""

MOVIEPY_CHILD = """
import json, sys
from moviepy import VideoFileClip, concatenate_videoclips
clip, out = sys.argv[1], sys.argv[2]
source = VideoFileClip(clip)
parts = [source.subclipped(s, e) for s, e in json.loads(sys.argv[3])]
final = concatenate_videoclips(parts)
final.write_videofile(out, codec="libx264", audio_codec="aac", preset="ultrafast", logger=None)
source.close()
"""

# montage-<mode>[-<preset>]: the editor's default encoder, or the preset named
JOBS = (
    "montage-copy",
    "montage-smart",
    "montage-accurate",
    "montage-accurate-veryfast",
    "moviepy",
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _command(job: str, clip: Path, out: Path, peers_venv: Path) -> list[str]:
    segments = json.dumps(SEGMENTS)
    if job == "moviepy":
        return [str(peers_venv / "bin" / "python"), "-c", MOVIEPY_CHILD, str(clip), str(out),
                segments]  # fmt: skip
    mode, _, preset = job.removeprefix("montage-").partition("-")
    cmd = [sys.executable, "-c", MONTAGE_CHILD, str(clip), str(out), mode, segments]
    return cmd + ([preset] if preset else [])


def _encoder_text(enc: object) -> str:
    """The re-encoding settings an edit report says it used (MoviePy: x264 ultrafast)."""
    if not isinstance(enc, dict):
        return ""
    lookahead = enc.get("rc_lookahead")
    return (
        f"; re-encoded with {enc.get('encoder')} preset {enc.get('preset')}, CRF {enc.get('crf')}"
        f", threads {enc.get('threads') or 'auto'}"
        + (f", rc-lookahead {lookahead}" if lookahead is not None else "")
        + " (MoviePy: x264 ultrafast, CRF 23)"
    )


def _duration(path: Path) -> float | None:
    from montage.ffmpeg.probe import probe

    try:
        return probe(path).duration_s
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--workdir", default=None, help="clip cache (default /tmp/montage-bench)")
    parser.add_argument("--peers-venv", default=str(DEFAULT_PEERS_VENV))
    parser.add_argument("--no-install", action="store_true", help="do not create the peers venv")
    parser.add_argument("--only", default=None, help="comma-separated subset of the jobs")
    parser.add_argument("--segments", default=None, help="e.g. 1.5-3,4.2-6 (default: 3 fixed)")
    args = parser.parse_args(argv)
    if args.segments:
        SEGMENTS[:] = [
            (float(a), float(b)) for a, b in (p.split("-") for p in args.segments.split(","))
        ]

    folder = workdir(args.workdir)
    ffmpeg = ffmpeg_exe()
    clip = base_clip(folder, ffmpeg, minutes=10)
    venv = ensure_peers_venv(args.peers_venv, install=not args.no_install)
    jobs = [j for j in JOBS if not args.only or j in args.only.split(",")]
    if not (venv / "bin" / "python").exists():
        jobs = [j for j in jobs if j != "moviepy"]
    out_dir = folder / "peers-out"
    out_dir.mkdir(exist_ok=True)

    started = time.monotonic()
    load_before = load_average()
    runs: dict[str, list[Run]] = {job: [] for job in jobs}
    failures: dict[str, str] = {}
    durations: dict[str, float | None] = {}
    sizes: dict[str, int] = {}
    for _ in range(args.runs):
        for job in jobs:
            if job in failures:
                continue
            out = out_dir / f"{job}.mp4"
            out.unlink(missing_ok=True)
            cmd = _command(job, clip, out, venv)
            run = measure(cmd, env=_env(), cwd=ROOT)
            if run.returncode != 0:
                failures[job] = run.stderr.strip().splitlines()[-1:][0] if run.stderr else "?"
                print(f"[peers] {job} FAILED: {failures[job]}", file=sys.stderr, flush=True)
                continue
            if job.startswith("montage-"):
                run.extra = json.loads(run.stdout.strip().splitlines()[-1])
            durations[job] = _duration(out)
            sizes[job] = out.stat().st_size
            out.unlink(missing_ok=True)
            runs[job].append(run)
            print(
                f"[peers] {job}: {run.wall_s:.1f} s, tree {run.tree_peak_mb:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.monotonic() - started
    _report(
        args, clip, ffmpeg, venv, jobs, runs, failures, (durations, sizes), load_before, elapsed
    )
    return 0


def _report(
    args: argparse.Namespace,
    clip: Path,
    ffmpeg: str,
    venv: Path,
    jobs: list[str],
    runs: dict[str, list[Run]],
    failures: dict[str, str],
    outputs: tuple[dict[str, float | None], dict[str, int]],
    load_before: str,
    elapsed: float,
) -> None:
    expected = sum(e - s for s, e in SEGMENTS)
    print("## Peers: VideoEditor (copy / smart / accurate) vs MoviePy, 3 segments\n")
    print(f"- Machine: {machine()}")
    print(f"- ffmpeg: {ffmpeg_version(ffmpeg)} (imageio-ffmpeg static binary, MoviePy's too)")
    print(f"- Peers venv ({venv}): {peer_versions(venv)}")
    print(
        f"- Clip: 10 min 1080p30 H.264 (x264 ultrafast, -g 60) + AAC, lavfi testsrc2 + sine, "
        f"{clip.stat().st_size / 1e6:.0f} MB. Segments (s): "
        + ", ".join(f"{s}–{e}" for s, e in SEGMENTS)
        + f" = {expected:.2f} s of output; starts and ends are off the 2 s keyframe grid."
    )
    print(
        f"- Command: `.venv/bin/python benchmarks/run.py peers --runs {args.runs}`; medians of "
        f"{args.runs} interleaved rounds; total {elapsed / 60:.1f} min; load average before: "
        f"{load_before}, after: {load_average()}."
    )
    print(
        "- The 2 cores are shared with other engineers' test runs: absolute walls are noisy; "
        "the ratios, from runs interleaved in the same rounds, are what count."
    )
    gnu = "GNU `/usr/bin/time -v`" if has_gnu_time() else "(no /usr/bin/time: n/a)"
    print(
        f"- Peak memory: *largest process* = max RSS from {gnu}; *tree* = peak of the summed "
        "RSS of the whole process tree (Python + every ffmpeg child), sampled every 50 ms.\n"
    )
    print(
        "| job | wall (s), median | min–max | CPU (s) | largest process (MiB) | tree (MiB) "
        "| output (s) | output (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    durations, sizes = outputs
    for job in jobs:
        if not runs[job]:
            print(f"| {job} | failed: {failures.get(job, '?')[:120]} | | | | | | |")
            continue
        s = summary(runs[job])
        print(
            f"| {job} | {fmt(s['wall_s'])} | {fmt(s['min_wall_s'])}–{fmt(s['max_wall_s'])} "
            f"| {fmt(s['cpu_s'])} | {fmt(s['maxrss_mb'], 0)} | {fmt(s['tree_peak_mb'], 0)} "
            f"| {fmt(durations.get(job), 2)} | {fmt(sizes.get(job, 0) / 1e6 or None, 1)} |"
        )
    print()
    if runs.get("moviepy"):
        print("Side by side, MoviePy's figure / montage's, per round then median:\n")
        for job in jobs:
            if job == "moviepy" or not runs[job]:
                continue
            pairs = list(zip(runs["moviepy"], runs[job]))
            walls = [m.wall_s / j.wall_s for m, j in pairs]
            trees = [m.tree_peak_mb / j.tree_peak_mb for m, j in pairs]
            print(
                f"- {job}: wall **{median(walls):.2f}x** ("
                + ", ".join(f"{w:.2f}" for w in walls)
                + f"), tree memory **{median(trees):.2f}x** ("
                + ", ".join(f"{t:.2f}" for t in trees)
                + ")"
            )
        print()
    facts = []
    for job in jobs:
        if job.startswith("montage-") and runs[job]:
            r = runs[job][0].extra
            facts.append(
                f"- `{job}` report (first run): mode used {r['mode']}, ffmpeg runs "
                f"{r['ffmpeg_runs']}, output {r['output_duration_s']:.2f} s (expected "
                f"{r['expected_duration_s']:.2f} s, frames {r['expected_frames']}), largest ffmpeg "
                f"job tree {r['peak_memory_mb']:.0f} MiB, parent {r['parent_peak_rss_mb']:.0f} MiB"
                + (f", fallback: {r['fallback_reason']}" if r.get("fallback_reason") else "")
                + _encoder_text(r.get("encoder"))
            )
    if facts:
        print("\n".join(facts))
        print(
            "- Copy mode snaps each start back to the keyframe at or before it (GOP 2 s), "
            "so its output is longer than the requested segments."
        )
    for job, why in failures.items():
        print(f"- `{job}` failed: {why}")
    short = {ffmpeg: "ffmpeg", sys.executable: ".venv/bin/python", str(clip): "clip10.mp4"}
    short[str(venv / "bin" / "python")] = "/tmp/peers/venv/bin/python"
    short[MONTAGE_CHILD] = "$MONTAGE_CHILD"
    short[MOVIEPY_CHILD] = "$MOVIEPY_CHILD"
    out_dir = str(clip.parent / "peers-out")
    short[out_dir] = "out"
    print("\nExact commands:\n")
    for job in jobs:
        cmd = _command(job, clip, clip.parent / "peers-out" / f"{job}.mp4", venv)
        print(f"- {job}: `{shorten(cmd, short)}`")
    print("\n```python\n# $MONTAGE_CHILD" + MONTAGE_CHILD.rstrip() + "\n```")
    print("\n```python\n# $MOVIEPY_CHILD" + MOVIEPY_CHILD.rstrip() + "\n```")


if __name__ == "__main__":
    raise SystemExit(main())
