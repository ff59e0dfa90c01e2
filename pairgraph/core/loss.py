"""The guided step's loss: task loss + weight(step) · alignment, one forward of each network.

* :func:`alignment_terms` — 1 − M for every mapped pair, each tap prepared once;
* :class:`Objective` — what the alignment is (the registered objectives: :mod:`pairgraph.core.objectives`);
* :class:`GuidedPair` — target + frozen guide (run under ``no_grad``) + one objective, composed with the
  weight schedule (:class:`WeightSchedule`) and the balance rule (:class:`Balance`); the guide cache and
  global-batch alignment under torchrun.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairgraph.config import PairSpec
from pairgraph.core.alignment import keyed, prepare_taps, score_pairs
from pairgraph.core.cache import GuideCache
from pairgraph.core.compiled import CompiledTerms, compile_mode
from pairgraph.core.distributed import gather_batch
from pairgraph.core.projection import Projectors
from pairgraph.core.similarity import get_measure
from pairgraph.core.taps import split_call
from pairgraph.errors import PairgraphError


def tap_key(guide: str, target: str) -> str:
    """The name of a pair's loss term in logs: ``guide->target``."""
    return f"{guide}->{target}"


def alignment_terms(
    guide_taps: dict[str, Tensor],
    target_taps: dict[str, Tensor],
    pairs: Sequence[tuple[str, str, float]],
    measure: str = "cka",
    mask: Tensor | None = None,
    sequence: str = "flatten",
    guide_states: dict[str, Any] | None = None,
    aliases: dict[str, str] | None = None,
    precision: str = "fp32",
) -> dict[str, Tensor]:
    """1 − M for every pair; each tap is prepared once (its gram shared by all its pairs), taps of one shape
    together, and all pairs scored in a few batched reductions (:mod:`pairgraph.core.alignment`).

    ``guide_states`` are already-prepared guide taps (:data:`pairgraph.core.alignment.Prepared`, from a
    :class:`pairgraph.core.cache.GuideCache`);
    ``guide_taps`` is then not read. ``aliases`` maps a guide tap to another whose similarity it provably
    has (:mod:`pairgraph.core.shared_taps`): only that one is prepared. ``precision``: of the grams and
    scores' products (:func:`pairgraph.core.measure.matmul_precision`).
    """
    if not pairs:
        return {}
    m = get_measure(measure)
    same = aliases or {}
    g_keys = [("guide", same.get(g, g)) for g, _, _ in pairs]
    t_keys = [("target", t) for _, t, _ in pairs]
    guide = keyed(guide_states, "guide") if guide_states is not None else prepare_taps(
        m, {k: guide_taps[k[1]] for k in g_keys}, g_keys, mask, sequence, precision)
    prepared = {**guide, **prepare_taps(m, {k: target_taps[k[1]] for k in t_keys}, t_keys, mask, sequence, precision)}
    values = 1.0 - score_pairs(m, prepared, list(zip(g_keys, t_keys, strict=True)))
    return dict(zip((tap_key(g, t) for g, t, _ in pairs), values.unbind(0), strict=True))


