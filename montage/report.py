"""Memory reports: a timeline of a job's process-tree memory, for people to look at.

``MemoryRecorder`` samples the monitor (tree memory, ceiling, budget, pressure level) and every
tracked ffmpeg child's memory on its own thread while a job runs. ``write_memory_report``
draws it: a PNG with matplotlib (the optional ``plot`` extra), or a self-contained HTML page with
an inline SVG that needs nothing extra.
"""

from __future__ import annotations

import html
import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from montage.errors import ConfigError

LEVEL_COLOURS = {"low": "#e8f5e9", "moderate": "#fff8e1", "high": "#ffe0b2", "critical": "#ffcdd2"}


@dataclass
class Sample:
    t_s: float
    tree_mb: float
    ceiling_mb: float
    budget_mb: float | None
    level: str


@dataclass
class ChildLifetime:
    pid: int
    name: str
    start_s: float
    end_s: float
    peak_mb: float = 0.0


@dataclass
class MemoryRecorder:
    """Records memory every ``interval_s`` between ``start()`` and ``stop()`` (or as a ``with``)."""

    interval_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    children: dict[int, ChildLifetime] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    @property
    def peak_tree_mb(self) -> float:
        return max((s.tree_mb for s in self.samples), default=0.0)

    def start(self) -> MemoryRecorder:
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="montage-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()

    def __enter__(self) -> MemoryRecorder:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        from montage.memory.monitor import get_memory_monitor

        monitor = get_memory_monitor()
        stats = monitor.get_current_stats()
        now = time.monotonic() - self._t0
        self.samples.append(
            Sample(
                now,
                stats.tree_memory_mb,
                stats.total_mb,
                stats.budget_mb,
                stats.pressure_level.value,
            )
        )
        for proc in monitor.get_ffmpeg_processes():
            life = self.children.setdefault(proc.pid, ChildLifetime(proc.pid, proc.name, now, now))
            life.end_s = now
            life.peak_mb = max(life.peak_mb, proc.memory_mb, proc.peak_memory_mb)


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def check_report_path(path: Path) -> None:
    """Fail before the job, not after it, when the report cannot be written."""
    suffix = path.suffix.lower()
    if suffix not in (".png", ".html"):
        raise ConfigError(f"{path}: a memory report must end in .png or .html")
    if suffix == ".png" and not plotting_available():
        raise ConfigError(
            f"{path}: PNG reports need matplotlib: pip install 'montage-video[plot]' "
            "(or ask for an .html report, which needs nothing extra)"
        )
    if not path.resolve().parent.is_dir():
        raise ConfigError(f"{path}: the folder {path.resolve().parent} does not exist")


def write_memory_report(recorder: MemoryRecorder, path: str | Path, title: str = "") -> Path:
    """Write the timeline as PNG (matplotlib) or HTML (inline SVG); returns the path."""
    out = Path(path)
    check_report_path(out)
    tmp = out.with_name(f".{out.name}.part")
    try:
        if out.suffix.lower() == ".png":
            _write_png(recorder, tmp, title)
        else:
            tmp.write_text(_html(recorder, title), encoding="utf-8")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _level_spans(samples: list[Sample]) -> list[tuple[float, float, str]]:
    spans: list[tuple[float, float, str]] = []
    for a, b in itertools.pairwise(samples):
        if spans and spans[-1][2] == a.level:
            spans[-1] = (spans[-1][0], b.t_s, a.level)
        else:
            spans.append((a.t_s, b.t_s, a.level))
    return spans


