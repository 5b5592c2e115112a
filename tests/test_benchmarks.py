"""The benchmark scripts run as documented: ``python benchmarks/bench_NAME.py [args]``.

They are run on demand, not in CI, so a break shows only when someone needs a figure. Two
cheap ones run here for real (tiny sizes); for every script, nothing may be defined below its
``__main__`` guard (run as a script, such a definition does not exist yet when ``main`` runs:
bench_monitor and bench_sampling failed that way with a NameError).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def test_there_are_benchmark_scripts() -> None:
    assert len(SCRIPTS) >= 8, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_the_main_guard_is_the_last_statement(script: Path) -> None:
    body = ast.parse(script.read_text()).body
    guards = [i for i, node in enumerate(body) if _is_main_guard(node)]
    assert guards, f"{script.name}: no `if __name__ == '__main__':` guard"
    assert guards[-1] == len(body) - 1, (
        f"{script.name}: statements after the __main__ guard (line {body[guards[-1]].lineno}) "
        "are not defined yet when the script runs"
    )


@pytest.mark.parametrize(
    ("name", "args", "expect"),
    [
        ("sampling", ["--samples", "200", "--runs", "1", "--children", "1"], "µs"),
        (
            "monitor",
            ["--duration", "1", "--runs", "1", "--rss-runs", "1", "--settle", "0.5"],
            "Memory monitor overhead",
        ),
    ],
)
def test_cheap_benchmarks_run_as_scripts(name: str, args: list[str], expect: str) -> None:
    script = BENCHMARKS / f"bench_{name}.py"
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout
    assert "| 1 |" in done.stdout or "|---" in done.stdout, done.stdout[-2000:]
