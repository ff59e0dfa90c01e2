"""Building the real pair from a resolved spec: seeded models, the guide's weights, the task's loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pairgraph.compiler.guide_weights import resolve_guide_weights
from pairgraph.config import PRETRAINED
from pairgraph.core.loss import GuidedPair
from pairgraph.core.projection import KINDS, Projectors
from pairgraph.core.shared_taps import SCALE_INVARIANT, rescaled_taps
from pairgraph.core.sharing import check_not_shared
from pairgraph.core.taps import keyword_inputs, transformed_input
from pairgraph.core.trace import preserved_state
from pairgraph.core.weights import load_weights
from pairgraph.errors import PairgraphError
from pairgraph.tasks import get_task
from pairgraph.zoo import build_model


def build_root(spec: dict[str, Any], side: str, task: Any, device: str | torch.device = "cpu") -> nn.Module:
    """Build the eager ``guide`` or ``target`` model of a resolved spec, seeded, on ``device``."""
    net = spec[side]
    seed = int(spec["train"]["seed"]) + (0 if side == "guide" else 1)
    pretrained = side == "guide" and net.get("weights") == PRETRAINED
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(net["model"], net.get("args", {}), model_kwargs(net, task), pretrained=pretrained)
    return adapt_inputs(model, net, task, side).to(device)


def model_kwargs(net: dict[str, Any], task: Any) -> dict[str, Any]:
    """The task's arguments for a network's factory; ``image_size`` is the network's own under ``input.resize``."""
    kwargs = task.model_kwargs()
    resize = (net.get("input") or {}).get("resize")
    return {**kwargs, "image_size": tuple(resize)} if resize and "image_size" in kwargs else kwargs


def adapt_inputs(model: nn.Module, net: dict[str, Any], task: Any, side: str) -> nn.Module:
    """``net.inputs`` (keyword inputs of forward) and ``net.input`` (a resized / renormalized view) made part
    of the model's forward."""
    if net.get("inputs"):
        keyword_inputs(model, net["inputs"], task.valid_mask)
    if net.get("input"):
        transformed_input(model, input_view(net["input"], task, side))
    return model


def input_view(view: dict[str, Any], task: Any, side: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function a network's ``input`` section asks for: undo the task's normalization and apply the
    network's own (one per-channel affine map), then resize (bilinear, antialiased; both commute)."""
    norm, resize = view.get("normalize"), view.get("resize")
    task_norm = task.pixel_normalization()
    if task_norm is None:
        raise PairgraphError(f"{side}.input transforms images, but the task's inputs are not images",
                             f"remove {side}.input")
    scale = shift = None
    if norm:
        (tm, ts), (m, s) = task_norm, (norm["mean"], norm["std"])
        if len(m) != len(tm):
            raise PairgraphError(f"{side}.input.normalize has {len(m)} channels but the task's images have {len(tm)}",
                                 f"give {len(tm)} means and standard deviations")
        scale = [a / b for a, b in zip(ts, s, strict=True)]
        shift = [(a - b) / c for a, b, c in zip(tm, m, s, strict=True)]
    size = [int(v) for v in resize] if resize else None

    def view_fn(x: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            x = x * x.new_tensor(scale).view(1, -1, 1, 1) + x.new_tensor(shift).view(1, -1, 1, 1)
        if size is not None:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x

    return view_fn


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
    check_not_shared(guide_root, target_root, "the spec's guide.model and target.model")
    g, s = spec["guidance"], spec["similarity"]
    guide, target = guide_cls(guide_root), target_cls(target_root)
    return GuidedPair(
        guide,
        target,
        pairs,
        task_loss=task.loss,
        measure=s["measure"],
        sequence=s["sequence"],
        precision=s.get("precision", "fp32"),
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
        projectors=projectors(spec, guide, target, pairs, task, device) if g["mode"] in KINDS else None,
        guide_aliases=guide_aliases(spec, guide, pairs, task, device),
    )


def guide_aliases(spec: dict[str, Any], guide: nn.Module, pairs: Sequence[tuple[str, str, float]], task: Any,
                  device: str | torch.device) -> dict[str, str]:
    """Guide taps whose CKA is provably another's (:mod:`pairgraph.core.shared_taps`); none where the guide
    uses batch statistics, the measure is not scale-invariant, or the mode compares raw features."""
    g, s = spec["guidance"], spec["similarity"]
    if g["mode"] != "guidance" or g["guide_bn"] != "eval" or s["measure"] not in SCALE_INVARIANT:
        return {}
    return rescaled_taps(guide, task.example_input(2, device=device), [p[0] for p in pairs])


def projectors(spec: dict[str, Any], guide: nn.Module, target: nn.Module, pairs: Sequence[tuple[str, str, float]],
               task: Any, device: str | torch.device) -> Projectors:
    """The fitnets / repa projectors of a pair, sized from one example forward of both networks (which
    changes neither: :func:`~pairgraph.core.trace.preserved_state`) and seeded from ``train.seed``."""
    example = task.example_input(2, device=device)
    with preserved_state(guide), preserved_state(target):
        guide.eval()
        target.eval()
        guide_taps, target_taps = guide(example)[1], target(example)[1]
    g = spec["guidance"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec["train"]["seed"]) + 2)
        return Projectors(g["mode"], pairs, guide_taps, target_taps, g.get("projector_dim", 2048)).to(device)
