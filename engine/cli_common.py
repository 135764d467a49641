"""What the three CLIs share: version option, error boundary, exit codes."""
from __future__ import annotations

import functools

import click

from . import __version__
from .errors import EngineError

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def version_option(prog: str):
    return click.version_option(__version__, "--version", prog_name=prog,
                                message="%(prog)s %(version)s")


def user_errors(fn):
    """Turn EngineError into one line on stderr and exit code 1 (the CLI boundary)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EngineError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper
