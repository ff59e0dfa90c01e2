"""Optimizers by name (``train.optimizer``; registered in ``pairgraph.config.OPTIMIZERS``) and the lr schedule
(``train.schedule``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
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


def lr_factor(schedule: Any, lr: float, total: int) -> Callable[[int], float]:
    """f(s): the factor of ``lr`` at optimizer step s (from 0) of a ``total``-step run (see ``ScheduleSpec``)."""
    kind, warmup = schedule.kind, schedule.warmup
    span = max(total - warmup, 1)
    floor = schedule.min_lr / lr

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        t = s - warmup
        if kind == "step":
            return schedule.gamma ** (t // schedule.every)
        if kind == "cosine":
            return floor + (1 - floor) * (1 + math.cos(math.pi * min(t, span) / span)) / 2
        return 1.0

    return factor


def make_scheduler(train_spec: Any, opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``LambdaLR`` of ``train.schedule`` over a ``total``-step run; step it after each optimizer step.

    Its state (the step count) goes in the checkpoint; the factor is rebuilt from the spec, not stored.
    """
    check_schedule(train_spec, total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(train_spec.schedule, train_spec.lr, total))


def check_schedule(train_spec: Any, total: int) -> None:
    """Refuse a warmup as long as the run (whose length, with train.epochs, is known only to the trainer)."""
    warmup = train_spec.schedule.warmup
    if warmup >= total:
        raise PairgraphError(f"train.schedule.warmup ({warmup}) must be below the run's {total} optimizer steps",
                             "shorten the warmup or train for more steps/epochs")
