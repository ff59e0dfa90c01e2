"""Entry points: train a compiled pair (or a spec), or resume a killed run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pairgraph.compiler.pipeline import CompiledPair, compile
from pairgraph.config import PairSpec
from pairgraph.errors import PairgraphError
from pairgraph.training.guide import train_guide
from pairgraph.training.trainer import Trainer


def train(compiled: CompiledPair | PairSpec | str | Path | dict[str, Any], *, runs_dir: str | Path = "runs",
          run_id: str | None = None, resume: str | Path | None = None, progress: bool = True,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train a :class:`pairgraph.CompiledPair` (or a spec, compiled on the fly); returns the summary."""
    if not isinstance(compiled, CompiledPair):
        compiled = compile(compiled, render=False)
    return Trainer(compiled, runs_dir, run_id, resume, progress, stop_after, guide_trainer=train_guide).run()


def resume_run(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Continue a killed run from its last checkpoint, with the spec it was started with."""
    run = Path(run_dir)
    spec_file = run / "spec.yaml"
    if not spec_file.exists():
        raise PairgraphError(f"{run} is not a run folder (no spec.yaml)", "pass runs/<name>/<id>")
    compiled = compile(spec_file, out_dir=run / "build", render=False, notify=None)
    return Trainer(compiled, resume=run, progress=progress, guide_trainer=train_guide).run()
