"""The package imports cheaply and starts nothing at import time."""

from __future__ import annotations

import subprocess
import sys


def test_import_starts_no_threads_and_no_heavy_modules() -> None:
    code = (
        "import sys, threading, montage, montage.errors\n"
        "heavy = [m for m in ('av', 'numpy', 'matplotlib', 'cv2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