def _write_png(recorder: MemoryRecorder, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = recorder.samples
    fig, (ax, lanes) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for start, end, level in _level_spans(samples):
        ax.axvspan(start, end, color=LEVEL_COLOURS.get(level, "#eeeeee"), lw=0)
    ax.plot(
        [s.t_s for s in samples],
        [s.tree_mb for s in samples],
        color="#1565c0",
        lw=1.8,
        label="process tree RSS",
    )
    budgets = [s.budget_mb for s in samples if s.budget_mb]
    if budgets:
        ax.axhline(
            min(budgets), color="#c62828", ls="--", lw=1.2, label=f"budget {min(budgets):.0f} MiB"
        )
    ceiling = min((s.ceiling_mb for s in samples), default=0.0)
    if ceiling and (not budgets or ceiling < 4 * min(budgets)):
        ax.axhline(ceiling, color="#6a1b9a", ls=":", lw=1.2, label=f"ceiling {ceiling:.0f} MiB")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "memory timeline")
    ax.legend(loc="upper right", fontsize=8)
    for row, life in enumerate(sorted(recorder.children.values(), key=lambda c: c.start_s)):
        lanes.barh(
            row,
            max(life.end_s - life.start_s, 0.05),
            left=life.start_s,
            color="#90caf9",
            edgecolor="#1565c0",
        )
        lanes.text(
            life.start_s, row, f" {life.name} {life.peak_mb:.0f} MiB", va="center", fontsize=7
        )
    lanes.set_yticks([])
    lanes.set_xlabel("seconds")
    lanes.set_ylabel("ffmpeg")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _html(recorder: MemoryRecorder, title: str) -> str:
    samples = recorder.samples or [Sample(0.0, 0.0, 0.0, None, "low")]
    width, height, lane_h = 900.0, 300.0, 14.0
    t_max = max(samples[-1].t_s, 1e-3)
    budgets = [s.budget_mb for s in samples if s.budget_mb]
    y_max = max([recorder.peak_tree_mb, *(budgets or [0.0])]) * 1.15 or 1.0

    def x(t: float) -> float:
        return 40 + (width - 50) * t / t_max

    def y(mb: float) -> float:
        return height - 20 - (height - 30) * mb / y_max

    parts = [
        f'<rect x="{x(a):.1f}" y="10" width="{max(x(b) - x(a), 0.5):.1f}" '
        f'height="{height - 30:.0f}" fill="{LEVEL_COLOURS.get(level, "#eee")}"/>'
        for a, b, level in _level_spans(samples)
    ]
    points = " ".join(f"{x(s.t_s):.1f},{y(s.tree_mb):.1f}" for s in samples)
    parts.append(f'<polyline fill="none" stroke="#1565c0" stroke-width="2" points="{points}"/>')
    if budgets:
        yb = y(min(budgets))
        parts.append(
            f'<line x1="40" x2="{width - 10}" y1="{yb:.1f}" y2="{yb:.1f}" '
            'stroke="#c62828" stroke-dasharray="6,4"/>'
        )
        parts.append(
            f'<text x="44" y="{yb - 4:.1f}" font-size="11">budget {min(budgets):.0f} MiB</text>'
        )
    parts.append(f'<text x="44" y="22" font-size="11">peak {recorder.peak_tree_mb:.0f} MiB</text>')
    for row, life in enumerate(sorted(recorder.children.values(), key=lambda c: c.start_s)):
        top = height + 10 + row * (lane_h + 4)
        parts.append(
            f'<rect x="{x(life.start_s):.1f}" y="{top:.0f}" '
            f'width="{max(x(life.end_s) - x(life.start_s), 2):.1f}" height="{lane_h}" '
            'fill="#90caf9" stroke="#1565c0"/>'
            f'<text x="{x(life.start_s) + 3:.1f}" y="{top + 11:.0f}" font-size="10">'
            f"{html.escape(life.name)} {life.peak_mb:.0f} MiB</text>"
        )
    total_h = height + 20 + len(recorder.children) * (lane_h + 4)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{total_h:.0f}">'
        + "".join(parts)
        + "</svg>"
    )
    return (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>{html.escape(title or 'memory report')}</title>"
        f"<h1 style='font-family:sans-serif'>{html.escape(title or 'memory report')}</h1>"
        f"<p style='font-family:sans-serif'>{len(samples)} samples over {t_max:.1f} s; "
        f"peak process tree {recorder.peak_tree_mb:.1f} MiB; "
        f"{len(recorder.children)} ffmpeg processes. Background: pressure level "
        "(green low, yellow moderate, orange high, red critical).</p>" + svg
    )
