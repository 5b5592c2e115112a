"""The ``montage-video`` command group: global options, exit codes, signals, one-line errors.

Exit codes: 0 success, 1 processing failure, 2 bad input or usage, 130 Ctrl-C, 143 SIGTERM.
On Ctrl-C or SIGTERM every ffmpeg child we started is stopped first (they run in their own
sessions, so the terminal's signal does not reach them), then the exception unwinds through
the context managers that remove temp files and reap the children (``cli/interrupt.py``,
which also bounds the time that may take).
"""

from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import click

from montage import __version__
from montage.cli import interrupt
from montage.cli.interrupt import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated
from montage.errors import ConfigError, InvalidMediaError, MontageError, OutputError

EXIT_FAILURE, EXIT_USAGE = 1, 2


@dataclass
class AppState:
    memory_limit: str | None = None
    quiet: bool = False
    debug: bool = False

    def setup(self, *, start_monitor: bool = True) -> None:
        """Start memory management with the CLI's limit (signals are handled by ``main``)."""
        from montage.runtime import setup_memory_management

        setup_memory_management(
            self.memory_limit, start_monitor=start_monitor, install_signal_handlers=False
        )


_state = AppState()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--memory-limit",
    metavar="SIZE",
    envvar="MONTAGE_MEMORY_LIMIT",
    help="Memory budget for the job: 512M, 2G or 60% (of the machine's or container's ceiling).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_default=True,
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries on stderr.")
@click.option("--debug", is_flag=True, help="Debug logging and full tracebacks on errors.")
@click.version_option(__version__, prog_name="montage-video")
@click.pass_context
def app(
    ctx: click.Context, memory_limit: str | None, log_level: str, quiet: bool, debug: bool
) -> None:
    """Memory-safe video processing: cut, analyse and transcode large videos with FFmpeg."""
    _state.memory_limit, _state.quiet, _state.debug = memory_limit, quiet, debug
    level = logging.DEBUG if debug else getattr(logging, log_level.upper())
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if memory_limit:
        from montage.memory.limits import parse_memory_size

        try:
            parse_memory_size(memory_limit, total_bytes=1 << 40)
        except ConfigError as error:
            raise click.BadParameter(str(error), param_hint="--memory-limit") from None
    ctx.obj = _state


def _error_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"montage-video: error: {text}"


def _cleanup() -> None:
    try:
        from montage.resources import cleanup_all

        cleanup_all()
    except Exception:
        pass


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (``main`` exits with it)."""
    previous = interrupt.install()
    code = 0
    try:
        result: Any = app.main(args=argv, prog_name="montage-video", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("montage-video: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except Terminated:
        click.echo("montage-video: terminated", err=True)
        code = EXIT_TERMINATED
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx else "montage-video"
        click.echo(f"{command}: error: {error.format_message()} (see --help)", err=True)
        code = EXIT_USAGE
    except click.ClickException as error:
        click.echo(_error_line(error), err=True)
        code = error.exit_code
    except (InvalidMediaError, OutputError, ConfigError, ValueError, FileNotFoundError) as error:
        _report(error)
        code = EXIT_USAGE
    except (MontageError, MemoryError, OSError) as error:
        _report(error)
        code = EXIT_FAILURE
    except Exception as error:
        _report(error)
        code = EXIT_FAILURE
    finally:
        _cleanup()
        signalled = interrupt.restore(previous)
    if signalled and code not in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        # the interrupted code swallowed the exception (an at-fork hook does): still a stop
        click.echo("montage-video: interrupted", err=True)
        code = signalled
    return code


def _report(error: BaseException) -> None:
    if _state.debug:
        traceback.print_exception(error)
    click.echo(_error_line(error), err=True)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))
