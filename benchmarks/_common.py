"""Shared helpers for the benchmarks: the machine, ffmpeg, cached clips and measured runs.

``measure(cmd)`` runs a command under GNU ``/usr/bin/time -v`` (when installed) and samples the
RSS of its whole process tree every 50 ms, so one run gives both peak figures the results quote:

* ``maxrss_mb``: ``/usr/bin/time -v`` "Maximum resident set size", i.e. the largest single
  process of the tree (the kernel reports the max RSS of the biggest waited-for descendant);
* ``tree_peak_mb``: the largest sum of RSS over the whole tree (Python + every ffmpeg child)
  seen by the sampler. Shared pages are counted once per process, so it can over-count a
  little; a process living less than 50 ms can be missed.

Clips are generated once under ``--workdir`` (default ``/tmp/montage-bench``) and reused: a
10-minute 1080p30 H.264 (x264 ultrafast, GOP 60) + AAC clip from lavfi ``testsrc2`` + ``sine``,
and longer ones made by joining it with the concat demuxer and ``-c copy`` (no re-encode).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

DEFAULT_WORKDIR = Path("/tmp/montage-bench")
DEFAULT_PEERS_VENV = Path("/tmp/peers/venv")
# opencv-python, not -headless: scenedetect's CLI needs the full build (MEASUREMENTS.md)
PEER_PACKAGES = ("moviepy", "scenedetect", "opencv-python")
GNU_TIME = "/usr/bin/time"
SAMPLE_INTERVAL_S = 0.05
MIB = 1048576


# ---------------------------------------------------------------- the machine and ffmpeg


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    """One line: CPU model, cores, RAM, kernel, Python."""
    ram_gib = psutil.virtual_memory().total / (1024**3)
    return (
        f"{cpu_model()}, {os.cpu_count()} cores (shared with other engineers' test runs), "
        f"{ram_gib:.1f} GiB RAM, Linux {platform.release()}, Python {platform.python_version()}"
    )


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_version(exe: str | None = None) -> str:
    out = subprocess.run(
        [exe or ffmpeg_exe(), "-hide_banner", "-version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    first = out.stdout.splitlines()[0] if out.stdout else "unknown"
    return first.split(" Copyright")[0]


def ffmpeg_version_note() -> str:
    """The ffmpeg version line for a report of a benchmark that does not itself need ffmpeg."""
    try:
        return ffmpeg_version()
    except Exception as error:  # such a benchmark only reports it
        return f"unavailable ({error})"


def has_gnu_time() -> bool:
    return os.access(GNU_TIME, os.X_OK)


def show(cmd: Sequence[str]) -> str:
    """A command as it would be typed (long paths shortened to their names)."""
    return shlex.join(str(part) for part in cmd)


def shorten(cmd: Sequence[str], replacements: dict[str, str]) -> str:
    text = show(cmd)
    for long, short in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(long, short)
    return text


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ensure_peers_venv(venv: str | Path = DEFAULT_PEERS_VENV, install: bool = True) -> Path:
    """The peers' own venv (MoviePy, PySceneDetect): never the project's; created if missing."""
    venv = Path(venv)
    python = venv / "bin" / "python"
    if install and not (venv / "bin" / "scenedetect").exists():
        if not python.exists():
            subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES],
            check=True,
            capture_output=True,
        )
    return venv


def peer_versions(venv: Path) -> str:
    code = (
        "import importlib.metadata as m\n"
        "print(', '.join(f'{p} {m.version(p)}' for p in "
        f"{list(PEER_PACKAGES)!r}))"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


# ---------------------------------------------------------------- clips


def workdir(path: str | Path | None) -> Path:
    folder = Path(path) if path else DEFAULT_WORKDIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _atomic_ffmpeg(cmd_before_output: list[str], target: Path) -> None:
    part = target.with_name(target.name + ".part.mp4")
    part.unlink(missing_ok=True)
    try:
        subprocess.run([*cmd_before_output, str(part)], check=True, capture_output=True)
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)


def clip_command(ffmpeg: str, seconds: int) -> list[str]:
    """The ffmpeg command generating the base clip (without the output path).

    No ``-shortest``: both sources last ``seconds`` (with it, ffmpeg n9 was seen here holding
    ~1 GB RSS while encoding).
    """
    return [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "60",
        "-c:a", "aac", "-b:a", "128k", "-f", "mp4",
    ]  # fmt: skip


def base_clip(folder: Path, ffmpeg: str | None = None, minutes: int = 10) -> Path:
    """The cached ``minutes``-long 1080p30 clip, generated on first use (a few minutes)."""
    target = folder / f"clip_{minutes * 60}s_1080p30.mp4"
    if not target.exists():
        _atomic_ffmpeg(clip_command(ffmpeg or ffmpeg_exe(), minutes * 60), target)
    return target


def concat_command(ffmpeg: str, listing: Path) -> list[str]:
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "concat", "-safe", "0", "-i", str(listing),
        "-map", "0", "-c", "copy", "-movflags", "+faststart", "-f", "mp4",
    ]  # fmt: skip


def repeated_clip(folder: Path, base: Path, times: int, ffmpeg: str | None = None) -> Path:
    """``base`` joined ``times`` times (concat demuxer, ``-c copy``), cached next to it."""
    target = folder / f"{base.stem}_x{times}.mp4"
    if not target.exists():
        listing = folder / f"{target.stem}.txt"
        escaped = str(base.resolve()).replace("'", "'\\''")
        listing.write_text(f"file '{escaped}'\n" * times)
        _atomic_ffmpeg(concat_command(ffmpeg or ffmpeg_exe(), listing), target)
    return target


# ---------------------------------------------------------------- measured runs


@dataclass
class Run:
    """One measured run of a command."""

    cmd: list[str]
    wall_s: float
    tree_peak_mb: float
    maxrss_mb: float | None  # /usr/bin/time -v: the largest single process
    cpu_s: float | None  # user + system of the whole tree (time -v)
    returncode: int
    stdout: str
    stderr: str
    extra: dict[str, object] = field(default_factory=dict)

    def check(self) -> Run:
        if self.returncode != 0:
            raise RuntimeError(
                f"{show(self.cmd)[:300]} failed with exit {self.returncode}: {self.stderr[-1500:]}"
            )
        return self


def _tree_rss(processes: list[psutil.Process]) -> int:
    total = 0
    for proc in processes:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return total


class TreeSampler:
    """Samples the summed RSS of ``pid``'s descendants (and ``pid`` itself unless excluded)."""

    def __init__(self, pid: int, include_root: bool = True, interval_s: float = SAMPLE_INTERVAL_S):
        self.root = psutil.Process(pid)
        self.include_root = include_root
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-sampler")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                procs = self.root.children(recursive=True)
                if self.include_root:
                    procs.append(self.root)
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, _tree_rss(procs))
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / MIB


