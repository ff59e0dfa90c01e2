"""Building a spec's networks: seeded eager models, fed as the spec says (keyword inputs, an input view).

:func:`pairgraph.build_pair` (in :mod:`pairgraph.compiler.pipeline`) builds the pair from them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pairgraph.config import PRETRAINED, PairSpec, as_spec
from pairgraph.config.spec import InputTransform, NetworkSpec
from pairgraph.core.sharing import check_not_shared
from pairgraph.core.taps import keyword_inputs, transformed_input
from pairgraph.core.weights import load_weights
from pairgraph.errors import PairgraphError
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


def build_networks(spec: PairSpec, guide_cls: Callable[[nn.Module], nn.Module],
                   target_cls: Callable[[nn.Module], nn.Module], task: Any, device: str | torch.device,
                   guide_weights: str | Path | None) -> tuple[nn.Module, nn.Module]:
    """The guide and the target of a spec: seeded (guide ``train.seed``, target ``train.seed + 1``), the guide's
    weights loaded from ``guide_weights`` when given, wrapped by the (generated) network classes."""
    guide_root = build_root(spec, "guide", task, device)
    if guide_weights:
        load_weights(guide_root, guide_weights)
    target_root = build_root(spec, "target", task, device)
    check_not_shared(guide_root, target_root, "the spec's guide.model and target.model")
    return guide_cls(guide_root), target_cls(target_root)


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
