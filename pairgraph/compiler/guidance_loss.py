"""``GuidanceLoss``: guidance dropped into anyone's own training loop, with no spec and no codegen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pairgraph.compiler.mapping import build_mapping
from pairgraph.config import OBJECTIVES, LayerSelection
from pairgraph.config.spec import GuidanceSpec, SimilaritySpec
from pairgraph.core.loss import Activations, Objective
from pairgraph.core.objectives import Projection, Similarity
from pairgraph.core.sharing import check_not_shared
from pairgraph.core.taps import HookedNetwork, capture_hooks, disable_inplace
from pairgraph.core.trace import preserved_state, trace
from pairgraph.errors import PairgraphError, check_type

#: the defaults of a spec's similarity and guidance sections (declared once, in pairgraph.config.spec)
_SIMILARITY, _GUIDANCE = SimilaritySpec(), GuidanceSpec()

#: ``objective=`` names: the similarity objective (mode ``guidance``) is called by its measure's family, cka
_NAMES = {"cka": "guidance", "fitnets": "fitnets", "repa": "repa"}


class GuidanceLoss(nn.Module):
    """Drop guidance into your own training loop.

    >>> guidance = GuidanceLoss(guide, target, example_input=x[:8])
    >>> logits = target(x)                       # hooks capture the target's taps
    >>> loss = F.cross_entropy(logits, y) + guidance(x)

    ``mapping`` is a mapper name (``uniform``, ``depth``) or a list of (guide, target, weight)
    triples; ``guide_layers``/``target_layers`` are :class:`pairgraph.config.LayerSelection`-like
    objects or dicts; ``precision`` that of the similarity's matrix products (fp32 | tf32 | bf16, as
    ``similarity.precision``). The guide is frozen and runs under ``no_grad``; the target is not owned.

    ``objective``: ``cka`` (default) sums 1 − ``measure`` over the pairs; ``fitnets`` and ``repa``
    compare each pair through a learned projector (:class:`pairgraph.core.projection.Projectors`:
    linear + MSE, or an MLP of hidden width ``projector_dim`` + 1 − cosine per token), sized from one
    forward of both networks on the example (which changes neither) and seeded with ``seed``. The
    projectors are this module's trainable parameters: train them with the target.

    >>> guidance = GuidanceLoss(guide, target, example_input=x[:8], objective="fitnets")
    >>> opt = torch.optim.Adam([*target.parameters(), *guidance.parameters()])

    ``guidance.parameters()`` also lists the guide's, frozen (``requires_grad`` False: the optimizer
    never moves them); those with ``requires_grad`` are exactly the projectors' (none for ``cka``).
    Save them with ``guidance.projectors.state_dict()``.
    """

    def __init__(
        self,
        guide: nn.Module,
        target: nn.Module,
        *,
        example_input: Tensor,
        mapping: str | Sequence[tuple[str, str, float]] = "uniform",
        measure: str = _SIMILARITY.measure,
        sequence: str = _SIMILARITY.sequence,
        precision: str = _SIMILARITY.precision,
        weight: float = _GUIDANCE.weight,
        guide_layers: Any = None,
        target_layers: Any = None,
        objective: str = "cka",
        projector_dim: int = _GUIDANCE.projector_dim,
        seed: int = 0,
    ):
        super().__init__()
        if objective not in _NAMES:
            raise PairgraphError(f"unknown GuidanceLoss objective {objective!r}", f"use one of {', '.join(_NAMES)}")

        def selection(s: Any) -> Any:
            return LayerSelection.model_validate(s) if isinstance(s, dict) else (s or LayerSelection())

        check_not_shared(guide, target, "GuidanceLoss")
        check_type(example_input, Tensor, "GuidanceLoss: example_input")
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
        self.weight = weight
        self._guide = HookedNetwork(guide, [t.spec() for t in gg.taps if t.name in {p[0] for p in pairs}])
        self._guide.requires_grad_(False)
        self._captured: dict[str, Tensor] = {}
        self._target = [target]  # in a list: not a submodule of the loss (the caller owns and trains it)
        needed = {p[1] for p in pairs}
        self._handles = capture_hooks(target, [t.spec() for t in tg.taps if t.name in needed], self._captured,
                                      first_only=False)
        self.last_terms: dict[str, Tensor] = {}
        kind = OBJECTIVES.get(_NAMES[objective])
        self.objective: Objective = (kind(measure, sequence, precision, "sum", {}) if issubclass(kind, Similarity)
                                     else self._projection(kind, example, projector_dim, seed))

    @property
    def projectors(self) -> Any:
        """The fitnets / repa projectors (None for cka): this module's trainable parameters."""
        return getattr(self.objective, "projectors", None)

    def _projection(self, kind: type[Projection], example: Tensor, hidden: int, seed: int) -> Projection:
        """The fitnets / repa objective, its projectors sized from one forward of both networks on ``example``
        with the taps captured as :meth:`forward` captures them (neither network changes: ``preserved_state``)."""
        target = self._target[0]
        with preserved_state(self._guide), preserved_state(target):
            self._guide.eval()
            target.eval()
            _, guide_taps = self._guide(example)
            target(example)
        target_taps = dict(self._captured)
        self._captured.clear()
        return kind.sized(self.pairs, guide_taps, target_taps, hidden, seed, "sum", example.device)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self._captured:
            raise PairgraphError("GuidanceLoss found no target activations", "call target(x) before guidance(x) each step")
        target_taps = dict(self._captured)
        self._captured.clear()
        self._check_fresh(target_taps, x)
        self._guide.eval()
        with torch.no_grad():
            _, guide_taps = self._guide(x)
        terms = self.objective.terms(self.pairs, Activations(None, guide_taps, None, target_taps, mask))
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return self.weight * self.objective.align(self.pairs, terms)

    def _check_fresh(self, target_taps: dict[str, Tensor], x: Tensor) -> None:
        """The captured taps must be this batch's, from a forward that can carry gradient."""
        rows = {t.shape[0] for t in target_taps.values()}
        if rows != {x.shape[0]}:
            raise PairgraphError(f"GuidanceLoss got a batch of {x.shape[0]} but the target's last forward had "
                                 f"{sorted(rows)} rows", "call target(x) on the same batch right before guidance(x)")
        trainable = any(p.requires_grad for p in self._target[0].parameters())
        if torch.is_grad_enabled() and trainable and not any(t.requires_grad for t in target_taps.values()):
            raise PairgraphError("the target's captured activations carry no gradient (its last forward ran under "
                                 "torch.no_grad or inference_mode), so this loss could not train it",
                                 "call target(x) with gradients on, right before guidance(x)")

    def remove(self) -> None:
        """Detach the hooks from the target."""
        for h in self._handles:
            h.remove()
