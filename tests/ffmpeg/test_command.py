"""Structured ffmpeg argv: parse/render round trips, and building memory-safe commands that
keep every user choice (property tests), plus one real run of a built command."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from montage.ffmpeg.binary import resolve_argv
from montage.ffmpeg.command import (
    FLAGS,
    GLOBAL_OPTIONS,
    PRESET_ORDER,
    FFmpegCommand,
    FFmpegInput,
    FFmpegOutput,
    as_file_url,
    build_memory_safe_ffmpeg_command,
)
from montage.ffmpeg.probe import probe
from montage.ffmpeg.profiles import FFmpegMemoryProfile, profile_settings
from tests.conftest import MakeClip

# --- strategies ---------------------------------------------------------------------------------

VALUE_OPTIONS = ["-c:v", "-c:a", "-c", "-crf", "-b:v", "-preset", "-map", "-ss", "-t", "-vf",
                 "-af", "-r", "-s", "-pix_fmt", "-metadata", "-movflags", "-itsoffset", "-g",
                 "-x264-params", "-threads", "-ar", "-ac", "-codec:v:0", "-b:a"]  # fmt: skip
FILE_FLAGS = ["-an", "-vn", "-sn", "-dn", "-shortest", "-re", "-noautorotate", "-accurate_seek"]
GLOBAL_FLAGS = ["-y", "-n", "-hide_banner", "-nostdin", "-stats", "-nostats", "-copyts"]
GLOBAL_VALUES = ["-loglevel", "-v", "-filter_complex", "-filter_threads", "-stats_period"]

values = st.text(min_size=0, max_size=12)
random_names = st.from_regex(r"\A-[a-z][a-z0-9_]{0,8}(:[avs](:[0-9])?)?\Z").filter(
    lambda t: t != "-i" and t[1:] not in FLAGS and t[1:].split(":")[0] not in GLOBAL_OPTIONS
    and not (t[1:].startswith("no") and t[3:] in FLAGS)
)  # fmt: skip
value_option = st.tuples(st.one_of(st.sampled_from(VALUE_OPTIONS), random_names), values)
file_options = st.lists(
    st.one_of(value_option.map(list), st.sampled_from(FILE_FLAGS).map(lambda f: [f])), max_size=4
).map(lambda groups: [tok for group in groups for tok in group])
global_options = st.lists(
    st.one_of(
        st.sampled_from(GLOBAL_FLAGS).map(lambda f: [f]),
        st.tuples(st.sampled_from(GLOBAL_VALUES), values).map(list),
    ),
    max_size=3,
).map(lambda groups: [tok for group in groups for tok in group])
output_urls = st.one_of(
    st.just("-"), st.text(min_size=1, max_size=12).filter(lambda u: not u.startswith("-"))
)
commands = st.builds(
    FFmpegCommand,
    executable=st.sampled_from(["ffmpeg", "/usr/bin/ffmpeg"]),
    global_options=global_options,
    inputs=st.lists(st.builds(FFmpegInput, url=values, options=file_options), max_size=3),
    outputs=st.lists(st.builds(FFmpegOutput, url=output_urls, options=file_options), max_size=3),
)


# --- parse / render -----------------------------------------------------------------------------


@given(commands)
def test_render_then_parse_gives_the_same_structure(cmd: FFmpegCommand) -> None:
    argv = cmd.render()
    assert FFmpegCommand.parse(argv) == cmd
    assert FFmpegCommand.parse(argv).render() == argv  # canonical argv round-trips exactly


@given(st.lists(st.one_of(st.sampled_from(["-i", "-y", "-an", "-c:v", "-", "out"]), values)))
def test_parse_render_parse_is_stable_for_any_argv(argv: list[str]) -> None:
    once = FFmpegCommand.parse(argv)
    assert FFmpegCommand.parse(once.render()) == once
    has_exe = bool(argv) and (not argv[0].startswith("-") or argv[0] == "-")
    rest = argv[1:] if has_exe else argv
    assert sorted(once.render()[1:]) == sorted(rest)  # no token lost or invented


def test_parse_splits_globals_inputs_and_outputs() -> None:
    argv = ["ffmpeg", "-y", "-loglevel", "error", "-ss", "2", "-i", "a.mp4", "-f", "lavfi",
            "-i", "testsrc2", "-map", "0:v", "-c:v", "libx264", "out.mp4",
            "-an", "-", "-shortest"]  # fmt: skip
    cmd = FFmpegCommand.parse(argv)
    assert cmd.executable == "ffmpeg"
    assert cmd.global_options == ["-y", "-loglevel", "error"]
    assert cmd.inputs == [
        FFmpegInput("a.mp4", ["-ss", "2"]),
        FFmpegInput("testsrc2", ["-f", "lavfi"]),
    ]
    assert cmd.outputs == [
        FFmpegOutput("out.mp4", ["-map", "0:v", "-c:v", "libx264"]),
        FFmpegOutput("-", ["-an"]),
    ]
    assert cmd.trailing_options == ["-shortest"]
    assert cmd.render() == argv


def test_parse_without_executable_and_with_globals_anywhere() -> None:
    cmd = FFmpegCommand.parse(["-i", "in.mp4", "-c", "copy", "-y", "-itsoffset", "-1", "o.mkv"])
    assert cmd.executable == "ffmpeg"
    assert cmd.global_options == ["-y"]
    assert cmd.outputs == [FFmpegOutput("o.mkv", ["-c", "copy", "-itsoffset", "-1"])]
    assert cmd.render() == [
        "ffmpeg",
        "-y",
        "-i",
        "in.mp4",
        "-c",
        "copy",
        "-itsoffset",
        "-1",
        "o.mkv",
    ]


def test_value_missing_at_the_end_is_kept_last() -> None:
    cmd = FFmpegCommand.parse(["ffmpeg", "-i", "a", "out", "-loglevel"])
    assert cmd.global_options == [] and cmd.trailing_options == ["-loglevel"]
    assert cmd.render() == ["ffmpeg", "-i", "a", "out", "-loglevel"]


# --- building: nothing the user wrote is lost ---------------------------------------------------

_PROFILES = st.sampled_from(list(FFmpegMemoryProfile))
_TUNED_VALUES = {"-preset", "-x264-params", "-x265-params"}


def _assert_kept(user: list[str], built: list[str], profile: FFmpegMemoryProfile) -> None:
    """The user's tokens are a prefix of the built ones; only a preset or rc-lookahead value
    may differ, and then only lowered."""
    assert len(built) >= len(user)
    for k, token in enumerate(user):
        if built[k] == token:
            continue
        previous = user[k - 1] if k else ""
        assert previous in _TUNED_VALUES, (k, token, built[k])
        if previous == "-preset":
            assert built[k] == profile_settings(profile).preset
            assert PRESET_ORDER.index(built[k]) < PRESET_ORDER.index(token)
        else:
            assert built[k].split(":")[:-1] == token.split(":")[:-1] or "rc-lookahead" in built[k]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(commands, _PROFILES)
def test_build_keeps_every_input_output_and_option(
    cmd: FFmpegCommand, profile: FFmpegMemoryProfile
) -> None:
    built = FFmpegCommand.parse(build_memory_safe_ffmpeg_command(cmd.render(), profile=profile))
    user = FFmpegCommand.parse(cmd.render())
    assert built.executable == user.executable
    assert [tok for tok in user.global_options if tok not in built.global_options] == []
    assert len(built.inputs) == len(user.inputs) and len(built.outputs) == len(user.outputs)
    for mine, theirs in zip(user.inputs + user.outputs, built.inputs + built.outputs, strict=True):  # type: ignore[operator]
        assert theirs.url in (mine.url, as_file_url(mine.url))
        _assert_kept(mine.options, theirs.options, profile)
    assert built.trailing_options == user.trailing_options


REALISTIC = ["ffmpeg", "-y", "-ss", "1.5", "-t", "10", "-i", "in.mp4", "-i", "logo.png",
             "-filter_complex", "[0:v][1:v]overlay=10:10[v]", "-map", "[v]", "-map", "0:a?",
             "-c:v", "libx264", "-preset", "slower", "-crf", "20", "-b:v", "4M", "-g", "48",
             "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart",
             "-metadata", "title=A -b:v", "out.mp4", "-map", "0:a", "-vn", "-c:a", "copy",
             "audio.m4a"]  # fmt: skip


@pytest.mark.parametrize("profile", list(FFmpegMemoryProfile))
def test_a_realistic_command_keeps_every_choice(profile: FFmpegMemoryProfile) -> None:
    user = FFmpegCommand.parse(REALISTIC)
    built = FFmpegCommand.parse(build_memory_safe_ffmpeg_command(REALISTIC, profile=profile))
    assert "[0:v][1:v]overlay=10:10[v]" in built.global_options and "-y" in built.global_options
    for mine, theirs in zip(user.inputs + user.outputs, built.inputs + built.outputs, strict=True):  # type: ignore[operator]
        _assert_kept(mine.options, theirs.options, profile)
    audio = built.outputs[1].options
    assert audio[:5] == ["-map", "0:a", "-vn", "-c:a", "copy"]
    assert "-preset" not in audio and "-x264-params" not in audio


def _built(argv: list[str], profile: str = "minimal", **kw: object) -> FFmpegCommand:
    return FFmpegCommand.parse(build_memory_safe_ffmpeg_command(argv, profile=profile, **kw))  # type: ignore[arg-type]


def test_knobs_go_where_ffmpeg_reads_them() -> None:
    s = profile_settings("low")
    cmd = _built(["ffmpeg", "-i", "a.mp4", "-i", "b.mp4", "-c:v", "libx264", "o1.mp4",
                  "-c:v", "libx265", "o2.mkv", "-c", "copy", "o3.mkv"], "low")  # fmt: skip
    for inp in cmd.inputs:
        assert inp.options == [
            "-threads",
            str(s.decoder_threads),
            "-protocol_whitelist",
            "file,pipe",
        ]
        assert inp.url.startswith("file:/") and os.path.isabs(inp.url[5:])
    o1, o2, o3 = cmd.outputs
    assert o1.options[o1.options.index("-x264-params") + 1] == f"rc-lookahead={s.rc_lookahead}"
    assert o2.options[o2.options.index("-x265-params") + 1] == f"rc-lookahead={s.rc_lookahead}"
    assert "-x264-params" not in o3.options and "-preset" not in o3.options
    assert o3.options[:2] == ["-c", "copy"]  # stream copy stays copy
    for out in (o1, o2, o3):
        assert out.options[out.options.index("-threads") + 1] == str(s.encoder_threads)
        assert "-max_muxing_queue_size" in out.options
    g = cmd.global_options
    for flag in ("-nostdin", "-hide_banner", "-nostats"):
        assert flag in g
    assert g[g.index("-progress") + 1] == "pipe:1"
    assert g[g.index("-filter_threads") + 1] == str(s.filter_threads)
    assert g[g.index("-filter_complex_threads") + 1] == str(s.filter_threads)


def test_user_settings_are_not_duplicated_or_overridden() -> None:
    cmd = _built(["ffmpeg", "-threads", "3", "-protocol_whitelist", "file", "-i", "a.mp4",
                  "-threads", "5", "-max_muxing_queue_size", "9", "-crf", "18", "-b:v", "2M",
                  "o.mp4", "-progress", "pipe:2", "-stats"])  # fmt: skip
    assert cmd.inputs[0].options == ["-threads", "3", "-protocol_whitelist", "file"]
    assert cmd.outputs[0].options.count("-threads") == 1
    for pair in (
        ["-threads", "5"],
        ["-crf", "18"],
        ["-b:v", "2M"],
        ["-max_muxing_queue_size", "9"],
    ):
        i = cmd.outputs[0].options.index(pair[0])
        assert cmd.outputs[0].options[i : i + 2] == pair
    assert cmd.global_options.count("-progress") == 1 and "pipe:2" in cmd.global_options
    assert "-nostats" not in cmd.global_options


def test_x264_params_are_merged_not_clobbered(caplog: pytest.LogCaptureFixture) -> None:
    def params(value: str, profile: str) -> str:
        out = _built(["ffmpeg", "-i", "a", "-x264-params", value, "o.mp4"], profile).outputs[0]
        return out.options[out.options.index("-x264-params") + 1]

    assert params("keyint=50", "low") == "keyint=50:rc-lookahead=10"
    assert params("rc-lookahead=5:keyint=50", "low") == "rc-lookahead=5:keyint=50"
    with caplog.at_level(logging.INFO, logger="montage.ffmpeg"):
        assert params("keyint=9:rc_lookahead=60", "minimal") == "keyint=9:rc_lookahead=0"
    assert any("rc-lookahead 60 lowered to 0" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("user_preset", "profile", "expected"),
    [("veryslow", "minimal", "ultrafast"), ("slow", "high", "medium"),
     ("veryfast", "low", "veryfast"), (None, "minimal", "ultrafast"), (None, "high", None),
     ("ultrafast", "high", "ultrafast")],
)  # fmt: skip
def test_preset_is_only_lowered_and_logged(
    caplog: pytest.LogCaptureFixture, user_preset: str | None, profile: str, expected: str | None
) -> None:
    argv = ["ffmpeg", "-i", "a.mp4", "-c:v", "libx264", "-crf", "23"]
    argv += ["-preset", user_preset] if user_preset else []
    with caplog.at_level(logging.INFO, logger="montage.ffmpeg"):
        out = _built([*argv, "o.mp4"], profile).outputs[0]
    got = out.options[out.options.index("-preset") + 1] if "-preset" in out.options else None
    assert got == expected
    lowered = [r for r in caplog.records if "preset" in r.getMessage()]
    assert bool(lowered) == (got != user_preset)
    assert out.options[out.options.index("-crf") + 1] == "23"


def test_paths_become_file_urls_and_urls_pass_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["ffmpeg", "-i", "-dash.mp4", "-f", "lavfi", "-i", "testsrc2", "-i", "pipe:0",
            "-i", "-", "out put.mp4", "-f", "mpegts", "-"]  # fmt: skip
    cmd = _built(argv, progress_url="pipe:1")
    assert [i.url for i in cmd.inputs] == [f"file:{tmp_path}/-dash.mp4", "testsrc2", "pipe:0", "-"]
    assert [o.url for o in cmd.outputs] == [f"file:{tmp_path}/out put.mp4", "-"]
    assert "-progress" not in cmd.global_options  # stdout carries media: no progress there
    assert (
        "-progress" not in _built(["ffmpeg", "-i", "a", "o.mp4"], progress_url=None).global_options
    )


def test_profile_from_memory_pressure_when_input_given(clip: Path) -> None:
    from montage.ffmpeg.profiles import profile_for_level
    from montage.memory.monitor import get_memory_monitor

    level = get_memory_monitor().get_current_stats().pressure_level
    expected = profile_settings(profile_for_level(level))
    cmd = FFmpegCommand.parse(
        build_memory_safe_ffmpeg_command(["ffmpeg", "-i", str(clip), "o.mp4"], str(clip))
    )
    assert (
        cmd.inputs[0].options[:2] == ["-threads", str(expected.decoder_threads)]
        or expected.decoder_threads == 0
    )
    default = FFmpegCommand.parse(build_memory_safe_ffmpeg_command(["ffmpeg", "-i", "a", "o.mp4"]))
    assert default.inputs[0].options[:2] == [
        "-threads",
        str(profile_settings("balanced").decoder_threads),
    ]


# --- real runs (few, tiny) ----------------------------------------------------------------------


def test_built_encode_runs_with_real_ffmpeg(make_clip: MakeClip, tmp_path: Path) -> None:
    source = make_clip(duration=1, size="160x90", name="-in 'q' ü.mp4")
    out = tmp_path / "-out ü.mp4"
    argv = build_memory_safe_ffmpeg_command(
        ["ffmpeg", "-i", str(source), "-c:v", "libx264", "-preset", "slow", "-crf", "30",
         "-c:a", "copy", str(out)], profile="minimal")  # fmt: skip
    result = subprocess.run(resolve_argv(argv), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "progress=end" in result.stdout
    info = probe(out)
    assert info.duration_s == pytest.approx(1.0, abs=0.1)
    assert info.video is not None and (info.video.width, info.video.height) == (160, 90)
    assert info.audio is not None and info.audio.codec == "aac"


def test_built_stream_copy_runs_and_stays_copy(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy.mkv"
    argv = build_memory_safe_ffmpeg_command(["ffmpeg", "-i", str(clip), "-c", "copy", str(out)])
    result = subprocess.run(resolve_argv(argv), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    source, copied = probe(clip), probe(out)
    assert [s.codec for s in copied.streams] == [s.codec for s in source.streams]
    assert copied.video.frames in (None, source.video.frames)  # type: ignore[union-attr]
