"""Is an edit's result trustworthy before it is published?

Its inputs must not have changed while read, a re-encoded result must be as long as planned,
and a smart-cut join must decode: count its frames and decode it where pieces meet.

A smart cut puts re-encoded pieces between stream-copied GOPs; if any parameter did not
match, decoders show garbage from the first frame after a seam. ``-xerror`` turns the first
decode error into a failed run, and the frame count (read from packets, no decode) must be
exactly the plan's.
"""

from __future__ import annotations

from pathlib import Path

from montage.errors import FFmpegError
from montage.video.assemble import Assembly
from montage.video.cutting import FrameRange
from montage.video.pieces import base_args, file_url
from montage.video.runner import Job, JobRunner

# Outputs up to this long are verified by decoding them whole; longer ones only around each
# seam (decoding starts at the keyframe before it, so the piece before and the start of the
# piece after are both decoded): a 1080p decode runs at ~100 fps here, whole outputs would
# double the cost of a smart cut.
VERIFY_FULL_MAX_S = 20.0
VERIFY_WINDOW_S = 1.0


def _seam_windows(seams_s: list[float]) -> list[tuple[float, float]]:
    """(start, length) decode windows covering every seam, overlapping ones merged."""
    merged: list[list[float]] = []
    for t in sorted(set(seams_s)):
        start = max(0.0, t - 0.1)
        if merged and start <= merged[-1][1]:
            merged[-1][1] = start + VERIFY_WINDOW_S
        else:
            merged.append([start, start + VERIFY_WINDOW_S])
    return [(a, b - a) for a, b in merged]


def verify_join(ffmpeg: str, out: Path, plan: Assembly, runner: JobRunner) -> str | None:
    """Why the smart-cut output cannot be trusted (frame count, decode errors), or None."""
    import av

    with av.open(str(out)) as container:
        frames = sum(1 for p in container.demux(video=0) if p.size > 0)
    if plan.expected_frames is not None and frames != plan.expected_frames:
        return f"{frames} frames instead of {plan.expected_frames}"
    windows: list[tuple[float, float] | None] = [None]
    if plan.expected_duration_s > VERIFY_FULL_MAX_S:
        windows = list(_seam_windows(plan.seams_s))
    for window in windows:
        cmd = [*base_args(ffmpeg), "-xerror"]
        if window is not None:
            cmd += ["-ss", f"{window[0]:.3f}", "-t", f"{window[1]:.3f}"]
        cmd += ["-i", file_url(out), "-map", "0:v:0", "-f", "null", "-"]
        try:
            tail = runner.run(Job(cmd, "verify", 0.0, 0.0))
        except FFmpegError as exc:
            return f"decoding failed: {exc}"
        if tail.strip():
            return f"decoder reported: {tail.strip().splitlines()[-1]}"
    return None


def check_duration(temp: Path, expected_s: float, mode: str, ranges: list[FrameRange]) -> None:
    """A re-encoded result must be as long as planned (copy snaps to keyframes: not checked)."""
    from montage.errors import CorruptMediaError
    from montage.ffmpeg.probe import probe

    if mode == "copy":
        return
    actual_s = probe(temp).duration_s
    if abs(actual_s - expected_s) > max(0.25, 0.02 * expected_s):
        source = str(ranges[0].source.path) if ranges else str(temp)
        raise CorruptMediaError(
            source,
            f"the edit came out {actual_s:.2f} s long instead of {expected_s:.2f} s: decoding "
            f"{source} ended early (truncated or damaged input); no output was written",
        )
