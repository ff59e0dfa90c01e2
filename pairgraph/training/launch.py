"""Entry points: train a compiled pair (or a spec), or resume a killed run — the run is the training layer's."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pairgraph.compiler import pipeline
from pairgraph.compiler.pipeline import CompiledPair
from pairgraph.config import PairSpec, load_spec, parse_spec
from pairgraph.config.diff import RUNTIME_FIELDS, changed_fields, extendable_fields
from pairgraph.core import distributed
from pairgraph.errors import PairgraphError
from pairgraph.training.runs import resume_claim, stored_spec
from pairgraph.training.trainer import Trainer, train


class TrainablePair(CompiledPair):
    """What :func:`pairgraph.compile` returns: the compiler's :class:`~pairgraph.compiler.pipeline.CompiledPair`,
    whose :meth:`train` is :func:`train`."""

    def train(self, **kwargs: Any) -> dict[str, Any]:
        """Train this pair (see :func:`train`); returns the run's summary."""
        return train(self, **kwargs)


def compile(spec: PairSpec | str | Path | dict[str, Any], out_dir: str | Path | None = None,
            overrides: list[str] | None = None, render: bool = True,
            notify: Callable[[str], None] | None = print) -> TrainablePair:
    """Compile a spec (:func:`pairgraph.compiler.pipeline.compile`: trace on the meta device, map, write
    ``build/<name>/``) into a pair that trains: ``pairgraph.compile(spec).train()``."""
    return TrainablePair(**vars(pipeline.compile(spec, out_dir, overrides, render, notify)))


def resume_run(run_dir: str | Path, progress: bool = True, overrides: list[str] | None = None,
               spec: str | Path | None = None, notify: Callable[[str], None] | None = None,
               verbose: bool | None = None) -> dict[str, Any]:
    """Continue a run from its last checkpoint, with the spec it was started with.

    ``overrides`` (``--set``) or a ``spec`` file may change only what does not change what the run
    computes — train.steps, train.epochs, train.checkpoint_every (to run longer; not the length under a
    cosine schedule, which spans the run) and the runtime fields (device, workers, guide cache, log, compile);
    anything else is refused with one line.
    """
    run = Path(run_dir)
    if not (run / "spec.yaml").exists():
        raise PairgraphError(f"{run} is not a run folder (no spec.yaml)", "pass runs/<name>/<id>")
    stored = stored_spec(run)
    if stored is None:
        raise PairgraphError(f"{run / 'spec.yaml'} cannot be read", "pass a run folder written by pairgraph train")
    new = (load_spec(spec, overrides) if spec is not None
           else parse_spec(copy.deepcopy(stored), str(run / "spec.yaml"), overrides))
    changes = changed_fields(stored, new.resolved(), frozenset())
    refused = {k: v for k, v in changes.items() if k not in RUNTIME_FIELDS | extendable_fields(stored)}
    if refused:
        k, (old, value) = next(iter(refused.items()))
        raise PairgraphError(f"cannot resume {run} with {k}: {value!r} (it was started with {old!r})"
                             + (f" and {len(refused) - 1} more change(s)" if len(refused) > 1 else ""),
                             "a resumed run keeps what it computes; only train.steps, train.epochs (not under a "
                             "cosine schedule), train.checkpoint_every and device/workers/log/compile may change — start a "
                             "new run instead")
    if changes and notify is not None:
        notify("resuming with " + ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changes.items()))
    # held before <run>/build is rewritten, so a live run's folder is never touched; the trainer keeps it
    lock = resume_claim(run) if distributed.from_env().is_main else None
    try:
        compiled = pipeline.compile(new, out_dir=run / "build", render=False, notify=None)
        trainer = Trainer(compiled, resume=run, progress=progress, verbose=verbose, lock=lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return trainer.run()
