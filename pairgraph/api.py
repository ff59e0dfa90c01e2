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
    """Compile a spec: trace both networks on the meta device, map them, write ``out_dir``.

    Only a data-driven mapper (``learned``) builds the real models, to measure similarities on
    calibration batches of the task's training data.

    ``out_dir`` (default ``build/<name>``) receives ``guided_pair.py``, ``mapping.json``,
    ``spec.yaml`` (resolved) and, with ``render``, ``mapping.png``/``mapping.svg``. The result's
    ``.train(**kwargs)`` is :func:`pairgraph.training.train`.
    """
    pair = pipeline.compile(spec, out_dir, overrides, render, notify)
    pair.trainer = train
    return pair
