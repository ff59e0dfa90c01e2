"""The ``timm`` tap provider: timm's ``forward_intermediates``, the feature levels the model itself declares
stable (``feature_info``), where torch.fx cannot go."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from pairgraph.core.layer_graph import (
    NOT_PROBED,
    LayerGraph,
    finish_graph,
    grow,
    make_candidate,
    select_taps,
    shapes_of,
)
from pairgraph.core.policy import class_names, head_names, in_head
from pairgraph.errors import PairgraphError


def has_intermediates(model: nn.Module) -> bool:
    """A timm model with ``forward_intermediates`` and the ``feature_info`` naming its levels."""
    return callable(getattr(model, "forward_intermediates", None)) and callable(getattr(model, "forward_head", None)) \
        and isinstance(getattr(model, "feature_info", None), list)


def trace_intermediates(model: nn.Module, example: torch.Tensor, selection: Any = None,
                        side: str = "model") -> LayerGraph:
    """timm's ``forward_intermediates``: the model's feature levels (``feature_info``: a ResNet's stem and
    stages, a ViT's blocks) are the taps, in timm's layout (NCHW; a ViT's prefix tokens dropped), and the
    logits come from ``forward_head``. timm keeps this interface stable where fx cannot go."""
    if not has_intermediates(model):
        raise PairgraphError(f"the {side} ({type(model).__name__}) has no forward_intermediates/feature_info",
                             f"set {side}.layers.provider to auto, fx or hooks (forward_intermediates is timm's)")
    names = [str(f["module"]) for f in model.feature_info]  # type: ignore[union-attr]
    with torch.no_grad():
        final, inter = model.forward_intermediates(example)  # type: ignore[operator]
        out = model.forward_head(final)  # type: ignore[operator]
        try:
            grown: list[Any] | None = [shapes_of(t) for t in model.forward_intermediates(grow(example))[1]]  # type: ignore[operator]
        except Exception:  # noqa: BLE001 - e.g. a batch size written into the model: the tap rules decide
            grown = None
    modules = dict(model.named_modules())
    candidates = []
    for i, (name, act) in enumerate(zip(names, inter, strict=True)):
        cand = make_candidate(name, nn.Identity(), act, i, "", grown[i] if grown is not None else NOT_PROBED)
        module = modules.get(name, nn.Identity())
        cand.type, cand.feature, cand.kinds = type(module).__name__, i, class_names(module)
        cand.is_head = in_head(name, head_names(model))
        candidates.append(cand)
    chosen = select_taps(candidates, selection, side, any_type=True)
    graph = finish_graph(chosen, list(itertools.pairwise(t.name for t in chosen)), "timm", None, candidates)
    graph.output_type = type(out).__name__
    graph.output = out
    return graph
