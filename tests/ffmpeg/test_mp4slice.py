"""Slice headers (mp4index + mp4slice + slice_input) on real generated MP4s and real ffmpeg."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from montage.ffmpeg.mp4index import Unsupported, read_movie
from montage.ffmpeg.mp4slice import LEAD_S, TAIL_S, input_url, plan_slice, write_header
from montage.ffmpeg.slice_input import SliceSource

DURATION = 12.0


@pytest.fixture(scope="module", params=["plain", "bframes"])
def sliced_clip(request: pytest.FixtureRequest, make_clip: object) -> Path:
    extra = ("-bf", "2") if request.param == "bframes" else ()
    clip: Path = make_clip(duration=DURATION, rate=25, gop=25, extra=extra)  # type: ignore[operator]
    return clip


def _run(ffmpeg: str, args: list[str]) -> list[str]:
    out = subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", *args],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [line for line in out.splitlines() if not line.startswith("#")]


def test_a_clip_with_b_frames_has_composition_offsets(make_clip: object) -> None:
    clip = make_clip(duration=DURATION, rate=25, gop=25, extra=("-bf", "2"))  # type: ignore[operator]
    assert read_movie(clip).video.ctts is not None


def test_the_child_reads_exactly_the_slices_source_samples(
    sliced_clip: Path, ffmpeg_exe: str, tmp_path: Path
) -> None:
    """Packets the child demuxes (``-c copy -f framemd5``) are the source's samples [a, b) of
    each track, byte for byte, with the source's timestamps."""
    movie = read_movie(sliced_clip)
    header = tmp_path / "h.mp4"
    with open(sliced_clip, "rb") as fh:
        part = plan_slice(movie, fh, 5.0, 8.0)
        write_header(movie, fh, part, header)
        expected = {}
        for index, (track, (a, b)) in enumerate(
            [(movie.video, part.video), (movie.audio, part.audio)]
        ):
            assert track is not None and b > a
            offsets, sizes = track.offsets(fh, a, b)
            digests = []
            for offset, size in zip(offsets, sizes):
                fh.seek(int(offset))
                digests.append(hashlib.md5(fh.read(int(size))).hexdigest())
            dts = track.dts(a, b) - track.time_offset
            expected[index] = (digests, [int(x) for x in dts])
    url = input_url(header, sliced_clip, part.span)
    assert url is not None
    lines = _run(ffmpeg_exe, ["-protocol_whitelist", "file,concat,subfile",
                              "-advanced_editlist", "0", "-i", url, "-map", "0", "-c", "copy",
                              "-copyts", "-f", "framemd5", "-"])  # fmt: skip
    for index, (digests, dts) in expected.items():
        rows = [[f.strip() for f in line.split(",")] for line in lines]
        mine = [row for row in rows if row[0] == str(index)]
        assert [row[5] for row in mine] == digests  # (row[6:]: side data, AAC priming)
        assert [int(row[1]) for row in mine] == dts


def test_decoding_a_slice_after_a_seek_equals_seeking_in_the_source(
    sliced_clip: Path, ffmpeg_exe: str, tmp_path: Path
) -> None:
    """The same decoded frames and audio (framemd5) as ``-ss`` in the whole file."""
    source = SliceSource.open(sliced_clip)
    assert source is not None
    sound = tmp_path / "audio.md5"
    tail = ["-map", "0:v:0", "-vf", "scale=64:36", "-f", "framemd5", "-", "-map", "0:a:0",
            "-ac", "1", "-ar", "16000", "-f", "framemd5", "-y", str(sound)]  # fmt: skip
    for seek in (0.0, 3.3, 6.04):
        whole = _run(ffmpeg_exe, ["-advanced_editlist", "0", "-ss", str(seek), "-t", "3",
                                  "-i", str(sliced_clip), *tail])  # fmt: skip
        whole_sound = sound.read_text()
        args = source.input_args(tmp_path / "header.mp4", seek, seek + 3)
        assert args is not None
        part = _run(ffmpeg_exe, ["-advanced_editlist", "0", "-t", "3", *args, *tail])
        assert part == whole and len(whole) > 70, seek
        assert sound.read_text() == whole_sound, seek


@settings(max_examples=25)
@given(
    seek=st.floats(min_value=0.0, max_value=DURATION - 0.5),
    length=st.one_of(st.none(), st.floats(min_value=0.04, max_value=DURATION)),
)
def test_a_slice_starts_on_a_keyframe_and_holds_what_decoding_needs(
    make_clip: object, seek: float, length: float | None
) -> None:
    clip = make_clip(duration=DURATION, rate=25, gop=25, extra=("-bf", "2"))  # type: ignore[operator]
    movie = read_movie(clip)
    video, audio = movie.video, movie.audio
    assert audio is not None and video.stss is not None
    last = None if length is None else seek + length
    with open(clip, "rb") as fh:
        part = plan_slice(movie, fh, seek, last)
    a, b = part.video
    assert a in set(video.stss.tolist())
    start_s = float(video.seconds([a])[0])
    assert a == 0 or start_s <= seek - LEAD_S + 1e-9
    if last is None:
        assert b == video.sample_count and part.audio is not None
        assert part.audio[1] == audio.sample_count
    else:
        assert b == video.sample_count or float(video.seconds([b - 1])[0]) >= last + TAIL_S - 0.05
    assert part.audio is not None
    a_start = part.audio[0]
    assert a_start == 0 or float(audio.seconds([a_start])[0]) <= start_s


