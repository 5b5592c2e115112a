"""Soak (slow): 200 sequential extract jobs in one process leak no memory, fds or children.

Run: ``.venv/bin/pytest -m slow tests/reliability``. The figures are recorded by
``benchmarks/bench_soak.py`` (``benchmarks/run.py soak --save`` -> results/soak.md).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_soak.py"
CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import bench_soak
res = bench_soak.soak(Path(sys.argv[2]), Path(sys.argv[3]), jobs=200, warmup=10)
print(json.dumps({"growth": res.rss_growth_mb, "fds": [res.baseline_fds, res.final_fds],
                  "zombies": res.zombies, "live": res.live_children, "ok": res.ok}))
"""


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_soak", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_soak", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_200_sequential_extracts_leak_nothing(tmp_path: Path) -> None:
    """In a fresh child process, so pytest's own allocations do not blur the figures."""
    import json

    source = _bench().make_clip(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(BENCH.parent), str(source), str(out_dir)],
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["growth"] < 5.0, figures
    assert figures["fds"][0] == figures["fds"][1], figures
    assert figures["zombies"] == 0 and figures["live"] == 0, figures
    assert list(out_dir.iterdir()) == []


def test_soak_report_renders_every_figure() -> None:
    """The renderer (fast, default run): every measured figure and verdict reaches the table."""
    bench = _bench()
    result = bench.SoakResult(
        jobs=20, warmup=10, baseline_rss_mb=50.0, final_rss_mb=56.5, peak_rss_mb=57.0,
        baseline_fds=10, final_fds=11, max_fds=12, zombies=1, live_children=0,
        elapsed_s=9.0, rss_after_mb=[50.0] * 20,
    )  # fmt: skip
    assert not result.ok
    text = bench.render(result, "cmd")
    assert "growth +6.5" in text and "**missed**" in text
    assert "| open fds | 10 | 11 (max 12) |" in text
    assert "| 1 / 0 |" in text
