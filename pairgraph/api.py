"""The Python API under the CLI: ``pairgraph.compile`` → :class:`CompiledPair` whose ``.train()`` trains it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pairgraph.compiler import pipeline
from pairgraph.compiler.pipeline import CompiledPair
from pairgraph.config import PairSpec
from pairgraph.training import train


def compile(
    spec: PairSpec | str | Path | dict[str, Any],
    out_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    render: bool = True,
    notify: Callable[[str], None] | None = print,
) -> CompiledPair:
    """Compile a spec (see :func:`pairgraph.compiler.pipeline.compile`: trace on the meta device, map,
    write ``build/<name>/``); the result's ``.train(**kwargs)`` is :func:`pairgraph.training.train`."""
    pair = pipeline.compile(spec, out_dir, overrides, render, notify)
    pair.trainer = train
    return pair
