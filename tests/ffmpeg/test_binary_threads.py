"""ffmpeg discovery runs once however many threads ask for it at the same moment."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psutil

from montage.ffmpeg import binary


def test_twenty_threads_discover_ffmpeg_with_one_set_of_probes() -> None:
    binary.clear_cache()
    me = psutil.Process()
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:  # every ffmpeg child spawned while the threads discover
        while not stop.is_set():
            for child in me.children():
                seen.add(child.pid)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    barrier = threading.Barrier(20)

    def discover(_: int) -> tuple[str, bool]:
        barrier.wait()
        return binary.ffmpeg_path(), binary.has_encoder("libx264")

    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(discover, range(20)))
    finally:
        stop.set()
        watcher.join()
    assert len(set(results)) == 1 and results[0][1] is True
    # one discovery: imageio-ffmpeg's own check, -version, -encoders (without the lock every
    # thread runs its own: 20 or more)
    assert len(seen) <= 4, f"{len(seen)} ffmpeg probes ran for one discovery"
