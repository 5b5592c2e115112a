"""Run one benchmark by name: ``python benchmarks/run.py NAME [args...]``.

Each benchmark lives in ``benchmarks/bench_<NAME>.py`` with ``main(argv) -> int`` and prints a
Markdown section. ``--save`` also writes it to ``benchmarks/results/<NAME>.md``;
``python benchmarks/run.py assemble`` rebuilds ``benchmarks/RESULTS.md`` from those sections.
``python benchmarks/run.py list`` names them all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORDER = [
    "sampling",
    "monitor",
    "runtime",
    "wrapper",
    "model",
    "chunked",
    "extract",
    "analysis",
    "soak",
]


def available() -> list[str]:
    found = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def run(name: str, argv: list[str], save: bool) -> int:
    path = HERE / f"bench_{name}.py"
    if not path.is_file():
        print(f"unknown benchmark {name!r}; choose from: {', '.join(available())}", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    sys.path.insert(0, str(HERE))
    spec.loader.exec_module(module)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = int(module.main(argv) or 0)
    text = buffer.getvalue()
    sys.stdout.write(text)
    if save and code == 0:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.md").write_text(text)
    return code


def assemble() -> int:
    header = (
        (HERE / "RESULTS.header.md").read_text() if (HERE / "RESULTS.header.md").exists() else ""
    )
    sections = [
        (RESULTS / f"{name}.md").read_text().strip()
        for name in [*available(), "soak"]
        if (RESULTS / f"{name}.md").is_file()
    ]
    seen: list[str] = []
    for section in sections:
        if section not in seen:
            seen.append(section)
    (HERE / "RESULTS.md").write_text(header.rstrip() + "\n\n" + "\n\n".join(seen) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'} from {len(seen)} sections")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, rest = args[0], args[1:]
    if name == "list":
        print("\n".join(available()))
        return 0
    if name == "assemble":
        return assemble()
    save = "--save" in rest
    return run(name, [a for a in rest if a != "--save"], save)


if __name__ == "__main__":
    raise SystemExit(main())
