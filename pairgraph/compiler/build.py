"""Building the real pair from a resolved spec: seeded models, the guide's weights, the objective, the task's loss.

:func:`build_pair` is what every generated ``guided_pair.py`` calls (``pairgraph.build_pair``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pairgraph.compiler.guide_weights import resolve_guide_weights
from pairgraph.config import PRETRAINED, PairSpec, as_spec
from pairgraph.config.spec import InputTransform, NetworkSpec
from pairgraph.core.loss import Balance, Feed, GuidedPair, WeightSchedule
from pairgraph.core.objectives import objective_class
from pairgraph.core.taps import keyword_inputs, transformed_input
from pairgraph.core.weights import load_weights
from pairgraph.errors import PairgraphError
from pairgraph.tasks import get_task
from pairgraph.zoo import build_model


def build_root(spec: PairSpec | dict[str, Any], side: str, task: Any, device: str | torch.device = "cpu") -> nn.Module:
    """Build the eager ``guide`` or ``target`` model of a spec (or a resolved one), seeded, on ``device``."""
    spec = as_spec(spec) if isinstance(spec, dict) else spec
    net = getattr(spec, side)
    seed = spec.train.seed + (0 if side == "guide" else 1)
    pretrained = side == "guide" and net.weights == PRETRAINED
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(net.model, net.args, model_kwargs(net, task), pretrained=pretrained)
    return adapt_inputs(model, net, task, side).to(device)


def model_kwargs(net: NetworkSpec, task: Any) -> dict[str, Any]:
    """The task's arguments for a network's factory; ``image_size`` is the network's own under ``input.resize``."""
    kwargs = task.model_kwargs()
    resize = net.input.resize if net.input is not None else None
    return {**kwargs, "image_size": tuple(resize)} if resize and "image_size" in kwargs else kwargs


def adapt_inputs(model: nn.Module, net: NetworkSpec, task: Any, side: str) -> nn.Module:
    """``net.inputs`` (keyword inputs of forward) and ``net.input`` (a resized / renormalized view) made part
    of the model's forward."""
    if net.inputs:
        keyword_inputs(model, net.inputs, task.valid_mask)
    if net.input is not None:
        transformed_input(model, input_view(net.input, task, side))
    return model


def input_view(view: InputTransform, task: Any, side: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function a network's ``input`` section asks for: undo the task's normalization and apply the
    network's own (one per-channel affine map), then resize (bilinear, antialiased; both commute)."""
    norm, resize = view.normalize, view.resize
    task_norm = task.pixel_normalization()
    if task_norm is None:
        raise PairgraphError(f"{side}.input transforms images, but the task's inputs are not images",
                             f"remove {side}.input")
    scale = shift = None
    if norm:
        (tm, ts), (m, s) = task_norm, (norm.mean, norm.std)
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


def build_pair(
    spec: PairSpec,
    guide_cls: Callable[[nn.Module], nn.Module],
    target_cls: Callable[[nn.Module], nn.Module],
    pairs: Sequence[tuple[str, str, float]],
    device: str | torch.device = "cpu",
    guide_weights: str | Path | None = None,
) -> GuidedPair:
    """Build the :class:`~pairgraph.core.loss.GuidedPair` of a resolved spec: both networks seeded (guide
    ``train.seed``, target ``train.seed + 1``) and wrapped by the generated classes, the guide's weights loaded,
    the objective ``guidance.mode`` names, the weight schedule, the balance rule and the task's loss.

    Args:
        spec: the resolved spec (a generated module's ``SPEC``).
        guide_cls, target_cls: the generated network classes (or :func:`pairgraph.core.taps.tap_network`'s).
        pairs: the correspondence, (guide tap, target tap, weight) per pair.
        device: where the pair lives.
        guide_weights: a checkpoint overriding ``guide.weights``, which is otherwise resolved by
            :func:`~pairgraph.compiler.guide_weights.resolve_guide_weights` (never trains: a ``weights: train``
            guide not cached yet is a one-line error; ``pairgraph.train`` trains it first).

    Example (what ``build/<name>/guided_pair.py`` does)::

        pair = build_pair(SPEC, Guide, Target, MAPPING, device="cuda")
        out = pair(x, y, step)           # out.loss: task + weight · alignment
    """
    task = get_task(spec.task)
    guide_root = build_root(spec, "guide", task, device)
    weights = guide_weights or resolve_guide_weights(spec, purpose="building the pair")
    if weights:
        load_weights(guide_root, weights)
    target_root = build_root(spec, "target", task, device)
    guide, target = guide_cls(guide_root), target_cls(target_root)
    objective = objective_class(spec.guidance.mode).from_spec(spec, guide, target, pairs, task, device)
    return GuidedPair(guide, target, pairs, objective, task_loss=task.loss, schedule=WeightSchedule.from_spec(spec),
                      balance=Balance.from_spec(spec), feed=Feed.from_spec(spec, task))
