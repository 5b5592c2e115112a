"""The ffmpeg command lines of the editor: one small job per piece, then one join.

Every piece is cut by *frame count* (``-frames:v N``) after an input seek a quarter frame
before its first frame: ffmpeg's own ``-ss``/``-t`` rounding at frame boundaries is not
something to depend on, a count is. Video pieces are MPEG-TS (Annex B: every keyframe carries
its SPS/PPS, so re-encoded and stream-copied pieces with different parameter sets join
safely); audio pieces are PCM WAV, cut to the sample, so there is no AAC priming at each seam
and audio is encoded once, in the join.

The join (concat demuxer) lines each piece up by its first *presentation* time. Decode times
follow only if every piece decodes the same distance ahead of presenting: a copied GOP with
B-frames runs its reorder delay ahead (dts = pts - 2 frames for x264's default), an edge piece
encoded without B-frames does not, and joined as they are the copied piece's first decode times
fall on the edge piece's last ones (the muxer then squeezes them one tick apart: players and CFR
re-encodes duplicate and drop frames there). So smart mode gives every piece one common lead:
``dts_lead_args`` moves a piece's decode times earlier (never its presentation times) with the
``setts`` bitstream filter, by the copied GOPs' delay minus the piece's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from montage.video.cutting import SourceFormat, SourceIndex

SEEK_MARGIN_FRAMES = 0.25
AUDIO_SEEK_LEAD_S = 0.1


@dataclass(frozen=True)
class Target:
    """The output's picture and sound (the first segment's, per the spec)."""

    width: int
    height: int
    fps: Fraction
    pix_fmt: str
    has_audio: bool
    sample_rate: int
    channels: int
    rotation: int = 0  # the output's display matrix (``-display_rotation`` on the join)
    autorotate: bool = False  # decode sources upright (their rotations differ)

    @classmethod
    def from_format(cls, fmt: SourceFormat) -> Target:
        return cls(
            width=fmt.width,
            height=fmt.height,
            fps=fmt.fps,
            pix_fmt=fmt.pix_fmt or "yuv420p",
            has_audio=fmt.has_audio,
            sample_rate=fmt.sample_rate or 48000,
            channels=fmt.channels or 2,
            rotation=fmt.rotation,
        )

    @classmethod
    def for_sources(cls, first: SourceFormat, others: list[SourceFormat]) -> Target:
        """Sources sharing one rotation keep their stored orientation and the output gets
        their display matrix back (stream-copied GOPs cannot be turned; MPEG-TS pieces lose
        the matrix). Mixed rotations are decoded upright, to the first one's upright size."""
        if all(other.rotation == first.rotation for other in others):
            return cls.from_format(first)
        from dataclasses import replace

        return replace(cls.from_format(first.displayed()), autorotate=True)

    def input_args(self) -> list[str]:
        """Before each source ``-i`` of a decoding job: ffmpeg autorotates unless told not to."""
        return [] if self.autorotate else ["-noautorotate"]

    def shown(self, source: SourceFormat) -> SourceFormat:
        """``source`` as this target's jobs decode it."""
        return source.displayed() if self.autorotate else source

    @property
    def layout(self) -> str:
        return {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels}c")

    def seconds(self, frames: int) -> float:
        return float(frames / self.fps)


@dataclass(frozen=True)
class EncodeSettings:
    """Video encoder options for re-encoded pieces (chosen in ``montage.video.encoding``)."""

    encoder: str = "libx264"
    preset: str = "ultrafast"
    threads: int = 0
    rc_lookahead: int = 10
    crf: int = 18
    profile: str | None = None
    level: str | None = None
    no_bframes: bool = False

    def args(self, pix_fmt: str) -> list[str]:
        out = ["-c:v", self.encoder, "-preset", self.preset, "-crf", str(self.crf)]
        out += ["-pix_fmt", pix_fmt]
        if self.threads > 0:
            out += ["-threads", str(self.threads)]
        if self.encoder == "libx264":
            out += ["-x264-params", f"rc-lookahead={self.rc_lookahead}"]
        if self.profile:
            out += ["-profile:v", self.profile]
        if self.level:
            out += ["-level:v", self.level]
        if self.no_bframes:
            out += ["-bf", "0"]
        return out


