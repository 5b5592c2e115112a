"""A structured ffmpeg command line: global options, inputs and outputs with their options.

ffmpeg reads an option where it stands: options before ``-i`` belong to that input, options
before an output URL belong to that output, and a few are global. Adjusting a user's command
for memory (decoder threads per input, encoder threads and x264 lookahead per output) is only
safe on this structure, never by appending flags to a flat list. :meth:`FFmpegCommand.parse`
needs to know which options take a value; every option not in :data:`FLAGS` is assumed to take
exactly one, which is ffmpeg's own rule for codec/format AVOptions.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("montage.ffmpeg")

# Boolean options (no value). Their "no" forms (-nostdin, -noautorotate, ...) are also flags.
FLAGS = frozenset(
    {
        "y", "n", "stdin", "hide_banner", "stats", "benchmark", "benchmark_all", "report",
        "shortest", "an", "vn", "sn", "dn", "copyts", "start_at_zero", "re", "accurate_seek",
        "autorotate", "autoscale", "copy_unknown", "ignore_unknown", "recast_media", "debug_ts",
        "xerror", "dump", "hex", "vstats", "bitexact", "fix_sub_duration", "intra",
        "find_stream_info", "print_graphs", "qphist", "fix_sub_duration_heartbeat",
        "auto_conversion_filters", "apad_all", "h", "help", "version", "buildconf", "formats",
        "muxers", "demuxers", "devices", "codecs", "decoders", "encoders", "bsfs", "protocols",
        "filters", "pix_fmts", "layouts", "sample_fmts", "colors", "hwaccels", "L", "?",
    }
)  # fmt: skip
# Options ffmpeg applies to the whole run wherever they stand (ffmpeg_opt.c OPT_EXPERT|GLOBAL).
GLOBAL_OPTIONS = frozenset(
    {
        "y", "n", "loglevel", "v", "report", "max_alloc", "cpuflags", "cpucount", "hide_banner",
        "ignore_unknown", "copy_unknown", "recast_media", "benchmark", "benchmark_all",
        "progress", "stdin", "nostdin", "timelimit", "dump", "hex", "frame_drop_threshold",
        "copyts", "start_at_zero", "copytb", "dts_delta_threshold", "dts_error_threshold",
        "xerror", "abort_on", "filter_threads", "filter_complex", "filter_complex_threads",
        "lavfi", "filter_complex_script", "filter_buffered_frames", "auto_conversion_filters",
        "stats", "nostats", "stats_period", "debug_ts", "max_error_rate", "vstats",
        "vstats_file", "vstats_version", "sdp_file", "init_hw_device", "filter_hw_device",
        "adrift_threshold", "qphist", "print_graphs", "print_graphs_file",
        "print_graphs_format",
    }
)  # fmt: skip
# Input formats whose "URL" is a device or a filtergraph, not a path: never make it file:.
NON_FILE_FORMATS = frozenset(
    {
        "lavfi", "x11grab", "xcbgrab", "v4l2", "video4linux2", "alsa", "pulse", "oss", "jack",
        "fbdev", "kmsgrab", "openal", "sndio", "avfoundation", "dshow", "gdigrab", "decklink",
        "libcdio", "dv1394", "iec61883",
    }
)  # fmt: skip
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
PRESET_ORDER = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
    "veryslow", "placebo",
)  # fmt: skip
_STDOUT_URLS = frozenset({"-", "pipe:", "pipe:1", "pipe", "/dev/stdout"})
_X264_DEFAULT_FORMATS = frozenset({"mp4", "mov", "m4v", "mkv", "matroska", "3gp", "ipod"})


def option_base(token: str) -> str:
    """``-c:v:0`` -> ``c``: the option's name without the dash and stream specifier."""
    return token[1:].split(":", 1)[0]


def is_flag(token: str) -> bool:
    """Whether an option token takes no value (booleans and their ``-no`` forms)."""
    name = token[1:]
    return name in FLAGS or (name.startswith("no") and name[2:] in FLAGS)


def _is_option(token: str) -> bool:
    return token.startswith("-") and token != "-"


@dataclass
class FFmpegInput:
    url: str
    options: list[str] = field(default_factory=list)


@dataclass
class FFmpegOutput:
    url: str
    options: list[str] = field(default_factory=list)


