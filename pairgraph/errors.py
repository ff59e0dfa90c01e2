"""User-facing errors: one line saying what is wrong and how to fix it."""

from __future__ import annotations


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
