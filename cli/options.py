"""What the CLI's commands share: the consoles and the ``--set`` option."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

SetOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option("--set", "-s", help="Override a spec field, e.g. --set train.lr=3e-4 (repeatable)."),
]
