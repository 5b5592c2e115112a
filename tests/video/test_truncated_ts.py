"""Analysis and extraction of an MPEG-TS cut off mid-packet: they work on what is there, or
(nothing decodable there) fail with ``CorruptMediaError`` naming the file, never in ffmpeg."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from montage.errors import CorruptMediaError
from montage.ffmpeg.probe import probe
from montage.video.analysis import analyze_video
from montage.video.editor import VideoEditor
from montage.video.segments import VideoSegment
from tests.conftest import MakeClip, truncated_copy


@pytest.fixture(scope="module")
def ts_clip(make_clip: MakeClip) -> Path:
    return make_clip(duration=4.0, rate=25, gop=25, ext="ts")


def test_a_ts_cut_mid_packet_is_analysed_and_cut_up_to_where_it_stops(
    ts_clip: Path, tmp_path: Path
) -> None:
    whole = ts_clip.stat().st_size
    cut = truncated_copy(ts_clip, tmp_path / "cut.ts", whole * 6 // 10 + 101)  # ~2.4 s of 4
    there_s = probe(cut, require_video=True).duration_s
    assert 1.8 < there_s < 3.0
    result = analyze_video(cut)
    # one motion value per 1 s window of the data that is there (not of the 4 s clip)
    assert result.media["duration_s"] == pytest.approx(there_s)
    assert len(result.motion) == pytest.approx(there_s / result.window_s, abs=1)
    out = tmp_path / "out.mp4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the segment is clamped to the data that is there
        report = VideoEditor().extract_and_concatenate_efficient(
            cut, [VideoSegment(1.0, 4.0, cut)], out, mode="accurate"
        )
    assert report.output_duration_s == pytest.approx(there_s - 1.0, abs=0.1)


@pytest.mark.parametrize("size", [600, 1000, 1500 - 188])
def test_a_ts_cut_in_its_first_frame_fails_clearly_in_analysis_and_extraction(
    ts_clip: Path, tmp_path: Path, size: int
) -> None:
    cut = truncated_copy(ts_clip, tmp_path / "stub.ts", size)
    with pytest.raises(CorruptMediaError, match=r"stub\.ts is truncated or damaged"):
        analyze_video(cut)
    with pytest.raises(CorruptMediaError, match=r"stub\.ts is truncated or damaged"):
        VideoEditor().extract_and_concatenate_efficient(
            cut, [VideoSegment(0.0, 1.0, cut)], tmp_path / "out.mp4"
        )
