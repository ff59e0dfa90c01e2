"""Building the real pair from a resolved spec: seeded models, the guide's weights, the task's loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pairgraph.compiler.guide_weights import resolve_guide_weights
from pairgraph.config import PRETRAINED
from pairgraph.core.loss import GuidedPair
from pairgraph.core.taps import keyword_inputs
from pairgraph.core.weights import load_weights
from pairgraph.tasks import get_task
from pairgraph.zoo import build_model


def build_root(spec: dict[str, Any], side: str, task: Any, device: str | torch.device = "cpu") -> nn.Module:
    """Build the eager ``guide`` or ``target`` model of a resolved spec, seeded, on ``device``."""
    net = spec[side]
    seed = int(spec["train"]["seed"]) + (0 if side == "guide" else 1)
    pretrained = side == "guide" and net.get("weights") == PRETRAINED
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(net["model"], net.get("args", {}), task.model_kwargs(), pretrained=pretrained)
    if net.get("inputs"):
        keyword_inputs(model, net["inputs"], task.valid_mask)
    return model.to(device)


def assemble(
    spec: dict[str, Any],
    guide_cls: Callable[[nn.Module], nn.Module],
    target_cls: Callable[[nn.Module], nn.Module],
    pairs: Sequence[tuple[str, str, float]],
    device: str | torch.device = "cpu",
    guide_weights: str | Path | None = None,
) -> GuidedPair:
    """Build a :class:`GuidedPair` from a resolved spec and the generated network classes.

    ``guide_weights`` (a checkpoint) overrides the spec's ``guide.weights``, which is otherwise
    resolved by :func:`~pairgraph.compiler.guide_weights.resolve_guide_weights` (never trains).
    """
    task = get_task(spec["task"])
    guide_root = build_root(spec, "guide", task, device)
    weights = guide_weights or resolve_guide_weights(spec, purpose="building the pair")
    if weights:
        load_weights(guide_root, weights)
    target_root = build_root(spec, "target", task, device)
    g, s = spec["guidance"], spec["similarity"]
    return GuidedPair(
        guide_cls(guide_root),
        target_cls(target_root),
        pairs,
        task_loss=task.loss,
        measure=s["measure"],
        sequence=s["sequence"],
        weight=g["weight"],
        mode=g["mode"],
        until_step=g["until_step"],
        guide_input=g["guide_input"],
        temperature=g["temperature"],
        guide_bn=g["guide_bn"],
        noise_fn=task.noise_input,
        mask_fn=task.valid_mask if s.get("mask_padding", True) else None,
        reduce=g.get("reduce", "sum"),
        schedule=g.get("schedule", "constant"),
        schedule_steps=g.get("schedule_steps"),
        balance=g.get("balance", "none"),
        balance_parameter=g.get("balance_parameter"),
    )