@dataclass
class FFmpegCommand:
    """``executable [global options] ([input options] -i url)... ([output options] url)...``.

    ``trailing_options`` keeps options after the last output (ffmpeg ignores them with a
    warning) so that nothing the user wrote is dropped by a parse/render round trip.
    """

    executable: str = "ffmpeg"
    global_options: list[str] = field(default_factory=list)
    inputs: list[FFmpegInput] = field(default_factory=list)
    outputs: list[FFmpegOutput] = field(default_factory=list)
    trailing_options: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, argv: Sequence[str]) -> FFmpegCommand:
        """Split an argv (with or without the executable) into globals, inputs and outputs."""
        tokens = [os.fspath(t) for t in argv]
        cmd = cls()
        if tokens and not _is_option(tokens[0]):
            cmd.executable = tokens.pop(0)
        pending: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if not _is_option(token):
                cmd.outputs.append(FFmpegOutput(token, pending))
                pending, i = [], i + 1
                continue
            if is_flag(token):
                group, i = [token], i + 1
            elif i + 1 >= len(tokens):  # a value option with no value: keep it last
                pending, i = [*pending, token], i + 1
                continue
            else:
                group, i = tokens[i : i + 2], i + 2
            if token == "-i":
                cmd.inputs.append(FFmpegInput(group[1] if len(group) > 1 else "", pending))
                pending = []
            elif option_base(token) in GLOBAL_OPTIONS or token[1:] in GLOBAL_OPTIONS:
                cmd.global_options.extend(group)
            else:
                pending.extend(group)
        cmd.trailing_options = pending
        return cmd

    def render(self) -> list[str]:
        """The argv: executable, globals, each input's options and ``-i``, each output."""
        argv = [self.executable, *self.global_options]
        for inp in self.inputs:
            argv += [*inp.options, "-i", inp.url]
        for out in self.outputs:
            argv += [*out.options, out.url]
        return argv + self.trailing_options


# --- reading and editing option lists ---------------------------------------------------------


def _pairs(options: list[str]) -> list[tuple[int, str, str | None]]:
    """(index, option token, value or None) for each option in a parsed option list."""
    result: list[tuple[int, str, str | None]] = []
    i = 0
    while i < len(options):
        token = options[i]
        if is_flag(token) or i + 1 >= len(options):
            result.append((i, token, None))
            i += 1
        else:
            result.append((i, token, options[i + 1]))
            i += 2
    return result


def has_option(options: list[str], *names: str) -> bool:
    """Whether any option with one of these base names (any stream specifier) is present."""
    return any(option_base(tok) in names for _, tok, _ in _pairs(options))


def _last_value(options: list[str], accept: Any) -> tuple[int, str] | None:
    """(value index, value) of the last option whose token satisfies ``accept``."""
    found = None
    for i, tok, value in _pairs(options):
        if value is not None and accept(tok):
            found = (i + 1, value)
    return found


def _is_video_codec_option(token: str) -> bool:
    name = token[1:]
    if name in ("vcodec", "c", "codec"):
        return True
    base, _, spec = name.partition(":")
    return base in ("c", "codec") and (spec == "v" or spec.startswith("v:"))


def _is_video_option(token: str, base: str) -> bool:
    name = token[1:]
    return name == base or name == base + ":v" or name.startswith(base + ":v:")


def video_encoder(output: FFmpegOutput) -> str | None:
    """The video encoder an output will use (``copy``, ``libx264``, ...), None for no video.

    Unset means ffmpeg's default for the container, which is libx264 for mp4/mov/mkv.
    """
    opts = output.options
    if has_option(opts, "vn"):
        return None
    found = _last_value(opts, _is_video_codec_option)
    if found is not None:
        return found[1]
    fmt = _last_value(opts, lambda tok: tok == "-f")
    ext = os.path.splitext(output.url)[1].lstrip(".").lower()
    return "libx264" if (fmt[1] if fmt else ext) in _X264_DEFAULT_FORMATS else None


def as_file_url(url: str) -> str:
    """``clip.mp4`` -> ``file:/abs/clip.mp4`` so a name like ``-x.mp4`` is never an option.

    URLs (``pipe:1``, ``file:...``, ``http://``) and ``-`` (stdin/stdout) pass through.
    """
    if url == "-" or _URL_SCHEME.match(url):
        return url
    return "file:" + os.path.abspath(url)


# --- building the memory-safe command ---------------------------------------------------------


def _resolve_settings(profile: Any, input_path: str | os.PathLike[str] | None) -> Any:
    """The profile's knobs; no profile means BALANCED, or the pressure level's profile when
    ``input_path`` is given (the caller is about to process that file now)."""
    from montage.ffmpeg import profiles

    if profile is None and input_path is not None:
        from montage.memory.monitor import get_memory_monitor

        level = get_memory_monitor().get_current_stats().pressure_level
        profile = profiles.profile_for_level(level)
        logger.debug("profile %s chosen for pressure level %s", profile, level)
    return profiles.profile_settings(profile if profile is not None else "balanced")


def _add_globals(cmd: FFmpegCommand, settings: Any, progress_url: str | None) -> None:
    g = cmd.global_options
    for flag in ("-nostdin", "-hide_banner"):
        if flag not in g:
            g.append(flag)
    if progress_url is not None and not has_option(g, "progress"):
        if progress_url in _STDOUT_URLS and any(o.url in _STDOUT_URLS for o in cmd.outputs):
            logger.warning("an output goes to stdout, so -progress %s is not added", progress_url)
        else:
            g += ["-progress", progress_url]
    if not has_option(g, "stats", "nostats"):
        g.append("-nostats")
    if settings.filter_threads > 0:
        for name in ("filter_threads", "filter_complex_threads"):
            if not has_option(g, name):
                g += ["-" + name, str(settings.filter_threads)]


