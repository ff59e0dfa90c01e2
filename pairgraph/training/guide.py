"""``guide.weights: train``: the guide is trained on the task alone first, once, and cached.

The trainer does it (:meth:`pairgraph.training.trainer.Trainer.run`, before building the pair): it trains
:func:`guide_training_spec` with a trainer of its own and keeps the best checkpoint (:func:`cache_trained_guide`).

The cache key is :func:`pairgraph.compiler.guide_weights.guide_key`: the task, the guide's model
and args and its whole train section, so two pairs that train the same guide share it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pairgraph.compiler.guide_weights import guide_checkpoint_path, guide_train_section
from pairgraph.config import TRAIN, UNTRAINED, PairSpec
from pairgraph.core.objectives import objective_class
from pairgraph.paths import atomic_write


def guide_training_spec(spec: PairSpec) -> dict[str, Any]:
    """The spec that trains ``spec``'s guide: the guide as a baseline target, with the guide's train section."""
    data = spec.resolved()
    return {
        **data, "name": f"{spec.name}-guide",
        "target": {"model": data["guide"]["model"], "args": data["guide"]["args"], "layers": data["guide"]["layers"]},
        "guide": {**data["guide"], "weights": UNTRAINED, "train": {}},
        "guidance": {**data["guidance"], "mode": "baseline"},
        "mapping": {"kind": "uniform"},  # the baseline never maps; no calibration needed
        "train": guide_train_section(spec),
    }


def guide_to_train(spec: PairSpec) -> bool:
    """Whether ``spec``'s run must first train its guide: ``weights: train``, a guide the objective calls, and
    no cached checkpoint yet."""
    return (spec.guide.weights == TRAIN and objective_class(spec.guidance.mode).calls_guide
            and not guide_checkpoint_path(spec).exists())


def cache_trained_guide(spec: PairSpec, summary: dict[str, Any]) -> Path:
    """Copy the best checkpoint of the guide's training run (its ``summary``) into the guide cache."""
    out = guide_checkpoint_path(spec)
    best = Path(summary["run_dir"]) / "checkpoints" / "best.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, best.read_bytes())
    atomic_write(out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    return out
