"""Soak: many sequential extract jobs in one process must not leak memory, fds or children.

Why: a service calls ``VideoEditor.extract_and_concatenate_efficient`` all day. Every job
starts ffmpeg children, reader threads, pipes, temp folders and budget reservations; if any
of them is kept (a thread, an fd, an unreaped child, a registry entry), it shows up here.

How: memory management is set up as an application would (``setup_memory_management()``, the
10 Hz sampler running), a 4 s 320x240 H.264 + AAC clip is generated, then ``--jobs`` edits run
one after another in this process, alternating ``accurate`` (re-encode: pieces + join) and
``copy`` (stream copy) modes, each cutting one 2 s segment into a fresh output that is then
deleted. After ``--warmup`` jobs (imports, caches, first-use allocations) the process's RSS
(``VmRSS`` after ``gc.collect()``) and its open fd count (``/proc/self/fd``) are the baseline;
at the end they are read again, as are zombie and live children.

Targets (issue 6): RSS growth < 5 MiB after the warm-up, fd count constant, no zombies.

Run: ``.venv/bin/python benchmarks/bench_soak.py [--jobs 200] [--warmup 10]``
(or ``benchmarks/run.py soak --save`` to write ``benchmarks/results/soak.md``).
"""

import argparse
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TARGET_RSS_GROWTH_MB = 5.0
MODES = ("accurate", "copy")


@dataclass
class SoakResult:
    jobs: int
    warmup: int
    baseline_rss_mb: float
    final_rss_mb: float
    peak_rss_mb: float
    baseline_fds: int
    final_fds: int
    max_fds: int
    zombies: int
    live_children: int
    elapsed_s: float
    rss_after_mb: list[float] = field(default_factory=list)

    @property
    def rss_growth_mb(self) -> float:
        return self.final_rss_mb - self.baseline_rss_mb

    @property
    def ok(self) -> bool:
        return (
            self.rss_growth_mb < TARGET_RSS_GROWTH_MB
            and self.final_fds == self.baseline_fds
            and self.zombies == 0
            and self.live_children == 0
        )


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settled_fds() -> int:
    """The fd count once the memory sampler has ticked after the last job.

    Why: the sampler keeps the ``/proc`` files of the processes and threads it saw on its last
    tick open (a bounded cache); the job's threads and ffmpeg have ended, but their files close
    at the next tick (100 ms), so a count taken before it counts ghosts, not leaks.
    """
    time.sleep(0.35)
    return _fds()


def make_clip(folder: Path) -> Path:
    import imageio_ffmpeg

    out = folder / "soak-source.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=4",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25",
         "-c:a", "aac", "-b:a", "96k", str(out)],
        check=True,
    )  # fmt: skip
    return out


def soak(source: Path, out_dir: Path, jobs: int = 200, warmup: int = 10) -> SoakResult:
    """Run ``jobs`` edits of ``source`` in this process and measure what stays behind."""
    import psutil

    from montage.runtime import setup_memory_management
    from montage.video.editor import VideoEditor
    from montage.video.segments import VideoSegment

    setup_memory_management(install_signal_handlers=False)
    editor = VideoEditor()
    me = psutil.Process()
    baseline_rss = baseline_fds = 0.0
    peak_rss, max_fds = 0.0, 0
    rss_after: list[float] = []
    started = time.monotonic()
    for i in range(jobs):
        out = out_dir / f"soak-{i}.mp4"
        report = editor.extract_and_concatenate_efficient(
            str(source), [VideoSegment(1.0, 3.0, str(source))], str(out), mode=MODES[i % 2]
        )
        if abs(report.output_duration_s - 2.0) > 0.1:
            raise RuntimeError(f"job {i}: output lasts {report.output_duration_s} s, not 2 s")
        out.unlink()
        gc.collect()
        rss, fds = _rss_mb(), _fds()
        rss_after.append(rss)
        peak_rss, max_fds = max(peak_rss, rss), max(max_fds, fds)
        if i + 1 == warmup:
            baseline_rss, baseline_fds = rss, _settled_fds()
    elapsed = time.monotonic() - started
    final_fds = _settled_fds()
    children = me.children(recursive=True)
    zombies = sum(1 for c in children if c.status() == psutil.STATUS_ZOMBIE)
    return SoakResult(
        jobs=jobs,
        warmup=warmup,
        baseline_rss_mb=baseline_rss,
        final_rss_mb=_rss_mb(),
        peak_rss_mb=peak_rss,
        baseline_fds=int(baseline_fds),
        final_fds=final_fds,
        max_fds=max_fds,
        zombies=zombies,
        live_children=len(children) - zombies,
        elapsed_s=elapsed,
        rss_after_mb=rss_after,
    )


def _machine() -> str:
    import psutil

    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = psutil.virtual_memory().total / 1024**3
    return (
        f"{cpu}, {os.cpu_count()} cores (shared with other test runs), {ram:.1f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def _ffmpeg_version() -> str:
    from montage.ffmpeg.binary import find_ffmpeg

    binary = find_ffmpeg()
    return f"{binary.version} ({binary.source})"


def render(result: SoakResult, command: str) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    r = result
    checkpoints = [r.warmup, r.jobs // 2, r.jobs]
    trail = ", ".join(f"after {n}: {r.rss_after_mb[n - 1]:.1f}" for n in checkpoints if n >= 1)
    lines = [
        "## Soak: sequential extract jobs in one process",
        "",
        f"- Machine: {_machine()}",
        f"- ffmpeg: {_ffmpeg_version()}",
        f"- Command: `{command}`",
        f"- {r.jobs} edits of a 4 s 320x240 H.264+AAC clip (one 2 s segment each, alternating "
        f"accurate / copy), monitor sampling at 10 Hz; baseline after a {r.warmup}-job warm-up; "
        f"{r.elapsed_s:.0f} s in all ({1000 * r.elapsed_s / r.jobs:.0f} ms per job).",
        "",
        "| measure | after warm-up | at the end | target | |",
        "|---|---:|---:|---|---|",
        f"| RSS (MiB) | {r.baseline_rss_mb:.1f} | {r.final_rss_mb:.1f} "
        f"(growth {r.rss_growth_mb:+.1f}, peak {r.peak_rss_mb:.1f}) | growth < "
        f"{TARGET_RSS_GROWTH_MB:.0f} | {verdict(r.rss_growth_mb < TARGET_RSS_GROWTH_MB)} |",
        f"| open fds | {r.baseline_fds} | {r.final_fds} (max {r.max_fds}) | constant | "
        f"{verdict(r.final_fds == r.baseline_fds)} |",
        f"| zombie / live children | | {r.zombies} / {r.live_children} | 0 / 0 | "
        f"{verdict(r.zombies == 0 and r.live_children == 0)} |",
        "",
        f"- RSS trail (MiB): {trail}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.jobs:
        parser.error("need 1 <= --warmup < --jobs")
    with tempfile.TemporaryDirectory(prefix="montage-soak-") as folder:
        source = make_clip(Path(folder))
        out_dir = Path(folder) / "out"
        out_dir.mkdir()
        result = soak(source, out_dir, args.jobs, args.warmup)
    command = f".venv/bin/python benchmarks/bench_soak.py --jobs {args.jobs} --warmup {args.warmup}"
    print(render(result, command))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
