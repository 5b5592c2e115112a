"""The ``montage-video`` command line (click + rich): a thin layer over the library."""

from montage.cli import commands as _commands  # noqa: F401  (registers the commands)
from montage.cli import demo as _demo  # noqa: F401
from montage.cli.app import app, main, run

__all__ = ["app", "main", "run"]
