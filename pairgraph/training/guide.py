"""``guide.weights: train``: train the guide on the task alone first, once, and cache it.

The cache key is :func:`pairgraph.compiler.guide_weights.guide_key`: the task, the guide's model
and args and its whole train section, so two pairs that train the same guide share it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pairgraph.compiler.guide_weights import guide_checkpoint_path, guide_train_section
from pairgraph.compiler.pipeline import compile
from pairgraph.config import UNTRAINED, PairSpec, as_spec
from pairgraph.paths import atomic_write
from pairgraph.training.trainer import Trainer


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


def train_guide(spec: PairSpec, progress: bool = True) -> Path:
    """Train the guide on the task first (weights: train); cached (see :func:`guide_checkpoint_path`)."""
    out = guide_checkpoint_path(spec)
    if out.exists():
        return out
    key = out.stem.rsplit("-", 1)[-1]
    compiled = compile(as_spec(guide_training_spec(spec)), out_dir=out.parent / f"build-{key}", render=False,
                       notify=None)
    summary = Trainer(compiled, runs_dir=out.parent / "runs", run_id=key, progress=progress).run()
    best = Path(summary["run_dir"]) / "checkpoints" / "best.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, best.read_bytes())
    atomic_write(out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    return out
