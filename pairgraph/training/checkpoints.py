"""Checkpoints: ``best``/``last`` target weights (safetensors) and the resume state, committed atomically.

``last_state.pt`` holds the step, optimizer, scaler, RNG state, the trainer's bookkeeping and the
target's weights in one file, so one rename commits a whole checkpoint: a kill between two writes
cannot mix two steps. A pair with projectors (guidance.mode fitnets / repa) keeps them beside the target,
never inside its weights: ``<tag>.projectors.safetensors`` and a ``projectors`` entry of the resume state. It is read with ``torch.load(weights_only=True)``: code is never unpickled.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pairgraph.core.weights import load_weights, save_weights, state_to_save, with_tied
from pairgraph.errors import PairgraphError, first_line
from pairgraph.paths import atomic_write

STATE_KEYS = {"step", "optimizer", "rng", "state"}


class Checkpoints:
    """The checkpoints of one run folder, and the step of the last one on disk."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.dir = run_dir / "checkpoints"
        self.last_saved: int | None = None
        self.projectors: nn.Module | None = None  # trained with the target, saved beside it

    @property
    def resumable(self) -> bool:
        return (self.dir / "last_state.pt").exists()

    def kept(self) -> str:
        """What is safe on disk, for an error message."""
        if self.last_saved is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint (step {self.last_saved}) is kept in {self.dir}"

    def save(self, tag: str, model: nn.Module, step: int, resume: dict[str, Any] | None = None) -> None:
        """Write ``<tag>.safetensors``; with ``resume`` (the optimizer and bookkeeping) also ``last_state.pt``."""
        weights = state_to_save(model)  # tied tensors once
        bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:  # never replace a good checkpoint with NaN/inf weights
            raise PairgraphError(f"target weights became non-finite ({bad}) at step {step}; {self.kept()}",
                                 "lower train.lr, set train.grad_clip, or use precision fp32")
        self.dir.mkdir(parents=True, exist_ok=True)
        save_weights(self.dir / f"{tag}.safetensors", model)
        if self.projectors is not None:
            save_weights(self.dir / f"{tag}.projectors.safetensors", self.projectors)
        if resume is not None:
            if self.projectors is not None:
                resume = {**resume, "projectors": state_to_save(self.projectors)}
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            buf = io.BytesIO()
            torch.save({"step": step, "rng": rng, "target": weights, **resume}, buf)
            atomic_write(self.dir / "last_state.pt", buf.getvalue())
            self.last_saved = step

    def load(self, model: nn.Module) -> dict[str, Any]:
        """Restore the target's weights and the RNG state; returns the stored state for the rest."""
        wpath, spath = self.dir / "last.safetensors", self.dir / "last_state.pt"
        if not (wpath.exists() and spath.exists()):
            raise PairgraphError(f"{self.run_dir} has no checkpoint to resume from",
                                 "start a new run (the run stopped before its first checkpoint)")
        try:
            st = torch.load(spath, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as e:
            raise PairgraphError(f"cannot read the resume state {spath}: {first_line(e, 200) or type(e).__name__}",
                                 "start a new run; this checkpoint is damaged or not pairgraph's") from None
        if not isinstance(st, dict) or not STATE_KEYS <= set(st):
            raise PairgraphError(f"{spath} is not a pairgraph resume state", "start a new run")
        if "target" in st:
            model.load_state_dict(with_tied(model, st["target"]))
        else:  # written before the weights were kept in last_state.pt
            load_weights(model, wpath, "target")
        if self.projectors is not None:
            if "projectors" not in st:
                raise PairgraphError(f"{spath} holds no projectors, but this run trains some",
                                     "resume with the spec the run was started with")
            self.projectors.load_state_dict(with_tied(self.projectors, st["projectors"]))
        torch.set_rng_state(st["rng"]["cpu"])
        if "cuda" in st["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        self.last_saved = int(st["step"])
        st["state"] = json.loads(st["state"])
        return st

    def load_best(self, model: nn.Module) -> None:
        """The checkpoint with the lowest validation loss, when there is one."""
        best = self.dir / "best.safetensors"
        if best.exists():
            load_weights(model, best, "target")