def _adjust_input(inp: FFmpegInput, settings: Any) -> None:
    opts = inp.options
    if settings.decoder_threads > 0 and not has_option(opts, "threads"):
        opts += ["-threads", str(settings.decoder_threads)]
    if not has_option(opts, "protocol_whitelist"):
        opts += ["-protocol_whitelist", "file,pipe"]
    fmt = _last_value(opts, lambda tok: tok == "-f")
    if fmt is None or fmt[1] not in NON_FILE_FORMATS:
        inp.url = as_file_url(inp.url)


def _lower_preset(opts: list[str], limit: str, label: str) -> None:
    """Lower a user's (or the encoder's default ``medium``) preset to ``limit`` if slower."""
    found = _last_value(opts, lambda tok: _is_video_option(tok, "preset"))
    current = found[1] if found else "medium"
    if current not in PRESET_ORDER or PRESET_ORDER.index(current) <= PRESET_ORDER.index(limit):
        return
    if found is None:
        opts += ["-preset", limit]
    else:
        opts[found[0]] = limit
    logger.info("%s: preset %s lowered to %s by the memory profile", label, current, limit)


def _merge_params(opts: list[str], option: str, lookahead: int, label: str) -> None:
    """Set ``rc-lookahead`` inside ``-x264-params``/``-x265-params``, keeping other keys and a
    user's smaller value; a larger one is lowered (and logged)."""
    found = _last_value(opts, lambda tok: tok == "-" + option)
    if found is None:
        opts += ["-" + option, f"rc-lookahead={lookahead}"]
        return
    index, text = found
    parts = [p for p in text.split(":") if p]
    for k, part in enumerate(parts):
        key, _, value = part.partition("=")
        if key.replace("_", "-") == "rc-lookahead":
            if value.isdigit() and int(value) > lookahead:
                parts[k] = f"{key}={lookahead}"
                logger.info("%s: %s rc-lookahead %s lowered to %d", label, option, value, lookahead)
            break
    else:
        parts.append(f"rc-lookahead={lookahead}")
    opts[index] = ":".join(parts)


def _x265_min_lookahead(opts: list[str]) -> int:
    """x265 refuses a lookahead not above its B-frame run ("Lookahead depth must be greater
    than the max consecutive bframe count"), so the profile's value is raised to bframes + 1."""
    from montage.ffmpeg.profiles import X265_PRESETS

    found = _last_value(opts, lambda tok: tok == "-preset")
    preset = found[1] if found else "medium"
    bframes = X265_PRESETS.get(preset, X265_PRESETS["medium"])[0]
    return bframes + 1


def _adjust_output(out: FFmpegOutput, settings: Any) -> None:
    opts = out.options
    label = f"output {out.url}"
    if settings.encoder_threads > 0 and not has_option(opts, "threads"):
        opts += ["-threads", str(settings.encoder_threads)]
    if not has_option(opts, "max_muxing_queue_size"):
        opts += ["-max_muxing_queue_size", str(settings.max_muxing_queue_size)]
    encoder = video_encoder(out)
    if encoder in ("libx264", "libx265"):
        _lower_preset(opts, settings.preset, label)
        lookahead = settings.rc_lookahead
        if encoder == "libx265":
            lookahead = max(lookahead, _x265_min_lookahead(opts))
        _merge_params(opts, encoder[3:] + "-params", lookahead, label)
    out.url = as_file_url(out.url)


def build_memory_safe_ffmpeg_command(
    base_cmd: Sequence[str],
    input_path: str | os.PathLike[str] | None = None,
    profile: Any = None,
    *,
    progress_url: str | None = "pipe:1",
) -> list[str]:
    """A new argv that runs the user's command within a memory profile.

    Every codec, quality, filter and mapping choice stays (stream copy stays copy; a
    ``-preset`` or ``rc-lookahead`` is only ever *lowered*, and that is logged). Added where
    ffmpeg reads them: decoder ``-threads`` and ``-protocol_whitelist file,pipe`` before each
    ``-i``; encoder ``-threads``, ``-max_muxing_queue_size`` and x264/x265 ``rc-lookahead`` per
    output; ``-filter_threads``, ``-nostdin``, ``-hide_banner``, ``-nostats`` and ``-progress``
    globally. Paths become absolute ``file:`` URLs. The executable is kept as given (a bare
    ``ffmpeg`` is resolved when run, by :func:`montage.ffmpeg.binary.resolve_argv`).
    """
    settings = _resolve_settings(profile, input_path)
    cmd = FFmpegCommand.parse(base_cmd)
    _add_globals(cmd, settings, progress_url)
    for inp in cmd.inputs:
        _adjust_input(inp, settings)
    for out in cmd.outputs:
        _adjust_output(out, settings)
    return cmd.render()
