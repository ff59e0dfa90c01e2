"""The alignment's terms for every mapped pair, with an op count that does not grow with the number of pairs.

A guided step's similarity work is small matrix algebra repeated for every tap and every pair; on a GPU each
ATen op is at least one kernel launch, and at these sizes a launch costs more than the work it starts. So:

* **taps of one shape are prepared together**: stacked (k, batch, …) and prepared as one state of ``k · G``
  groups (:meth:`pairgraph.core.measure.Measure.prepare_stack`: one centring, one batched gram or FᵀF, one
  rescale per shape group and side), every op of the measure already working group by group;
* **all pairs of one kind are scored in one batched reduction**: the prepared states of one kind and size
  (all b × b grams, whatever the tap's width; features of one width) are concatenated, each pair's guide
  and target groups gathered by index, and the measure's per-group score taken once over all of them;
* the gathering plan (which groups merge, the index tensors) depends on the taps' names and shapes only, so
  it is made once and kept (:func:`_plan`): a step creates no tensor from host data, so it never waits on one.

Each term is the one :meth:`Measure.score` gives the pair alone (the same per-group arithmetic, batched).
The guide cache (:class:`pairgraph.core.cache.GuideCache`) hands back its states in the same groups.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pairgraph.core.measure import Measure, State, matmul_precision, no_autocast

#: on a CPU, taps of at least this many elements are prepared alone, not stacked: a CPU step is compute-bound, and
#: stacking large taps cost more than the ops it saves (docs/performance.md, "The CPU cost of the batched
#: alignment"). On a GPU every tap is stacked:
#: there a step is launch-bound.
STACK_LIMIT = 2**18


@dataclass
class TapGroup:
    """Taps prepared together: tap ``names[i]`` owns groups ``i·G … (i+1)·G − 1`` of ``state``."""

    names: list[Hashable]
    state: State

    @property
    def groups(self) -> int:
        """G: the groups of one tap (1, or the time steps in position mode)."""
        return self.state.groups // len(self.names)

    @property
    def precision(self) -> str:
        return self.state.precision


#: prepared taps: each tap's name → the group holding it (the taps of a group share one object)
Prepared = dict[Hashable, TapGroup]


def prepare_taps(m: Measure, taps: Mapping[Hashable, Tensor], names: Iterable[Hashable],
                 mask: Tensor | None = None, sequence: str = "flatten", precision: str = "fp32") -> Prepared:
    """The taps ``names`` (each once, in first-seen order) prepared by ``m``: stacked by shape (and by whether
    they need grad: a guide tap's gram needs no backward), and the stacks of one number of groups per tap
    prepared in one call (:meth:`Measure.prepare_stacks`: CKA rescales all their b × b grams at once)."""
    shapes: dict[tuple, list[Hashable]] = {}
    for name in dict.fromkeys(names):
        a = taps[name]
        alone = name if a.device.type == "cpu" and a.numel() >= STACK_LIMIT else None  # see STACK_LIMIT
        shapes.setdefault((tuple(a.shape), a.dtype, a.device, a.requires_grad, alone), []).append(name)
    calls: dict[int, list[list[Hashable]]] = {}  # by the time steps of a tap in position mode (its groups), else 0
    for (shape, *_), group in shapes.items():
        calls.setdefault(shape[1] if sequence == "position" and len(shape) >= 3 else 0, []).append(group)
    out: Prepared = {}
    for stacks in calls.values():
        for idx, state in m.prepare_stacks([stack([taps[n] for n in g]) for g in stacks], mask, sequence, precision):
            g = TapGroup([n for i in idx for n in stacks[i]], state)
            out.update(dict.fromkeys(g.names, g))
    return out


def keyed(prepared: Mapping[Hashable, TapGroup], side: str) -> Prepared:
    """``prepared`` with each name ``n`` as ``(side, n)`` (its groups rewrapped once each): to score one side's
    taps against another's whose names may coincide."""
    wrapped = {id(g): TapGroup([(side, n) for n in g.names], g.state) for g in prepared.values()}
    return {(side, n): wrapped[id(g)] for n, g in prepared.items()}


class _Stack(torch.autograd.Function):
    """``torch.stack`` whose backward is one ``unbind`` (autograd's own takes one ``select`` per tensor)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, *ts: Tensor) -> Tensor:
        return torch.stack(ts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, ...]:
        return grad.unbind(0)


def stack(ts: list[Tensor]) -> Tensor:
    """``torch.stack(ts)``, in a number of ops that does not grow with ``len(ts)``, backward included."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return _Stack.apply(*ts)
    return torch.stack(ts)


def score_pairs(m: Measure, prepared: Mapping[Hashable, TapGroup],
                pairs: Sequence[tuple[Hashable, Hashable]]) -> Tensor:
    """M(a, b) for every pair ``(a, b)`` of prepared taps, as a (P,) tensor in pair order: one batched score per
    pair of groups the pairs take their taps from."""
    groups = list({id(g): g for g in prepared.values()}.values())
    plan = _plan(tuple(tuple(g.names) for g in groups), tuple(pairs), str(groups[0].state.mat.device))
    values = []
    for c in plan.combos:
        a, b = _take(groups[c.a], c.a_index), _take(groups[c.b], c.b_index)
        m._check_pair(a, b)
        with no_autocast(a.mat.device), matmul_precision(a.precision if a.precision == b.precision else "fp32"):
            values.append(_reduce(m._score(a, b), a.keep, b.keep, groups[c.a].groups))
    out = values[0] if len(values) == 1 else torch.cat(values)
    return out if plan.order is None else out.index_select(0, plan.order)


# --------------------------------------------------------------------------------------- the plan


#: which taps of a group a batched score takes: all (None), a run of them (start, count), or any (an index)
Taps = tuple[int, int] | Tensor | None


@dataclass(frozen=True)
class _Combo:
    a: int  # the group of the pairs' first taps
    b: int
    a_index: Taps
    b_index: Taps


@dataclass(frozen=True)
class _Plan:
    combos: list[_Combo]
    order: Tensor | None  # pair i's value is at order[i] of the combos' concatenated values (None: in order)


@functools.lru_cache(maxsize=64)
def _plan(layout: tuple[tuple[Hashable, ...], ...], pairs: tuple[tuple[Hashable, Hashable], ...], device: str) -> _Plan:
    """The batched scores of ``pairs`` over groups of taps ``layout``; made once per layout (no per-step tensors)."""
    where = {n: (g, j) for g, names in enumerate(layout) for j, n in enumerate(names)}
    by_combo: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for p, (a, b) in enumerate(pairs):
        (ga, ia), (gb, ib) = where[a], where[b]
        by_combo.setdefault((ga, gb), []).append((p, ia, ib))

    def taps(ids: list[int], n: int) -> Taps:
        if ids == list(range(ids[0], ids[0] + len(ids))):
            return None if len(ids) == n else (ids[0], len(ids))
        return torch.tensor(ids, device=device)

    combos, order = [], []
    for (ga, gb), members in by_combo.items():
        combos.append(_Combo(ga, gb, taps([i for _, i, _ in members], len(layout[ga])),
                             taps([i for _, _, i in members], len(layout[gb]))))
        order += [p for p, _, _ in members]
    position = sorted(range(len(order)), key=order.__getitem__)
    return _Plan(combos, None if position == list(range(len(order))) else torch.tensor(position, device=device))


# --------------------------------------------------------------------------------------- batched states


def _take(group: TapGroup, index: Taps) -> State:
    """The groups of the taps ``index`` of ``group``'s state, tap after tap."""
    s, g = group.state, group.groups
    if index is None:
        return s

    def pick(t: Tensor) -> Tensor:
        if isinstance(index, tuple):
            return t.narrow(0, index[0] * g, index[1] * g)
        if g == 1:
            return t.index_select(0, index)
        return t.view(-1, g, *t.shape[1:]).index_select(0, index).view(-1, *t.shape[1:])

    return State(s.measure, s.kind, pick(s.mat), pick(s.norm), s.n, s.sequence,
                 None if s.keep is None else pick(s.keep), s.precision)


def _reduce(values: Tensor, keep_a: Tensor | None, keep_b: Tensor | None, groups: int) -> Tensor:
    """Per pair, the mean of its per-group ``values`` over the groups both taps keep (position mode)."""
    if groups == 1 and keep_a is None and keep_b is None:
        return values
    values = values.view(-1, groups)
    keep = torch.ones_like(values, dtype=torch.bool)
    for k in (keep_a, keep_b):
        if k is not None:
            keep = keep & k.view(-1, groups)
    total = torch.where(keep, values, torch.zeros_like(values)).sum(dim=1)
    return total / keep.sum(dim=1).clamp_min(1).to(values.dtype)
