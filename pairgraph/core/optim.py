"""Optimizers by name (``train.optimizer``) and the device a spec's ``train.device`` means."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from pairgraph.config.names import OPTIMIZERS
from pairgraph.errors import PairgraphError


@OPTIMIZERS.register("adamw")
def adamw(c: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)


@OPTIMIZERS.register("adam")
def adam(c: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(c: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


def make_optimizer(train_spec: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer a spec's ``train`` section names, over ``params``."""
    return OPTIMIZERS.get(train_spec.optimizer)(train_spec, params)


def pick_device(name: str) -> torch.device:
    """``train.device`` as a torch device: ``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PairgraphError(f"train.device is {name!r} but CUDA is not available", "use train.device=auto or cpu")
    return torch.device(name)