def base_args(ffmpeg: str) -> list[str]:
    return [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]


def file_url(path: Path) -> str:
    """An absolute ``file:`` URL, so a name starting with ``-`` is never read as an option."""
    return "file:" + str(path.absolute())


def seek_args(source: SourceIndex, start_s: float) -> list[str]:
    """Input seek a quarter frame before ``start_s``: decodes from the keyframe before, drops
    frames before the seek point, and the first frame kept is the one at ``start_s``. The
    quarter is of the gap to the frame before (variable-rate sources: not the average's)."""
    seek_s = max(0.0, start_s - SEEK_MARGIN_FRAMES * source.gap_before_s(start_s))
    return ["-ss", f"{seek_s:.6f}"] if seek_s > 0 else []


def dts_lead_args(lead_s: float) -> list[str]:
    """Output options moving every video packet's dts ``lead_s`` earlier (pts unchanged)."""
    if lead_s <= 1e-6:
        return []
    return ["-bsf:v", f"setts=dts=DTS-round({lead_s:.6f}/TB)"]


def normalise_filter(source: SourceFormat, target: Target, *, always: bool = False) -> str:
    """Filters making ``source`` frames look like ``target`` (empty when they already do).

    The rate is converted (``fps``, constant) only when the source's differs or ``always``:
    a variable-rate source whose average is the target's keeps every frame once, at its own
    time (the pieces run with ``-fps_mode passthrough``)."""
    source = target.shown(source)
    if not always and source.same_picture(_as_format(target, source)):
        return ""
    w, h = target.width, target.height
    rate = f"fps={target.fps}," if always or source.fps != target.fps else ""
    return (
        f"scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:-1:-1,setsar=1,"
        f"{rate}format={target.pix_fmt}"
    )


def _as_format(target: Target, like: SourceFormat) -> SourceFormat:
    from dataclasses import replace

    return replace(
        like, width=target.width, height=target.height, pix_fmt=target.pix_fmt, fps=target.fps
    )


def video_piece_cmd(
    ffmpeg: str,
    source: SourceIndex,
    start_s: float,
    frames: int,
    target: Target,
    enc: EncodeSettings,
    out: Path,
    *,
    dts_lead_s: float = 0.0,
) -> list[str]:
    """Re-encode ``frames`` frames of ``source`` starting at ``start_s`` (video only), decode
    times moved ``dts_lead_s`` ahead of presentation (module doc)."""
    cmd = base_args(ffmpeg) + seek_args(source, start_s) + target.input_args()
    cmd += ["-i", file_url(source.path), "-map", "0:v:0", "-an", "-sn", "-dn"]
    cmd += ["-fps_mode", "passthrough"]
    vf = normalise_filter(source.fmt, target)
    if vf:
        cmd += ["-vf", vf]
    cmd += ["-frames:v", str(frames), *enc.args(target.pix_fmt), *dts_lead_args(dts_lead_s)]
    return [*cmd, "-f", "mpegts", str(out)]


def _audio_chain(target: Target, duration_s: float) -> str:
    return (
        f"aresample={target.sample_rate},aformat=sample_rates={target.sample_rate}:"
        f"channel_layouts={target.layout},apad,atrim=duration={duration_s:.6f}"
    )


