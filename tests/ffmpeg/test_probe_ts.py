"""Truncated MPEG-TS: a ``.ts`` cut off anywhere (mid-packet, mid-frame, in its first frame).

The probe must report what is really there (duration, picture) or refuse the file with a
``CorruptMediaError`` naming it; never a stream without a picture that ffmpeg then fails on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from montage.errors import CorruptMediaError
from montage.ffmpeg.probe import probe
from tests.conftest import MakeClip, truncated_copy

TS_PACKET = 188


@pytest.fixture(scope="module")
def ts_clip(make_clip: MakeClip) -> Path:
    return make_clip(duration=3.0, rate=25, gop=25, ext="ts")


def _video_end_s(path: Path) -> float:
    """Where the video packets that are really in ``path`` end (from the container start)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        assert tb is not None
        start_s = (container.start_time or 0) / 1_000_000
        end_s = start_s
        for packet in container.demux(stream):
            if packet.pts is not None:
                end_s = max(end_s, float((packet.pts + (packet.duration or 0)) * tb))
    return end_s - start_s


def test_a_ts_cut_in_its_first_frame_is_corrupt_not_a_video_without_a_picture(
    ts_clip: Path, tmp_path: Path
) -> None:
    # the tables (PAT/PMT) fit in the first packets: the demuxer announces an h264 stream,
    # but no whole picture follows (old code: "video" with width None, then ffmpeg exit 69)
    cut = truncated_copy(ts_clip, tmp_path / "first frame.ts", 1000)
    with pytest.raises(CorruptMediaError, match=r"first frame\.ts.*no complete picture"):
        probe(cut, require_video=True)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    at=st.one_of(
        st.integers(min_value=TS_PACKET + 1, max_value=4000),  # in the tables / first frame
        st.floats(min_value=0.0, max_value=1.0, allow_nan=False),  # a fraction of the file
    )
)
def test_a_ts_cut_anywhere_probes_to_what_is_there_or_is_refused(
    ts_clip: Path, tmp_path: Path, at: int | float
) -> None:
    whole = ts_clip.stat().st_size
    size = at if isinstance(at, int) else round(at * whole)
    # from the second packet on (one sync byte alone cannot say "a TS")
    size = max(TS_PACKET + 1, min(whole - 1, size))
    if size % TS_PACKET == 0:
        size += 77  # mid-packet: never on a packet boundary
    cut = truncated_copy(ts_clip, tmp_path / "cut.ts", size)
    try:
        info = probe(cut, require_video=True)
    except CorruptMediaError as exc:
        assert str(cut.absolute()) in str(exc) or str(cut) in str(exc)
        return
    video = info.video
    assert video is not None and (video.width, video.height) == (320, 240)
    # the duration is that of the data really there (one 25 fps frame of slack), never a
    # bitrate guess or the whole clip's
    assert info.duration_s == pytest.approx(_video_end_s(cut), abs=0.041)
    assert 0 < info.duration_s <= 3.0 * size / whole + 0.5
