"""Shared fixtures: real media generated with ffmpeg's lavfi sources, never committed."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

# Property tests run on shared 2-core machines: a slow example is load, not a failure.
settings.register_profile("montage", deadline=None)
settings.load_profile("montage")

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


@pytest.fixture(scope="session")
def ffmpeg_exe() -> str:
    """The ffmpeg binary the tests use to *make* media (the imageio-ffmpeg wheel's)."""
    return _ffmpeg_exe()


MakeClip = Callable[..., Path]


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory: pytest.TempPathFactory, ffmpeg_exe: str) -> MakeClip:
    """Factory for generated clips, cached per session by their parameters.

    ``make_clip(duration=4, size="320x240", rate=25, audio=True, gop=25, vcodec="libx264",
    source="testsrc2", ext="mp4", tone=440, extra=())`` returns the path of a file made with
    ``-f lavfi testsrc2/sine``. Treat it as read-only: it is shared between tests.
    """
    cache_dir = tmp_path_factory.mktemp("clips")
    made: dict[str, Path] = {}

    def make(
        duration: float = 4.0,
        size: str = "320x240",
        rate: int = 25,
        audio: bool = True,
        gop: int | None = 25,
        vcodec: str = "libx264",
        source: str = "testsrc2",
        ext: str = "mp4",
        tone: int = 440,
        sample_rate: int = 48000,
        extra: tuple[str, ...] = (),
        name: str | None = None,
    ) -> Path:
        key = repr(
            (duration, size, rate, audio, gop, vcodec, source, ext, tone, sample_rate, extra)
        )
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        if digest in made and name is None:
            return made[digest]
        out = cache_dir / (name or f"clip_{digest}.{ext}")
        cmd = [
            ffmpeg_exe,
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"{source}=size={size}:rate={rate}:duration={duration}",
        ]
        if audio:
            cmd += [
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency={tone}:sample_rate={sample_rate}:duration={duration}",
            ]
        cmd += ["-c:v", vcodec]
        if vcodec in ("libx264", "libx265"):
            cmd += ["-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        if gop is not None:
            cmd += ["-g", str(gop)]
        if audio:
            cmd += ["-c:a", "aac", "-b:a", "96k"]
        cmd += [*extra, str(out)]
        subprocess.run(cmd, check=True)
        if name is None:
            made[digest] = out
        return out

    return make


@pytest.fixture(scope="session")
def clip(make_clip: MakeClip) -> Path:
    """A 4 s 320x240 25 fps H.264 + AAC clip with a keyframe every second."""
    return make_clip()


@pytest.fixture
def shared_dir() -> Path:
    """The read-only ``../shared`` folder beside the checkout; skipped where it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent (a user's clone has no ../shared)")
    return SHARED_DIR


@pytest.fixture(autouse=True)
def no_leaked_child_processes() -> object:
    """Every test must reap what it starts: a child left running fails the test that left it."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leaked = [p for p in me.children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(leaked, timeout=3)
    if alive:
        names = []
        for proc in alive:
            try:
                names.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
            except psutil.Error:
                continue
            proc.kill()
        if names:
            pytest.fail("child processes left running:\n" + "\n".join(names))


def polled_peak_mb(argv: list[str], interval_s: float = 0.005) -> float:
    """Run ``argv`` to its end; its own peak RSS, the ``VmHWM`` polled every ``interval_s``.

    Not ``wait4``'s ``ru_maxrss``: that also counts the RSS the child inherited when pytest
    forked it (over 100 MiB late in a full run), which would swamp a small encode's peak.
    """
    from montage.ffmpeg.watch import peak_rss_bytes

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    try:
        while proc.poll() is None:
            peak = max(peak, peak_rss_bytes(proc.pid))
            time.sleep(interval_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert peak > 0
    return peak / 1048576.0


def truncated_copy(src: Path, dst: Path, size: int) -> Path:
    """``dst``: the first ``size`` bytes of ``src`` (a file cut off mid-write)."""
    dst.write_bytes(src.read_bytes()[:size])
    return dst