def parse_time_v(text: str) -> dict[str, str]:
    """``/usr/bin/time -v`` output as {field: value} (``Maximum resident set size (kbytes)``...)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        # "Elapsed (wall clock) time (h:mm:ss or m:ss): 0:01.23" has colons in its value
        match = re.match(r"^(.*?\)|[^:]+):\s*(.*)$", line)
        if match:
            fields[match.group(1).strip()] = match.group(2).strip()
    return fields


def measure(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float | None = None,
    stdout_to_devnull: bool = False,
) -> Run:
    """Run ``cmd`` under ``/usr/bin/time -v`` with the 50 ms tree sampler; see the module doc."""
    cmd = [str(c) for c in cmd]
    with tempfile.NamedTemporaryFile(prefix="bench-time-", suffix=".txt", delete=False) as tf:
        time_file = Path(tf.name)
    wrapped = [GNU_TIME, "-v", "-o", str(time_file), *cmd] if has_gnu_time() else cmd
    try:
        started = time.monotonic()
        child = subprocess.Popen(
            wrapped,
            stdout=subprocess.DEVNULL if stdout_to_devnull else subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
        )
        # under time(1) the root is time itself (~2 MiB): count only what it runs
        with TreeSampler(child.pid, include_root=not has_gnu_time()) as sampler:
            try:
                out, err = child.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
            wall = time.monotonic() - started
        fields = parse_time_v(time_file.read_text()) if has_gnu_time() else {}
    finally:
        time_file.unlink(missing_ok=True)
    maxrss = fields.get("Maximum resident set size (kbytes)")
    user, system = fields.get("User time (seconds)"), fields.get("System time (seconds)")
    return Run(
        cmd=cmd,
        wall_s=wall,
        tree_peak_mb=sampler.peak_mb,
        maxrss_mb=int(maxrss) / 1024 if maxrss else None,
        cpu_s=float(user) + float(system) if user and system else None,
        returncode=child.returncode,
        stdout=(out or b"").decode(errors="replace"),
        stderr=err.decode(errors="replace"),
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def summary(runs: Sequence[Run]) -> dict[str, float | None]:
    """Medians of wall, tree peak, largest-process peak and CPU over ``runs``."""
    maxrss = [r.maxrss_mb for r in runs if r.maxrss_mb is not None]
    cpu = [r.cpu_s for r in runs if r.cpu_s is not None]
    return {
        "wall_s": median([r.wall_s for r in runs]),
        "tree_peak_mb": median([r.tree_peak_mb for r in runs]),
        "maxrss_mb": median(maxrss) if maxrss else None,
        "cpu_s": median(cpu) if cpu else None,
        "min_wall_s": min(r.wall_s for r in runs),
        "max_wall_s": max(r.wall_s for r in runs),
    }


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def which(name: str) -> str | None:
    return shutil.which(name)
