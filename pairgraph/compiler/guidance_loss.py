"""``GuidanceLoss``: guidance dropped into anyone's own training loop, with no spec and no codegen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pairgraph.compiler.mapping import build_mapping
from pairgraph.config import LayerSelection
from pairgraph.core.loss import alignment_terms, tap_key
from pairgraph.core.taps import HookedNetwork, capture_hook, disable_inplace
from pairgraph.core.trace import trace
from pairgraph.errors import PairgraphError


class GuidanceLoss(nn.Module):
    """Drop guidance into your own training loop.

    >>> guidance = GuidanceLoss(guide, target, example_input=x[:8])
    >>> logits = target(x)                       # hooks capture the target's taps
    >>> loss = F.cross_entropy(logits, y) + guidance(x)

    ``mapping`` is a mapper name (``uniform``, ``depth``) or a list of (guide, target, weight)
    triples; ``guide_layers``/``target_layers`` are :class:`pairgraph.config.LayerSelection`-like
    objects or dicts. The guide is frozen and runs under ``no_grad``; the target is not owned.
    """

    def __init__(
        self,
        guide: nn.Module,
        target: nn.Module,
        *,
        example_input: Tensor,
        mapping: str | Sequence[tuple[str, str, float]] = "uniform",
        measure: str = "cka",
        sequence: str = "flatten",
        weight: float = 1.0,
        guide_layers: Any = None,
        target_layers: Any = None,
    ):
        super().__init__()

        def selection(s: Any) -> Any:
            return LayerSelection.model_validate(s) if isinstance(s, dict) else (s or LayerSelection())

        example = example_input[:2]
        disable_inplace(guide)
        disable_inplace(target)  # a captured activation must not be modified in place afterwards
        gg = trace(guide, example, selection(guide_layers), "guide")  # leaves both models as they were
        tg = trace(target, example, selection(target_layers), "target")
        if isinstance(mapping, str):
            self.correspondence = build_mapping(mapping, gg, tg)
            pairs = self.correspondence.pairs
        else:
            pairs = [(g, t, float(w)) for g, t, w in mapping]
        self.pairs = pairs
        self.measure, self.sequence, self.weight = measure, sequence, weight
        self._guide = HookedNetwork(guide, [(t.name, t.output_index, t.batch_axis) for t in gg.taps
                                            if t.name in {p[0] for p in pairs}])
        self._guide.requires_grad_(False)
        self._captured: dict[str, Tensor] = {}
        needed = {p[1] for p in pairs}
        modules = dict(target.named_modules())
        self._handles = [
            modules[t.name].register_forward_hook(
                capture_hook(self._captured, t.name, t.output_index, t.batch_axis, first_only=False)
            )
            for t in tg.taps if t.name in needed
        ]
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self._captured:
            raise PairgraphError("GuidanceLoss found no target activations", "call target(x) before guidance(x) each step")
        target_taps = dict(self._captured)
        self._captured.clear()
        self._guide.eval()
        with torch.no_grad():
            _, guide_taps = self._guide(x)
        terms = alignment_terms(guide_taps, target_taps, self.pairs, self.measure, mask, self.sequence)
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return self.weight * sum(w * terms[tap_key(g, t)] for g, t, w in self.pairs)

    def remove(self) -> None:
        """Detach the hooks from the target."""
        for h in self._handles:
            h.remove()
