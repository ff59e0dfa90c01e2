"""Which weights the guide uses — the one answer, for training, calibration, analysis and ``build()``.

``guide.weights`` is ``untrained`` (the seeded init), a checkpoint path, or ``train``: the guide is
first trained on the task alone and cached under a key derived from everything that trains it
(:func:`guide_checkpoint_path`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pairgraph.config import PRETRAINED, TRAIN, UNTRAINED, PairSpec, TrainSpec, as_spec
from pairgraph.core.objectives import objective_class
from pairgraph.errors import PairgraphError
from pairgraph.paths import cache_dir


def guide_train_section(spec: PairSpec) -> dict[str, Any]:
    """The train section the guide is trained with: the spec's, updated by ``guide.train`` (resolved, so
    ``schedule: cosine`` there keys the same guide as ``{kind: cosine}`` in the spec's train section)."""
    return TrainSpec.model_validate({**spec.resolved()["train"], **spec.guide.train}).model_dump(mode="json")


def guide_key(spec: PairSpec) -> str:
    """A hash of everything that determines the trained guide: the task, the guide's model and args,
    and its whole resolved train section (every field — not a hand-kept list); not the target."""
    data = spec.resolved()
    keyed = {"task": data["task"], "model": data["guide"]["model"], "args": data["guide"]["args"],
             "train": guide_train_section(spec)}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def guide_checkpoint_path(spec: PairSpec) -> Path:
    """Where the trained guide of ``spec`` is cached (see :func:`guide_key`)."""
    return cache_dir() / "guides" / f"{spec.guide.model.replace(':', '_')}-{guide_key(spec)}.safetensors"


def _recorded(run_dir: Path | None) -> str | None:
    """The guide weights a finished run recorded in its env.json, when that file still exists."""
    env = run_dir / "env.json" if run_dir is not None else None
    if env is None or not env.exists():
        return None
    try:
        used = json.loads(env.read_text()).get("guide_weights")
    except (json.JSONDecodeError, OSError, AttributeError):
        return None
    return str(used) if used and Path(used).exists() else None


def resolve_guide_weights(spec: PairSpec | dict[str, Any], *, run_dir: Path | None = None, purpose: str = "this",
                          baseline_too: bool = False) -> str | None:
    """The guide's weights: None (seeded init), a checkpoint path, or the cached trained guide.

    A run whose objective never calls its guide (baseline) gets None unless ``baseline_too`` (analysis
    and calibration compare against the guide whatever the mode). ``run_dir``: a run's recorded
    weights win (what that run really used). For ``weights: train`` a missing cached guide is a
    one-line error saying how to get it (``purpose`` names who needs it): this never trains — the
    trainer trains a missing guide before it asks (:mod:`pairgraph.training.guide`).
    """
    spec = as_spec(spec) if isinstance(spec, dict) else spec
    recorded = _recorded(run_dir)
    if recorded:
        return recorded
    if not objective_class(spec.guidance.mode).calls_guide and not baseline_too:
        return None
    w = spec.guide.weights
    if w in (UNTRAINED, PRETRAINED):  # a seeded init, or the source's own weights (loaded when the model is built)
        return None
    if w != TRAIN:
        return w
    cached = guide_checkpoint_path(spec)
    if cached.exists():
        return str(cached)
    raise PairgraphError(
        f"{purpose} needs the trained guide (guide.weights: train), which is not cached yet",
        "train the pair once (`pairgraph train` trains and caches its guide), or set guide.weights=untrained",
    )
