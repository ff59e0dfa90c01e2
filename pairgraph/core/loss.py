"""The guidance loss: task loss + Σ w·(1 − M(target tap, guide tap)), one forward of each network.

* :func:`alignment_terms` — 1 − M for every mapped pair, each tap prepared once;
* :class:`GuidedPair` — target + frozen guide (run under ``no_grad``); also the baseline and
  distill modes, the guide cache and global-batch CKA under torchrun.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairgraph.core.alignment import keyed, prepare_taps, score_pairs
from pairgraph.core.cache import GuideCache
from pairgraph.core.distributed import gather_batch
from pairgraph.core.measure import check_precision
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


class GuidedPair(nn.Module):
    """Target + frozen guide: ``forward(x, y, step)`` → :class:`PairOutput`.

    mode ``guidance``: task + weight·Σ(1 − M) (``reduce="mean"``: the weighted mean of the terms);
    ``baseline``: task only (guide never called); ``distill``: task + weight·logit distillation;
    ``fitnets``/``repa``: task + weight·Σ (projector loss), with ``projectors`` (one per pair, trained with
    the target: :meth:`trained_parameters`; :mod:`pairgraph.core.projection`). With
    ``until_step`` the guide is called only while ``step < until_step``; a ``schedule`` (linear or cosine)
    decays the weight to 0 at ``schedule_steps``; ``balance="grad_norm"`` scales the alignment term by the
    ratio of the task's to its gradient norm on ``balance_parameter`` (:meth:`balance_scale`);
    ``guide_input="noise"`` feeds the guide ``noise_fn(x)`` instead of x. ``precision`` is that of the
    similarity's matrix products (``similarity.precision``; :func:`pairgraph.core.measure.matmul_precision`).
    With a ``guide_cache`` (:meth:`cache_guide`) and the batch's example numbers passed as
    ``index``, the guide is not run: its prepared taps come from the cache.
    """

    def __init__(
        self,
        guide: nn.Module,
        target: nn.Module,
        pairs: Sequence[tuple[str, str, float]],
        *,
        task_loss: Callable[[Tensor, Tensor], Tensor],
        measure: str = "cka",
        sequence: str = "flatten",
        precision: str = "fp32",
        weight: float = 1.0,
        mode: str = "guidance",
        until_step: int | None = None,
        guide_input: str = "same",
        temperature: float = 4.0,
        guide_bn: str = "eval",
        noise_fn: Callable[[Tensor], Tensor] | None = None,
        mask_fn: Callable[[Tensor], Tensor | None] | None = None,
        reduce: str = "sum",
        schedule: str = "constant",
        schedule_steps: int | None = None,
        balance: str = "none",
        balance_parameter: str | None = None,
        projectors: Projectors | None = None,
        guide_aliases: dict[str, str] | None = None,
    ):
        super().__init__()
        if (projectors is not None) != (mode in ("fitnets", "repa")):
            raise PairgraphError(f"mode {mode!r} {'needs' if projectors is None else 'takes no'} projectors",
                                 "build the pair from a spec (pairgraph.compiler.build.assemble)")
        self.projectors = projectors
        self.guide_aliases = dict(guide_aliases or {})  # guide taps whose similarity another tap gives
        self.target = target
        self.guide = guide
        self.pairs = [(g, t, float(w)) for g, t, w in pairs]
        self.task_loss = task_loss
        self.measure, self.sequence, self.precision = measure, sequence, check_precision(precision)
        self.weight, self.mode, self.until_step = weight, mode, until_step
        self.guide_input, self.temperature, self.guide_bn = guide_input, temperature, guide_bn
        self.noise_fn, self.mask_fn = noise_fn, mask_fn
        self.reduce, self.schedule, self.schedule_steps = reduce, schedule, schedule_steps
        self.balance, self.balance_parameter = balance, balance_parameter
        self.last_balance: float | None = None  # the grad_norm scale of the last training step
        self.guide.requires_grad_(False)
        self.guide_calls = 0
        self.guide_cache: GuideCache | None = None  # set by cache_guide()
        self.global_batch = False  # set by the trainer under torchrun (see pairgraph.core.distributed)
        self.train()

    def train(self, mode: bool = True) -> GuidedPair:
        self.training = mode
        self.target.train(mode)
        if self.projectors is not None:
            self.projectors.train(mode)
        self.guide.eval()  # the guide is never updated: running stats stay as they are
        if self.guide_bn == "batch":
            for m in self.guide.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.track_running_stats = False  # batch statistics, running buffers untouched
        return self

    def guide_taps(self) -> list[str]:
        """The guide taps whose activations the alignment reads (an alias's source, not the alias)."""
        return list(dict.fromkeys(self.guide_aliases.get(g, g) for g, _, _ in self.pairs))

    def trained_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: the target's parameters and the projectors' (fitnets, repa)."""
        extra = list(self.projectors.parameters()) if self.projectors is not None else []
        return [p for p in self.target.parameters() if p.requires_grad] + extra

    def guiding(self, step: int | None) -> bool:
        if self.mode == "baseline" or (self.schedule != "constant" and self.weight_at(step) == 0):
            return False  # a decayed schedule has ended: the guide is no longer run
        return self.until_step is None or step is None or step < self.until_step

    def weight_at(self, step: int | None) -> float:
        """The alignment weight at ``step``: constant, or decaying linearly / on a cosine to 0 at schedule_steps."""
        if self.schedule == "constant" or step is None or self.schedule_steps is None:
            return self.weight
        frac = min(step / self.schedule_steps, 1.0)
        return self.weight * (1 - frac if self.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac)))

    def balance_scale(self, task: Tensor, align: Tensor) -> Tensor:
        """VA-VAE's / VQGAN's adaptive weight: ‖∇task‖ / (‖∇align‖ + 1e-4) on the reference parameter, in
        [0, 1e4], without gradient. 1 where there is no gradient to compare (evaluation, no_grad)."""
        if not (self.training and torch.is_grad_enabled() and task.requires_grad and align.requires_grad):
            return align.new_ones(())
        p = self._reference_parameter()
        g_task = torch.autograd.grad(task, p, retain_graph=True, allow_unused=True)[0]
        g_align = torch.autograd.grad(align, p, retain_graph=True, allow_unused=True)[0]
        if g_task is None or g_align is None:
            raise PairgraphError(f"guidance.balance_parameter {self.balance_parameter or p.shape} receives no "
                                 "gradient from the task or the alignment loss",
                                 "name a target parameter at or before the last mapped target tap")
        scale = (g_task.norm() / (g_align.norm() + 1e-4)).clamp(0.0, 1e4).detach()
        self.last_balance = float(scale)
        return scale

    def _reference_parameter(self) -> nn.Parameter:
        params = dict(self.target.state_dict(keep_vars=True))  # the eager model's names, hooked or generated
        name = self.balance_parameter
        if name is None:
            module = split_call(self.pairs[-1][1])[0]
            name = next((k for k in (f"{module}.weight", f"{module}.weight_ih_l0") if k in params),
                        next((k for k in params if k.startswith(module + ".")), None))
        if name not in params or not isinstance(params[name], nn.Parameter):
            close = difflib.get_close_matches(str(name), list(params), n=1)
            raise PairgraphError(f"guidance.balance_parameter {name!r} is not a parameter of the target",
                                 f"did you mean {close[0]!r}?" if close else "name a state-dict entry of the target")
        return params[name]

    def cache_guide(self, inputs: Callable[[Tensor], Tensor], n: int, *, max_bytes: float = 4 * 2**30,
                    chunk: int = 256, progress: Callable[[int], None] | None = None) -> Any:
        """Run the guide once over examples ``0..n-1`` (``inputs(index)`` → batch) and keep its taps.

        Only valid when the guide sees exactly the training example on every step: mode guidance,
        guide_input same, guide_bn eval, no augmentation, not data-parallel.
        """
        why = ("mode is " + self.mode if self.mode != "guidance" else
               "guide_input is noise" if self.guide_input != "same" else
               "guide_bn is batch (statistics depend on the batch)" if self.guide_bn != "eval" else None)
        if why:
            raise PairgraphError(f"cannot cache the guide: {why}", "set guidance.cache_guide: false")
        device = next(iter(self.target.parameters())).device
        self.guide_cache = GuideCache.build(
            self.guide, inputs, n, self.guide_taps(), measure=self.measure, sequence=self.sequence,
            mask_fn=self.mask_fn, chunk=chunk, max_bytes=max_bytes, device=device, progress=progress)
        self.train(self.training)
        return self.guide_cache

    def forward(self, x: Tensor, y: Tensor, step: int | None = None, index: Tensor | None = None) -> PairOutput:
        out, target_taps = self.target(x)
        task = self.task_loss(out, y)
        zero = task.new_zeros(())
        if not self.guiding(step):
            return PairOutput(task, task, zero, out)
        cached = self.guide_cache is not None and index is not None and not self.global_batch
        if cached:  # the guide's prepared taps come from the cache: no guide forward this step
            guide_taps, g_out = {}, None
        else:
            gx = x
            if self.guide_input == "noise":
                if self.noise_fn is None:
                    raise PairgraphError("guide_input 'noise' needs a task noise function", "build the pair from a spec")
                gx = self.noise_fn(x)
            self.guide_calls += 1
            with torch.no_grad():
                g_out, guide_taps = self.guide(gx)
        mask = self.mask_fn(x) if self.mask_fn is not None else None
        if self.mode == "distill":
            d = distill_loss(out, g_out, self.temperature, mask)
            return PairOutput(task + self.weight_at(step) * d, task, d, out, {"distill": d}, True)
        if self.global_batch:  # data-parallel: the alignment over the global batch, not each rank's shard
            # (every rank then computes the same projector loss, so projector gradients agree across ranks)
            # collectives must run in the same order on every rank: ordered, not set (hash-randomised)
            needed = self.guide_taps() if self.projectors is None else dict.fromkeys(p[0] for p in self.pairs)
            guide_taps = {g: gather_batch(guide_taps[g]) for g in needed}
            target_taps = {t: gather_batch(target_taps[t]) for t in dict.fromkeys(p[1] for p in self.pairs)}
            mask = gather_batch(mask) if mask is not None else None
        if self.projectors is not None:
            values = self.projectors.terms(guide_taps, target_taps, mask)
            terms = {tap_key(g, t): v for (g, t, _), v in zip(self.pairs, values, strict=True)}
        else:
            terms = alignment_terms(guide_taps, target_taps, self.pairs, self.measure, mask, self.sequence,
                                    guide_states=self.guide_cache.states(index, self.precision) if cached else None,
                                    aliases=self.guide_aliases, precision=self.precision)
        return self._combine(task, terms, step, out)

    def _combine(self, task: Tensor, terms: dict[str, Tensor], step: int | None, out: Tensor) -> PairOutput:
        """task + weight(step)·(Σ or mean of w·term), the weight scaled by grad_norm balancing when asked."""
        align = sum(w * terms[tap_key(g, t)] for g, t, w in self.pairs)
        if self.reduce == "mean":
            align = align / sum(w for _, _, w in self.pairs)
        weight = self.weight_at(step) * (self.balance_scale(task, align) if self.balance == "grad_norm" else 1.0)
        return PairOutput(task + weight * align, task, align, out, terms, True)


# ---------------------------------------------------------------- building from a spec
