"""Guidance objectives: the alignment term of a guided step, one registered class per ``guidance.mode``.

=========  ===================================================================  ==========================
mode       the loss a step adds to the task's                                   extra trainable state
=========  ===================================================================  ==========================
guidance   weight · Σ w·(1 − M(target tap, guide tap)), M = similarity.measure  none
fitnets    weight · Σ w·MSE(P(target tap), guide tap), P linear (a 1×1 conv)    one projector per pair
repa       weight · Σ w·(1 − cos(P(target tap), guide tap)), P an MLP           one projector per pair
distill    weight · T²·KL(softmax(guide logits/T) ‖ softmax(target logits/T))  none
baseline   nothing: the guide is never called                                   none
=========  ===================================================================  ==========================

An objective says which guide taps it reads (:meth:`Objective.guide_taps`), holds its trainable state
(``projectors``), and gives a batch's loss terms (:meth:`Objective.terms`) and their sum
(:meth:`Objective.align`). :class:`pairgraph.core.loss.GuidedPair` composes one with the weight schedule and
the balance rule; :class:`pairgraph.GuidanceLoss` uses the same classes. ``OBJECTIVES.get(mode)`` finds one
(an unknown mode gets a did-you-mean); ``@OBJECTIVES.register("name")`` adds one, and a spec's ``guidance.mode``
may also name a user's class as ``package.module:ClassName`` (:func:`pairgraph.config.names.resolve_objective`).
This module is the only place that tells the modes apart (``make lint`` refuses a mode compared as a string
anywhere else).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pairgraph.config import PairSpec
from pairgraph.config.names import OBJECTIVES, resolve_objective
from pairgraph.core.loss import Activations, Objective, Pairs, alignment_terms, distill_loss, tap_key
from pairgraph.core.measure import check_precision
from pairgraph.core.projection import Projectors
from pairgraph.core.shared_taps import SCALE_INVARIANT, rescaled_taps
from pairgraph.core.trace import preserved_state


def objective_class(mode: str) -> type[Objective]:
    """The objective ``mode`` names: registered under that name, or ``package.module:ClassName`` (a one-line
    error with did-you-mean when there is none, or saying why the class cannot be used)."""
    return resolve_objective(mode)


class _Reduced(Objective):
    """An objective whose per-pair terms combine as a sum, or (``reduce: mean``) a weighted mean."""

    def __init__(self, reduce: str):
        super().__init__()
        self.reduce = reduce

    def align(self, pairs: Pairs, terms: dict[str, Tensor]) -> Tensor:
        align = super().align(pairs, terms)
        return align / sum(w for _, _, w in pairs) if self.reduce == "mean" else align


@OBJECTIVES.register("guidance")
class Similarity(_Reduced):
    """The paper's guidance: 1 − M(target tap, guide tap) per pair, M a similarity measure (CKA, debiased CKA,
    RSA). ``aliases``: guide taps whose similarity another tap provably has (:mod:`pairgraph.core.shared_taps`)."""

    name = "guidance"
    formula = "task + {weight} * sum over pairs of w * (1 - {measure}(target tap, guide tap))"
    compares_similarity = True

    def __init__(self, measure: str, sequence: str, precision: str, reduce: str, aliases: dict[str, str]):
        super().__init__(reduce)
        self.measure, self.sequence, self.precision = measure, sequence, check_precision(precision)
        self.aliases = dict(aliases)

    @classmethod
    def from_spec(cls, spec: PairSpec, guide: nn.Module, target: nn.Module, pairs: Pairs, task: Any,
                  device: str | torch.device) -> Similarity:
        s = spec.similarity
        shared = spec.guidance.guide_bn == "eval" and s.measure in SCALE_INVARIANT  # else aliases are not exact
        aliases = rescaled_taps(guide, task.example_input(2, device=device), [p[0] for p in pairs]) if shared else {}
        return cls(s.measure, s.sequence, s.precision, spec.guidance.reduce, aliases)

    def guide_taps(self, pairs: Pairs) -> list[str]:
        """An alias's source, not the alias: each shared tap is prepared once."""
        return list(dict.fromkeys(self.aliases.get(g, g) for g, _, _ in pairs))

    def terms(self, pairs: Pairs, acts: Activations) -> dict[str, Tensor]:
        return alignment_terms(acts.guide_taps, acts.target_taps, pairs, self.measure, acts.mask, self.sequence,
                               guide_states=acts.guide_states, aliases=self.aliases, precision=self.precision)