def audio_piece_cmd(
    ffmpeg: str,
    source: SourceIndex | None,
    start_s: float,
    duration_s: float,
    target: Target,
    out: Path,
) -> list[str]:
    """PCM audio of ``source`` from ``start_s`` for exactly ``duration_s`` (padded with silence
    if the source's audio is shorter); silence when ``source`` is None or has no audio."""
    cmd = base_args(ffmpeg)
    chain = _audio_chain(target, duration_s)
    if source is None or not source.fmt.has_audio:
        cmd += ["-f", "lavfi", "-i", f"anullsrc=r={target.sample_rate}:cl={target.layout}"]
    else:
        # Seek a little early and trim to the sample: an input seek exactly onto a video
        # keyframe's time starts the sound up to one AAC frame late (ffmpeg n9 on MP4 found
        # 128 samples at a 1 s keyframe), which would put it that much ahead of the picture.
        seek_s = max(0.0, start_s - AUDIO_SEEK_LEAD_S)
        cmd += ["-ss", f"{seek_s:.6f}"] if seek_s > 0 else []
        cmd += ["-i", file_url(source.path)]
        if start_s > 0:
            chain = f"atrim=start={start_s - seek_s:.6f},asetpts=PTS-STARTPTS,{chain}"
    cmd += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-af", chain]
    return [*cmd, "-c:a", "pcm_s16le", "-f", "wav", str(out)]


def copy_piece_cmd(
    ffmpeg: str, concat_list: Path, out: Path, *, dts_lead_s: float = 0.0
) -> list[str]:
    """Stream-copy the video of the source range described by ``concat_list`` to TS, decode
    times moved ``dts_lead_s`` further ahead of presentation (module doc)."""
    cmd = [*base_args(ffmpeg), "-f", "concat", "-i", file_url(concat_list)]
    cmd += ["-map", "0:v:0", "-c", "copy", *dts_lead_args(dts_lead_s)]
    return [*cmd, "-f", "mpegts", str(out)]


# Copy mode's sound at the joins. The concat demuxer starts each range where it seeked: the
# AAC frame before the inpoint, or with B-frames the video keyframe's decode time (2-3 frames
# earlier), so each later range brings sound from before its start. Left in, those packets were
# squashed by the muxer and the sound fell further behind the picture at every join (-16 to
# -101 ms over 5 joins without B-frames, -83 to -411 ms with them). ``setts`` keeps the sound on
# one continuous timeline (PREV_OUTPTS: where the kept sound has got to) and marks a packet that
# starts more than half a frame before that point; ``noise`` drops the marked ones. A kept
# packet is never earlier than the continuous point (no squash), so the sound stays within
# half an AAC frame (~11 ms) of the picture at every join, without re-encoding.
_BEHIND = "lt(PTS+DURATION/2\\,PREV_OUTPTS+DURATION)"
_NEXT = "max(PTS\\,PREV_OUTPTS+DURATION)"
_MARK = -(2**40)
COPY_AUDIO_BSF = (
    f"setts=pts=if({_BEHIND}\\,PREV_OUTPTS\\,{_NEXT}):dts=if({_BEHIND}\\,{_MARK}\\,{_NEXT}),"
    f"noise=drop=lt(dts\\,{_MARK // 2})"
)


def copy_mode_cmd(
    ffmpeg: str, concat_list: Path, out: Path, *, audio_list: Path | None, audio: bool = True
) -> list[str]:
    """Copy mode: every segment straight from the source(s), one process: the video from
    ``concat_list``, the audio (``audio``) from ``audio_list`` (the same ranges, other cut
    points) or, without one, from ``concat_list`` too."""
    cmd = [*base_args(ffmpeg), "-f", "concat", "-i", file_url(concat_list)]
    if audio_list is not None:
        cmd += ["-f", "concat", "-i", file_url(audio_list), "-map", "0:v:0", "-map", "1:a:0?"]
    elif audio:
        cmd += ["-map", "0:v:0", "-map", "0:a:0?"]
    else:
        cmd += ["-map", "0:v:0"]
    if audio:
        cmd += ["-bsf:a", COPY_AUDIO_BSF]
    if out.suffix.lower() in (".mp4", ".m4v", ".mov"):
        # no timecode track rebuilt from the video's tag: it would give the source's start
        # timecode to the cut's first frame (data streams are not kept; see video.subtitles)
        cmd += ["-write_tmcd", "0"]
    return [*cmd, "-c", "copy", "-avoid_negative_ts", "make_zero", str(out)]


