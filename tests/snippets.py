"""Run the Python code blocks of a Markdown file as a reader would, in a child Python.

Blocks run in reading order in one namespace (later blocks use names earlier ones imported), in
a child whose import path starts at the repository root (so ``from src.utils...`` resolves as it
does for a user there). Each block runs in a fresh folder holding hard links to the generated
media, so one block's ``output.mp4`` does not make ffmpeg refuse to overwrite it in the next.
Names the spec leaves to the reader (``process_video``, ``processing_function``, ...) are small
real functions that run ffmpeg. A block that only defines ``custom_video_processor`` is followed
by a call of it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

PRELUDE = r'''
import logging, os, shutil, subprocess, sys, tempfile
from pathlib import Path

logging.basicConfig(level=logging.WARNING)
logger = logging.getLogger("spec")
from src.providers.video_processor import VideoSegment
# the spec's "Custom Processing Function" calls this without importing it:
from src.utils.memory_init import estimate_processing_memory
from montage.ffmpeg.binary import ffmpeg_path

MEDIA = Path(sys.argv[1])
FF = ffmpeg_path()

def _ff(*args):
    subprocess.run([FF, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)],
                   check=True)

def process_video(path=None):
    """A real small job: decode video.mp4, or write its first second to ``path``."""
    if path is None:
        _ff("-i", "video.mp4", "-f", "null", "-")
    else:
        _ff("-i", "video.mp4", "-t", "1", "-c:v", "libx264", "-preset", "ultrafast",
            "-f", "mp4", path)
        assert os.path.getsize(path) > 0

def process_video_segment(input_file, temp_file):
    _ff("-ss", "1", "-i", input_file, "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
        "-f", "mp4", temp_file)

def processing_function(chunk_in, chunk_out):
    _ff("-i", chunk_in, "-c:v", "libx264", "-preset", "ultrafast", "-f", "mp4", chunk_out)
    return True

def create_temp_file():
    fd, name = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    return name

input_file = "input.mp4"
process = subprocess.Popen([FF, "-nostdin", "-loglevel", "error", "-re", "-i",
                            str(MEDIA / "video.mp4"), "-f", "null", "-"])
'''

RUNNER = r"""
import json, os, re, shutil, sys, traceback
from pathlib import Path

media, spec, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
blocks = re.findall(r"```python\n(.*?)```", spec.read_text(), re.S)
namespace = {"__name__": "__spec__"}
results = []
work = media.parent / "blocks"
work.mkdir()
os.chdir(work)
exec(compile(PRELUDE, "<prelude>", "exec"), namespace)
for index, code in enumerate(blocks):
    folder = work / f"block{index:02d}"
    folder.mkdir()
    for item in media.iterdir():
        os.link(item, folder / item.name)
    os.chdir(folder)
    try:
        exec(compile(code, f"<spec block {index}>", "exec"), namespace)
        if "def custom_video_processor" in code:
            assert namespace["custom_video_processor"]("input.mp4", "custom.mp4") is True
            assert os.path.getsize("custom.mp4") > 0
        results.append({"index": index, "ok": True, "files": sorted(os.listdir("."))})
    except BaseException as error:
        results.append({"index": index, "ok": False, "error": traceback.format_exc()})
namespace["process"].kill()
namespace["process"].wait()
out.write_text(json.dumps(results))
"""


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), re.S)


def run_python_blocks(markdown: Path, media: Path, workdir: Path) -> list[dict[str, Any]]:
    """Run every Python block of ``markdown``; one result dict per block (ok, error, files)."""
    script = workdir / "run_blocks.py"
    script.write_text(f"PRELUDE = {PRELUDE!r}\n{RUNNER}")
    out = workdir / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, str(script), str(media), str(markdown), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(out.read_text())
    return results