class Projection(_Reduced):
    """A learned projector per pair from the target tap to the guide tap (:mod:`pairgraph.core.projection`);
    the projectors train with the target and are saved beside it."""

    def __init__(self, projectors: Projectors, reduce: str):
        super().__init__(reduce)
        self.projectors = projectors

    @classmethod
    def sized(cls, pairs: Pairs, guide_taps: dict[str, Tensor], target_taps: dict[str, Tensor], hidden: int,
              seed: int, reduce: str, device: str | torch.device) -> Projection:
        """Projectors sized from one example forward's taps, initialised from ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(Projectors(cls.name, pairs, guide_taps, target_taps, hidden).to(device), reduce)

    @classmethod
    def from_spec(cls, spec: PairSpec, guide: nn.Module, target: nn.Module, pairs: Pairs, task: Any,
                  device: str | torch.device) -> Projection:
        """Sized from one example forward of both networks (which changes neither), seeded ``train.seed + 2``."""
        example = task.example_input(2, device=device)
        with preserved_state(guide), preserved_state(target):
            guide.eval()
            target.eval()
            guide_taps, target_taps = guide(example)[1], target(example)[1]
        return cls.sized(pairs, guide_taps, target_taps, spec.guidance.projector_dim, spec.train.seed + 2,
                         spec.guidance.reduce, device)

    def terms(self, pairs: Pairs, acts: Activations) -> dict[str, Tensor]:
        values = self.projectors.terms(acts.guide_taps, acts.target_taps, acts.mask)
        return {tap_key(g, t): v for (g, t, _), v in zip(pairs, values, strict=True)}


@OBJECTIVES.register("fitnets")
class FitNets(Projection):
    """FitNets' hints: a linear projector (a 1×1 convolution on token matrices) and the mean squared error."""

    name = "fitnets"
    formula = "task + {weight} * sum over pairs of w * MSE(linear projector(target tap), guide tap)"


@OBJECTIVES.register("repa")
class Repa(Projection):
    """REPA: an MLP projector and 1 − cosine similarity per token."""

    name = "repa"
    formula = "task + {weight} * sum over pairs of w * (1 - cos(MLP projector(target tap), guide tap))"


@OBJECTIVES.register("distill")
class Distill(Objective):
    """Hinton distillation of the guide's logits at temperature T (the pairs are not read)."""

    name = "distill"
    formula = "task + {weight} * T^2 * KL(softmax(guide logits / T) || softmax(target logits / T)), T = {T}"
    reads_taps = False
    balanced = False

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    @classmethod
    def from_spec(cls, spec: PairSpec, guide: nn.Module, target: nn.Module, pairs: Pairs, task: Any,
                  device: str | torch.device) -> Distill:
        return cls(spec.guidance.temperature)

    def guide_taps(self, pairs: Pairs) -> list[str]:
        return []

    def terms(self, pairs: Pairs, acts: Activations) -> dict[str, Tensor]:
        return {"distill": distill_loss(acts.target_out, acts.guide_out, self.temperature, acts.mask)}

    def align(self, pairs: Pairs, terms: dict[str, Tensor]) -> Tensor:
        return terms["distill"]


@OBJECTIVES.register("baseline")
class Baseline(Objective):
    """The control: the task loss alone; the guide is never called."""

    name = "baseline"
    formula = "task (the guide is never called)"
    calls_guide = False
    reads_taps = False

    def guide_taps(self, pairs: Pairs) -> list[str]:
        return []
