"""The last line of defence of the ``pairgraph`` command: every failure class ends as one line.

A user's mistake is a :class:`~pairgraph.errors.PairgraphError` (exit 2, handled in ``main``); an
``EOFError`` (a truncated archive or gzip file, closed stdin) is carried past click, which would
otherwise print a blank line and abort with exit 1; anything else is an internal error: one line
naming the exception, exit 1, and the traceback only with ``PAIRGRAPH_DEBUG=1``.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from pairgraph.errors import first_line, one_line


class InputEnded(Exception):
    """An ``EOFError`` raised by a command, carried past click as an ordinary exception."""


def _eof_reported(callback: Any) -> Any:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except EOFError as e:
            raise InputEnded(first_line(e) or "end of file") from e

    return run


def report_eof(app: typer.Typer) -> None:
    """Make every command of ``app`` raise :class:`InputEnded` for an ``EOFError``."""
    for info in app.registered_commands:
        info.callback = _eof_reported(info.callback)


def internal_error(e: BaseException, console: Console) -> NoReturn:
    """One line for an exception no command turned into a PairgraphError: exit 2 for a truncated
    input, else exit 1 (an internal error: the traceback with ``PAIRGRAPH_DEBUG=1``)."""
    if os.environ.get("PAIRGRAPH_DEBUG") == "1":
        traceback.print_exception(e)
    if isinstance(e, InputEnded):
        console.print(f"[red]error:[/red] input ended early ({escape(str(e))}): a file it read is truncated — fix: "
                      "restore or download that file again", highlight=False, soft_wrap=True)
        sys.exit(2)
    console.print(f"[red]internal error:[/red] {escape(one_line(e))} — please report it (PAIRGRAPH_DEBUG=1 shows "
                  "the traceback)", highlight=False, soft_wrap=True)
    sys.exit(1)