@settings(max_examples=50)
@given(duration=st.floats(min_value=1.0, max_value=7200.0), count=st.integers(1, 40))
def test_ranges_tile_the_frames_exactly_once(duration: float, count: int) -> None:
    from fractions import Fraction
    from types import SimpleNamespace

    from montage.video.decode import plan_ranges

    stream = SimpleNamespace(frame_rate=30.0)
    info = SimpleNamespace(video=stream, duration_s=duration, container="matroska", path="x")
    plans = plan_ranges(info, count)  # type: ignore[arg-type]
    fps = Fraction(30)
    frames = [(round(p.start * fps), round(p.end * fps)) for p in plans]
    assert frames[0][0] == 0 and frames[-1][1] == max(1, round(duration * 30))
    assert all(x[1] == y[0] for x, y in itertools.pairwise(frames))
    assert [p.is_last for p in plans] == [False] * (count - 1) + [True]
    assert all(p.seek <= p.start for p in plans)


def test_source_start_matches_ffmpegs(sliced_clip: Path) -> None:
    import av

    with av.open(str(sliced_clip), options={"advanced_editlist": "0"}) as container:
        start = (container.start_time or 0) / 1_000_000
    source = SliceSource.open(sliced_clip)
    assert source is not None and source.start_s == pytest.approx(start, abs=1e-6)


def test_python_holds_the_run_length_tables_not_the_index(sliced_clip: Path) -> None:
    movie = read_movie(sliced_clip)
    for track in (movie.video, movie.audio):
        assert track is not None
        held = sum(a.nbytes for a in (track.stts_counts, track.stts_deltas, track.chunk_first))
        assert held <= 16 * (track.sample_count + 2)  # the stsz / co64 stay in the file
        assert isinstance(track.chunk_first, np.ndarray)


# -- fallbacks ------------------------------------------------------------------------------


def _made(ffmpeg: str, out: Path, *args: str) -> Path:
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=25:duration=2", *args, str(out)],
                   check=True)  # fmt: skip
    return out


def test_unsupported_layouts_are_refused_with_a_reason(tmp_path: Path, ffmpeg_exe: str) -> None:
    fragmented = _made(ffmpeg_exe, tmp_path / "frag.mp4", "-c:v", "libx264", "-preset",
                       "ultrafast", "-movflags", "frag_keyframe+empty_moov")  # fmt: skip
    with pytest.raises(Unsupported, match="fragmented"):
        read_movie(fragmented)
    intra = _made(ffmpeg_exe, tmp_path / "intra.mp4", "-c:v", "mjpeg")
    with pytest.raises(Unsupported, match="stss"):
        read_movie(intra)
    mkv = _made(ffmpeg_exe, tmp_path / "clip.mkv", "-c:v", "libx264", "-preset", "ultrafast")
    with pytest.raises(Unsupported):
        read_movie(mkv)
    for path in (fragmented, intra, mkv):
        assert SliceSource.open(path) is None


def test_a_path_that_cannot_go_in_a_concat_url_is_read_whole(
    tmp_path: Path, make_clip: object
) -> None:
    clip: Path = make_clip(duration=2)  # type: ignore[operator]
    odd = tmp_path / "a|b.mp4"
    odd.write_bytes(clip.read_bytes())
    assert SliceSource.open(odd) is None
    assert input_url(Path("rel.mp4"), clip, (0, 1)) is None
    assert SliceSource.open(clip) is not None


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_damaged_tables_are_refused_never_a_crash(
    data: st.DataObject, make_clip: object, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A damaged or hostile moov (any bytes overwritten) gives ``Unsupported`` (the caller then
    reads the file whole, and ffmpeg and the probe judge it) or a slice plan; never another
    exception, and never a table allocated from an absurd declared count."""
    clip: Path = make_clip(duration=4.0, rate=25, gop=25)  # type: ignore[operator]
    raw = bytearray(clip.read_bytes())
    moov = raw.find(b"moov") - 4
    assert moov > 0
    moov_end = moov + int.from_bytes(raw[moov : moov + 4], "big")
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(moov, moov_end - 1))] = data.draw(st.integers(0, 255))
    damaged = tmp_path_factory.mktemp("damaged") / "damaged.mp4"
    damaged.write_bytes(bytes(raw))
    try:
        movie = read_movie(damaged)
    except Unsupported:
        return
    with open(damaged, "rb") as fh:
        try:
            part = plan_slice(movie, fh, 1.0, 2.0)
        except Unsupported:
            return
        write_header(movie, fh, part, damaged.with_suffix(".head"))