def join_cmd(
    ffmpeg: str,
    video_list: Path,
    audio_list: Path | None,
    out: Path,
    *,
    audio_bit_rate: int | None,
    timescale: int | None,
    rotation: int = 0,
) -> list[str]:
    """Join the pieces: video copied (``rotation``: its display matrix), the PCM audio
    encoded once to AAC."""
    cmd = [*base_args(ffmpeg)]
    if rotation:
        cmd += ["-display_rotation", str(rotation)]
    cmd += ["-f", "concat", "-i", file_url(video_list)]
    if audio_list is not None:
        cmd += ["-f", "concat", "-i", file_url(audio_list)]
    cmd += ["-map", "0:v:0", "-c:v", "copy"]
    if audio_list is not None:
        rate = max(64_000, min(audio_bit_rate or 192_000, 320_000))
        cmd += ["-map", "1:a:0", "-c:a", "aac", "-b:a", str(rate)]
    if timescale and out.suffix.lower() in (".mp4", ".m4v", ".mov"):
        cmd += ["-video_track_timescale", str(timescale)]
    return [*cmd, str(out)]


def xfade_cmd(
    ffmpeg: str,
    tail_of: tuple[SourceIndex, float],
    head_of: tuple[SourceIndex, float],
    frames: int,
    target: Target,
    enc: EncodeSettings,
    out_video: Path,
    out_audio: Path | None,
) -> list[str]:
    """One crossfade: the last ``frames`` of A blended into the first ``frames`` of B.

    Two inputs only, whatever the number of segments: memory stays that of one small job.
    """
    (src_a, start_a), (src_b, start_b) = tail_of, head_of
    fade_s = target.seconds(frames)
    cmd = base_args(ffmpeg)
    cmd += [*seek_args(src_a, start_a), *target.input_args(), "-i", file_url(src_a.path)]
    cmd += [*seek_args(src_b, start_b), *target.input_args(), "-i", file_url(src_b.path)]
    chain = f"{normalise_filter(src_a.fmt, target, always=True)},settb=AVTB"
    graph = (
        f"[0:v:0]{chain},trim=end_frame={frames},setpts=PTS-STARTPTS[va];"
        f"[1:v:0]{chain},trim=end_frame={frames},setpts=PTS-STARTPTS[vb];"
        f"[va][vb]xfade=transition=fade:duration={fade_s:.6f}:offset=0[v]"
    )
    if out_audio is not None:
        graph += ";" + _acrossfade_graph(cmd, src_a, src_b, target, fade_s)
    cmd += ["-filter_complex", graph, "-map", "[v]", "-frames:v", str(frames)]
    cmd += ["-fps_mode", "passthrough", *enc.args(target.pix_fmt), "-f", "mpegts", str(out_video)]
    if out_audio is not None:
        cmd += ["-map", "[a]", "-c:a", "pcm_s16le", "-f", "wav", str(out_audio)]
    return cmd


def _acrossfade_graph(
    cmd: list[str], src_a: SourceIndex, src_b: SourceIndex, target: Target, fade_s: float
) -> str:
    """Audio half of a crossfade; a silent input is added to ``cmd`` for a source without
    audio."""
    labels = []
    for i, src in enumerate((src_a, src_b)):
        if src.fmt.has_audio:
            labels.append(f"[{i}:a:0]")
        else:
            if "[2:a]" not in labels:
                cmd += ["-f", "lavfi", "-i", f"anullsrc=r={target.sample_rate}:cl={target.layout}"]
            labels.append("[2:a]")
    if labels[0] == labels[1] == "[2:a]":
        return f"[2:a]{_audio_chain(target, fade_s)}[a]"
    chain = _audio_chain(target, fade_s)
    return (
        f"{labels[0]}{chain}[aa];{labels[1]}{chain}[ab];"
        f"[aa][ab]acrossfade=d={fade_s:.6f}:c1=tri:c2=tri[a]"
    )


def concat_list_text(entries: list[tuple[str, dict[str, float]]]) -> str:
    """An ffconcat list. Names are our own safe relative names (no ``-safe 0`` needed)."""
    lines = ["ffconcat version 1.0"]
    for name, directives in entries:
        lines.append(f"file {name}")
        lines += [f"{key} {value:.6f}" for key, value in directives.items()]
    return "\n".join(lines) + "\n"