def distill_loss(student: Tensor, teacher: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """Hinton distillation: T²·KL(softmax(teacher/T) ‖ softmax(student/T)); sigmoid for one logit."""
    t = temperature
    if student.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t
    s = student.reshape(-1, student.shape[-1])
    g = teacher.reshape(-1, teacher.shape[-1])
    if mask is not None and student.dim() == 3:
        keep = mask.reshape(-1)
        s, g = s[keep], g[keep]
    kl = F.kl_div(F.log_softmax(s.float() / t, -1), F.log_softmax(g.float() / t, -1), log_target=True, reduction="batchmean")
    return kl * t * t


@dataclass
class PairOutput:
    """One step's result: the total loss to backpropagate and its parts (for logging)."""

    loss: Tensor
    task_loss: Tensor
    guidance_loss: Tensor
    output: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    guided: bool = False

    def detached(self, keep_output: bool) -> PairOutput:
        """The losses for logging, off the graph (the logits kept only when ``keep_output``)."""
        last = self.output.detach() if keep_output else self.output.new_empty(0)
        return PairOutput(self.loss.detach(), self.task_loss.detach(), self.guidance_loss.detach(), last,
                          {k: v.detach() for k, v in self.terms.items()}, self.guided)

    @staticmethod
    def mean(outs: list[PairOutput]) -> PairOutput:
        """An optimizer step's losses: the mean over its micro-batches (each entered the gradient as loss / N)."""
        def avg(parts: list[Tensor]) -> Tensor:
            return torch.stack(parts).mean()

        return PairOutput(avg([o.loss for o in outs]), avg([o.task_loss for o in outs]),
                          avg([o.guidance_loss for o in outs]), outs[-1].output,
                          {k: avg([o.terms[k] for o in outs]) for k in outs[0].terms}, outs[0].guided)


#: a correspondence: (guide tap, target tap, weight) per pair
Pairs = Sequence[tuple[str, str, float]]


@dataclass
class Activations:
    """What one step gives an objective: both networks' outputs and taps, the padding mask, and the guide's
    prepared taps when they come from a guide cache (then ``guide_taps`` is empty)."""

    guide_out: Tensor | None
    guide_taps: dict[str, Tensor]
    target_out: Tensor
    target_taps: dict[str, Tensor]
    mask: Tensor | None
    guide_states: dict[str, Any] | None = None


class Objective(nn.Module):
    """One guidance objective: the taps it reads, its trainable state (its parameters, trained with the target)
    and its loss terms for a batch. A subclass sets ``name`` (its ``guidance.mode``), ``formula`` (the loss, as
    the generated module states it) and what the step needs of the guide, implements :meth:`terms` (and
    :meth:`from_spec` when it has settings), and is registered: ``@OBJECTIVES.register("name")``
    (:mod:`pairgraph.core.objectives` holds the built-in ones), or named in a spec as ``package.module:ClassName``."""

    name: ClassVar[str]
    formula: ClassVar[str]
    calls_guide: ClassVar[bool] = True  # False: the guide is never run
    reads_taps: ClassVar[bool] = True  # False: it compares the networks' outputs, not their taps
    compares_similarity: ClassVar[bool] = False  # its terms are 1 − M: a guide cache and shared taps apply
    balanced: ClassVar[bool] = True  # guidance.balance may scale its term

    @classmethod
    def from_spec(cls, spec: PairSpec, guide: nn.Module, target: nn.Module, pairs: Pairs, task: Any,
                  device: str | torch.device) -> Objective:
        """The objective ``spec`` asks for, for these networks (built by the compiler)."""
        return cls()

    def guide_taps(self, pairs: Pairs) -> list[str]:
        """The guide taps the terms read, in pair order."""
        return list(dict.fromkeys(g for g, _, _ in pairs))

    def terms(self, pairs: Pairs, acts: Activations) -> dict[str, Tensor]:
        """The step's loss terms, by name (``guide->target`` per pair)."""
        raise NotImplementedError(f"objective {self.name!r} has no loss terms")

    def align(self, pairs: Pairs, terms: dict[str, Tensor]) -> Tensor:
        """The alignment loss: Σ w·term over the pairs, as one weighted reduction (a few ops for any number of
        pairs, where a Python sum dispatches three per pair)."""
        stacked = torch.stack([terms[tap_key(g, t)] for g, t, _ in pairs])
        return (stacked * stacked.new_tensor([w for _, _, w in pairs])).sum()  # not a matmul: autocast keeps fp32

    @classmethod
    def describe(cls, spec: PairSpec) -> str:
        """The loss of ``spec``'s pair under this objective, in one line (the generated module's docstring); a
        user's class that states no ``formula`` is named instead."""
        formula = getattr(cls, "formula", None) or f"task + {{weight}} * {cls.__qualname__}'s alignment terms"
        return formula.format(weight=spec.guidance.weight, measure=spec.similarity.measure, T=spec.guidance.temperature)


@dataclass(frozen=True)
class WeightSchedule:
    """The alignment weight over steps (``guidance.weight``, ``until_step``, ``schedule``, ``schedule_steps``):
    constant, or decaying linearly / on a cosine to 0 at ``steps``; the guide is called only while it is on."""

    weight: float
    until_step: int | None
    kind: str
    steps: int | None

    @classmethod
    def from_spec(cls, spec: PairSpec) -> WeightSchedule:
        g = spec.guidance
        return cls(g.weight, g.until_step, g.schedule, g.schedule_steps)

    def at(self, step: int | None) -> float:
        """The weight at ``step``."""
        if self.kind == "constant" or step is None or self.steps is None:
            return self.weight
        frac = min(step / self.steps, 1.0)
        return self.weight * (1 - frac if self.kind == "linear" else 0.5 * (1 + math.cos(math.pi * frac)))

    def on(self, step: int | None) -> bool:
        """Whether step ``step`` is guided: before ``until_step``, and before a decaying weight reaches 0."""
        if self.kind != "constant" and self.at(step) == 0:
            return False
        return self.until_step is None or step is None or step < self.until_step


@dataclass(frozen=True)
class Balance:
    """The balance rule (``guidance.balance``): ``none``, or ``grad_norm`` on the target parameter ``parameter``
    (default: the weight of the last mapped target tap's module)."""

    kind: str
    parameter: str | None

    @classmethod
    def from_spec(cls, spec: PairSpec) -> Balance:
        return cls(spec.guidance.balance, spec.guidance.balance_parameter)


@dataclass(frozen=True)
class Feed:
    """How a batch reaches the guide and the alignment: the guide's input (``same`` or ``noise``: ``noise_fn(x)``,
    the task's N(0, 1); with ``noise`` ``code``, clamp(n₁ + 0.1·n₂, 0, 1) of two such draws, as the authors' code
    feeds it), its normalisation (``guide_bn``: ``eval`` running statistics or ``batch``) and the padding mask
    (``mask_fn``)."""

    guide_input: str
    guide_bn: str
    noise_fn: Callable[[Tensor], Tensor] | None
    mask_fn: Callable[[Tensor], Tensor | None] | None
    noise: str = "paper"

    @classmethod
    def from_spec(cls, spec: PairSpec, task: Any) -> Feed:
        return cls(spec.guidance.guide_input, spec.guidance.guide_bn, task.noise_input,
                   task.valid_mask if spec.similarity.mask_padding else None, spec.guidance.noise)

    def guide_view(self, x: Tensor) -> Tensor:
        if self.guide_input != "noise":
            return x
        if self.noise_fn is None:
            raise PairgraphError("guide_input 'noise' needs a task noise function", "build the pair from a spec")
        if self.noise == "paper":
            return self.noise_fn(x)
        if not x.is_floating_point():
            raise PairgraphError("guidance.noise code (clamped Gaussian noise) needs real-valued inputs; this task's "
                                 "are token ids", "use guidance.noise: paper (random tokens) for a sequence task")
        return torch.clamp(self.noise_fn(x) + 0.1 * self.noise_fn(x), 0.0, 1.0)


class GuidedPair(nn.Module):
    """Target + frozen guide + one :class:`Objective`: ``forward(x, y, step)`` → :class:`PairOutput`, whose loss is
    ``task + schedule.at(step) · balance scale · objective.align(terms)`` (the task alone on unguided steps).

    The objective (``guidance.mode``; :mod:`pairgraph.core.objectives`) gives the terms and holds any trainable
    state (projectors: :meth:`trained_parameters`); the :class:`WeightSchedule` says when the guide is called and
    with what weight; the :class:`Balance` rule ``grad_norm`` scales the alignment term by the ratio of the task's
    to its gradient norm (:meth:`balance_scale`); the :class:`Feed` says what the guide sees. With a
    ``guide_cache`` (:meth:`cache_guide`) and the batch's example numbers passed as ``index``, the guide is not
    run: its prepared taps come from the cache. Built from a spec by :func:`pairgraph.build_pair`.
    """

    def __init__(self, guide: nn.Module, target: nn.Module, pairs: Sequence[tuple[str, str, float]],
                 objective: Objective, *, task_loss: Callable[[Tensor, Tensor], Tensor], schedule: WeightSchedule,
                 balance: Balance, feed: Feed):
        super().__init__()
        self.target = target
        self.guide = guide
        self.objective = objective
        self.pairs = [(g, t, float(w)) for g, t, w in pairs]
        self.task_loss = task_loss
        self.schedule, self.balancing, self.feed = schedule, balance, feed
        self.last_balance: float | None = None  # the grad_norm scale of the last training step
        self.guide.requires_grad_(False)
        self.guide_calls = 0
        self.guide_cache: GuideCache | None = None  # set by cache_guide()
        self.global_batch = False  # set by the trainer under torchrun (see pairgraph.core.distributed)
        self.compiled_terms: CompiledTerms | None = None  # set by compile_alignment()
        self.train()

    # what the objective holds, for its readers (checkpoints, the guide cache, the benchmark)
    @property
    def projectors(self) -> Projectors | None:
        return getattr(self.objective, "projectors", None)

    @property
    def trained_state(self) -> nn.Module | None:
        """The objective's trainable state, checkpointed beside the target: the built-in projectors, or a user
        objective's own parameters (the objective module itself); None when it trains nothing."""
        if self.projectors is not None:
            return self.projectors
        return self.objective if any(True for _ in self.objective.parameters()) else None

    @property
    def guide_aliases(self) -> dict[str, str]:
        return getattr(self.objective, "aliases", {})

    @guide_aliases.setter
    def guide_aliases(self, aliases: dict[str, str]) -> None:
        self.objective.aliases = dict(aliases)

    @property
    def precision(self) -> str:
        return getattr(self.objective, "precision", "fp32")

    @precision.setter
    def precision(self, value: str) -> None:
        self.objective.precision = value

    @property
    def measure(self) -> str | None:
        return getattr(self.objective, "measure", None)

    @property
    def sequence(self) -> str | None:
        return getattr(self.objective, "sequence", None)

    @property
    def mask_fn(self) -> Callable[[Tensor], Tensor | None] | None:
        return self.feed.mask_fn

    @property
    def balance(self) -> str:
        return self.balancing.kind

    def train(self, mode: bool = True) -> GuidedPair:
        self.training = mode
        self.target.train(mode)
        self.objective.train(mode)
        self.guide.eval()  # the guide is never updated: running stats stay as they are
        if self.feed.guide_bn == "batch":
            for m in self.guide.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.track_running_stats = False  # batch statistics, running buffers untouched
        return self

    def guide_taps(self) -> list[str]:
        """The guide taps whose activations the objective reads (an alias's source, not the alias)."""
        return self.objective.guide_taps(self.pairs)

    def trained_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: the target's parameters and the objective's (projectors)."""
        return [p for p in self.target.parameters() if p.requires_grad] + list(self.objective.parameters())

    def parameter_counts(self) -> dict[str, int]:
        """The target's parameter count, and its projectors' apart (they are not part of the target)."""
        counts = {"target_parameters": sum(p.numel() for p in self.target.parameters())}
        if self.projectors is not None:
            counts["projector_parameters"] = self.projectors.num_parameters()
        return counts

    def guiding(self, step: int | None) -> bool:
        return self.objective.calls_guide and self.schedule.on(step)

    def weight_at(self, step: int | None) -> float:
        """The alignment weight at ``step`` (:meth:`WeightSchedule.at`)."""
        return self.schedule.at(step)

    def balance_scale(self, task: Tensor, align: Tensor) -> Tensor:
        """VA-VAE's / VQGAN's adaptive weight: ‖∇task‖ / (‖∇align‖ + 1e-4) on the reference parameter, in
        [0, 1e4], without gradient. 1 where there is no gradient to compare (evaluation, no_grad)."""
        if not (self.training and torch.is_grad_enabled() and task.requires_grad and align.requires_grad):
            return align.new_ones(())
        p = self._reference_parameter()
        g_task = torch.autograd.grad(task, p, retain_graph=True, allow_unused=True)[0]
        g_align = torch.autograd.grad(align, p, retain_graph=True, allow_unused=True)[0]
        if g_task is None or g_align is None:
            raise PairgraphError(f"guidance.balance_parameter {self.balancing.parameter or p.shape} receives no "
                                 "gradient from the task or the alignment loss",
                                 "name a target parameter at or before the last mapped target tap")
        scale = (g_task.norm() / (g_align.norm() + 1e-4)).clamp(0.0, 1e4).detach()
        self.last_balance = float(scale)
        return scale

    def _reference_parameter(self) -> nn.Parameter:
        params = dict(self.target.state_dict(keep_vars=True))  # the eager model's names, hooked or generated
        name = self.balancing.parameter
        if name is None:
            module = split_call(self.pairs[-1][1])[0]
            name = next((k for k in (f"{module}.weight", f"{module}.weight_ih_l0") if k in params),
                        next((k for k in params if k.startswith(module + ".")), None))
        if name not in params or not isinstance(params[name], nn.Parameter):
            close = difflib.get_close_matches(str(name), list(params), n=1)
            raise PairgraphError(f"guidance.balance_parameter {name!r} is not a parameter of the target",
                                 f"did you mean {close[0]!r}?" if close else "name a state-dict entry of the target")
        return params[name]

    def compile_alignment(self, device: torch.device, mode: str | None = None) -> CompiledTerms:
        """Run the objective's terms (the alignment) under ``torch.compile`` from the next step on, in ``mode``
        (default :func:`pairgraph.core.compiled.compile_mode` of ``device``); eager, with one line, where
        ``torch.compile`` fails. The networks stay as they are (the benchmark compiles them apart)."""
        self.compiled_terms = CompiledTerms(self.objective.terms, mode or compile_mode(device))
        return self.compiled_terms

    @property
    def compile_seconds(self) -> float | None:
        """The first compiled step's compile time (None: not compiled, or fell back to eager)."""
        return self.compiled_terms.seconds if self.compiled_terms is not None else None

    def cache_guide(self, inputs: Callable[[Tensor], Tensor], n: int, *, max_bytes: float = 4 * 2**30,
                    chunk: int = 256, progress: Callable[[int], None] | None = None) -> Any:
        """Run the guide once over examples ``0..n-1`` (``inputs(index)`` → batch) and keep its taps.

        Only valid when the guide sees exactly the training example on every step: a similarity objective
        (mode guidance), guide_input same, guide_bn eval, no augmentation, not data-parallel.
        """
        why = ("mode is " + self.objective.name if not self.objective.compares_similarity else
               "guide_input is noise" if self.feed.guide_input != "same" else
               "guide_bn is batch (statistics depend on the batch)" if self.feed.guide_bn != "eval" else None)
        if why:
            raise PairgraphError(f"cannot cache the guide: {why}", "set guidance.cache_guide: false")
        device = next(iter(self.target.parameters())).device
        self.guide_cache = GuideCache.build(
            self.guide, inputs, n, self.guide_taps(), measure=self.measure, sequence=self.sequence,
            mask_fn=self.feed.mask_fn, chunk=chunk, max_bytes=max_bytes, device=device, progress=progress)
        self.train(self.training)
        return self.guide_cache

    def forward(self, x: Tensor, y: Tensor, step: int | None = None, index: Tensor | None = None) -> PairOutput:
        out, target_taps = self.target(x)
        task = self.task_loss(out, y)
        if not self.guiding(step):
            return PairOutput(task, task, task.new_zeros(()), out)
        cached = self.guide_cache is not None and index is not None and not self.global_batch
        if cached:  # the guide's prepared taps come from the cache: no guide forward this step
            guide_taps, g_out = {}, None
        else:
            gx = self.feed.guide_view(x)
            self.guide_calls += 1
            with torch.no_grad():
                g_out, guide_taps = self.guide(gx)
        mask = self.feed.mask_fn(x) if self.feed.mask_fn is not None else None
        if self.global_batch and self.objective.reads_taps:
            # data-parallel: the alignment over the global batch, not each rank's shard (every rank then
            # computes the same projector loss, so projector gradients agree across ranks); collectives must
            # run in the same order on every rank: ordered, not set (hash-randomised)
            guide_taps = {g: gather_batch(guide_taps[g]) for g in self.guide_taps()}
            target_taps = {t: gather_batch(target_taps[t]) for t in dict.fromkeys(p[1] for p in self.pairs)}
            mask = gather_batch(mask) if mask is not None else None
        states = self.guide_cache.states(index, self.precision) if cached else None
        terms = (self.compiled_terms or self.objective.terms)(self.pairs, Activations(g_out, guide_taps, out, target_taps, mask, states))
        align = self.objective.align(self.pairs, terms)
        balanced = self.balancing.kind == "grad_norm" and self.objective.balanced
        weight = self.weight_at(step) * (self.balance_scale(task, align) if balanced else 1.0)
        return PairOutput(task + weight * align, task, align, out, terms, True)
