"""One optimizer step after ``backward()``: the step code shared by training
(:class:`pairgraph.training.trainer.Trainer`) and the learned mapper's warm-up
(:mod:`pairgraph.compiler.calibration`), so that both update the weights the same way."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def apply_gradients(opt: torch.optim.Optimizer, params: Iterable[nn.Parameter], grad_clip: float | None,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Unscale the gradients (fp16), clip their global norm to ``grad_clip`` (when set), step the optimizer."""
    if scaler is not None:
        scaler.unscale_(opt)
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
