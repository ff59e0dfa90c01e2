"""User-facing errors: one line saying what is wrong and how to fix it."""

from __future__ import annotations

import errno
from pathlib import Path


class PairgraphError(ValueError):
    """A mistake in user input (spec, path, model, data) that pairgraph explains in one line.

    The CLI prints ``error: <message>`` and exits with code 2; library users catch it.
    ``hint`` is appended as ``— fix: <hint>`` when given.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} — fix: {hint}" if hint else message)


class SpecError(PairgraphError):
    """A spec that does not validate: names the file, line (when YAML gives it) and field."""


class Interrupted(PairgraphError):
    """The user stopped the work (Ctrl-C, SIGINT): exit code 130, like any interrupted command."""

    exit_code = 130


def shorten(text: str, limit: int = 300) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with "…" when cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "…"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message (shortened at a word to ``limit``), or ``""``."""
    for line in str(exc).splitlines():
        if line.strip():
            return shorten(line.strip(), limit)
    return ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` — one line whatever the exception says (even nothing)."""
    text = first_line(exc, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def io_error(e: OSError, where: Path | str | None = None, verb: str = "access") -> PairgraphError:
    """A one-line error for a failed read or write: the file (default: the error's), the reason, the fix."""
    where = where or e.filename or "?"
    reason = e.strerror or first_line(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        verb = "write"
        hint = ("free space on that disk or pass --runs-dir on another one; checkpoints already written are "
                "kept (continue with pairgraph train --resume RUN)")
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "make the folder writable or pass --runs-dir (or -o) pointing to a writable folder"
    else:
        hint = "check the path and the disk"
    return PairgraphError(f"cannot {verb} {where}: {reason}", hint)


def check_type(value: object, types: type | tuple[type, ...], what: str) -> None:
    """A one-line error when an API argument has the wrong type (instead of a TypeError deep inside)."""
    if not isinstance(value, types):
        names = " or ".join("None" if t is type(None) else t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise PairgraphError(f"{what} must be a {names}, not {type(value).__name__}", f"pass a {names}")
