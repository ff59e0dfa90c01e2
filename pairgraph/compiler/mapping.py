"""Mappers: guide ``LayerGraph`` × target ``LayerGraph`` → ``Correspondence``.

The automatic mappers (``uniform``, ``depth``, ``learned``) map every guide tap (none is dropped);
``explicit`` maps what the spec's pairs name, so a guide tap may have no term. Several guide taps
may share a target tap, each pair its own loss term. Register a mapper with ``@MAPPERS.register("name")`` on a function
``(guide, target, **options) -> Correspondence``. A mapper that also names a ``context``
parameter receives a :class:`MappingContext` (the spec and calibration activations, see
``pairgraph.compiler.calibration``); the others never see it, so they stay on the meta device.
See docs/mapping.md for what each mapper does and why.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from pairgraph.config import PairSpec
from pairgraph.config.names import MAPPERS
from pairgraph.core.layer_graph import LayerGraph
from pairgraph.core.similarity import get_measure, similarity_matrix
from pairgraph.errors import PairgraphError, shorten

if TYPE_CHECKING:
    from pairgraph.compiler.calibration import TapActivations


@dataclass
class Correspondence:
    """The layer correspondence I: (guide tap, target tap, weight) triples."""

    pairs: list[tuple[str, str, float]]
    kind: str
    guide: list[str]
    target: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pairs": [{"guide": g, "target": t, "weight": w} for g, t, w in self.pairs],
            "guide_taps": self.guide,
            "target_taps": self.target,
            **({"info": self.info} if self.info else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Correspondence:
        """The correspondence :meth:`to_json` wrote (``pairgraph inspect`` reads a run's build/mapping.json)."""
        pairs = [(p["guide"], p["target"], float(p["weight"])) for p in data["pairs"]]
        return cls(pairs, data["kind"], list(data["guide_taps"]), list(data["target_taps"]), data.get("info", {}))


class MappingContext(Protocol):
    """What :func:`pairgraph.compile` hands to mappers that take a ``context`` argument.

    ``spec`` is the validated spec. ``activations`` yields calibration batches — the guide's and
    the target's tap activations (batch first) on the same inputs, and the padding mask — building
    the real models only when first called (:class:`pairgraph.compiler.calibration.CompileContext`).
    """

    spec: PairSpec

    def activations(self, batches: int, batch_size: int, warmup_steps: int = 0) -> Iterator[TapActivations]: ...


def uniform_indices(n_guide: int, n_target: int) -> list[int]:
    """The paper's Algorithm 1: guide tap i ↦ target tap min(round(i·step), t−1), step = (t−1)/(l−1).

    ``round`` is Python's (half to even), exactly as the published implementation computes it.
    """
    if n_guide < 1 or n_target < 1:
        raise PairgraphError("cannot map an empty layer list", "select at least one tap point on each side")
    step = (n_target - 1) / (n_guide - 1) if n_guide > 1 else 1
    return [min(round(i * step), n_target - 1) for i in range(n_guide)]


@MAPPERS.register("uniform")
def uniform(guide: LayerGraph, target: LayerGraph) -> Correspondence:
    """Spread the guide's taps evenly over the target's (paper §3.2, Algorithm 1)."""
    idx = uniform_indices(len(guide), len(target))
    pairs = [(g.name, target.taps[j].name, 1.0) for g, j in zip(guide.taps, idx)]
    return Correspondence(pairs, "uniform", guide.names, target.names)


@MAPPERS.register("depth")
def depth(guide: LayerGraph, target: LayerGraph) -> Correspondence:
    """Map each guide tap to the target tap of nearest relative depth in its DAG.

    Relative depth = longest-path depth / max depth, so parallel branches (a ResNet's
    downsample and the block it bypasses) get the depth of where they start; ties go to the
    earlier target tap.
    """
    gmax, tmax = max(guide.max_depth(), 1), max(target.max_depth(), 1)
    pairs = []
    for g in guide.taps:
        rel = g.depth / gmax
        best = min(target.taps, key=lambda t: (abs(t.depth / tmax - rel), t.index))
        pairs.append((g.name, best.name, 1.0))
    return Correspondence(pairs, "depth", guide.names, target.names)


def monotone_assignment(scores: Sequence[Sequence[float]]) -> list[int]:
    """Columns ``j_0 ≤ j_1 ≤ … ≤ j_{l−1}`` maximising ``Σ_i scores[i][j_i]`` (one per row).

    Dynamic programming in O(l·t): ``best_i(j) = scores[i][j] + max_{k ≤ j} best_{i−1}(k)``, the
    inner max a running maximum over j. Ties go to the earlier column.
    """
    if not scores or not scores[0]:
        raise PairgraphError("cannot map an empty layer list", "select at least one tap point on each side")
    t = len(scores[0])
    best = [float(v) for v in scores[0]]
    back: list[list[int]] = []
    for row in scores[1:]:
        run, arg = -math.inf, 0
        nxt, ptr = [0.0] * t, [0] * t
        for j in range(t):
            if best[j] > run:
                run, arg = best[j], j
            nxt[j], ptr[j] = run + float(row[j]), arg
        best = nxt
        back.append(ptr)
    j = max(range(t), key=lambda k: (best[k], -k))
    out = [j]
    for ptr in reversed(back):
        j = ptr[j]
        out.append(j)
    return out[::-1]


def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PairgraphError(f"mapping option {name} must be a whole number ≥ {minimum} (got {value!r})",
                             f"set mapping.{name} to an integer ≥ {minimum}")
    return value


def relative_depths(graph: LayerGraph) -> list[float]:
    """Each tap's longest-path depth ÷ the deepest tap's (0 for a graph of one depth), in tap order."""
    deepest = max(graph.max_depth(), 1)
    return [t.depth / deepest for t in graph.taps]


def order_preserving(matrix: torch.Tensor, guide: LayerGraph, target: LayerGraph, depth_prior: float) -> list[int]:
    """Target tap per guide tap: the depth-monotone path of highest total preference.

    Preference = similarity less ``depth_prior`` × the gap in relative depth (as :func:`depth`
    measures it): a similarity contrast smaller than the prior's, as in a flat matrix, gives the
    ``depth`` mapping; a larger one is followed. Taps are ordered by (depth, index) on both sides, so
    a deeper guide tap never lands on a shallower target tap; several guide taps may share a target
    tap. A NaN cell never wins.
    """
    rg = torch.tensor(relative_depths(guide), dtype=torch.float64)
    rt = torch.tensor(relative_depths(target), dtype=torch.float64)
    s = matrix.double()
    s = s - s.nan_to_num(0.0).sum(1, keepdim=True) / torch.isfinite(s).sum(1, keepdim=True).clamp(min=1)
    similarity = (s * 1e9).round() / 1e9  # row means dropped (they move every path alike); float dust is a tie
    pref = torch.nan_to_num(similarity - depth_prior * (rg[:, None] - rt[None, :]).abs(), nan=-math.inf)
    rows = sorted(range(len(guide)), key=lambda i: (guide.taps[i].depth, i))
    cols = sorted(range(len(target)), key=lambda j: (target.taps[j].depth, j))
    picked = monotone_assignment(pref[rows][:, cols].tolist())
    idx = [0] * len(rows)
    for i, k in zip(rows, picked):
        idx[i] = cols[k]
    return idx


def _check_options(spec: PairSpec, batches: Any, batch_size: Any, warmup_steps: Any, monotone: Any,
                   depth_prior: Any) -> tuple[int, int, int]:
    batches = _count(batches, "batches", 1)
    warmup_steps = _count(warmup_steps, "warmup_steps", 0)
    batch_size = _count(batch_size if batch_size is not None else min(spec.train.batch_size, 256), "batch_size", 2)
    if not isinstance(monotone, bool):
        raise PairgraphError(f"mapping option monotone must be true or false (got {monotone!r})",
                             "set mapping.monotone to true (keep layer order) or false (argmax per guide tap)")
    if isinstance(depth_prior, bool) or not isinstance(depth_prior, int | float) or not 0 <= depth_prior < math.inf:
        raise PairgraphError(f"mapping option depth_prior must be a finite number ≥ 0 (got {depth_prior!r})",
                             "set mapping.depth_prior to e.g. 0.05 (0: similarity alone decides)")
    return batches, batch_size, warmup_steps


def _num(v: float) -> float | None:  # JSON has no NaN/inf
    return round(float(v), 6) if math.isfinite(v) else None


@MAPPERS.register("learned")
def learned(
    guide: LayerGraph,
    target: LayerGraph,
    *,
    context: MappingContext | None = None,
    batches: int = 2,
    batch_size: int | None = None,
    warmup_steps: int = 0,
    monotone: bool = True,
    measure: str | None = None,
    depth_prior: float = 0.05,
) -> Correspondence:
    """Choose the correspondence from data: an order-preserving assignment over measured similarities.

    Measures every guide tap against every target tap (``measure``, default the spec's) on
    ``batches`` calibration batches of the task's training split — guide with the spec's weights,
    target at initialisation or after ``warmup_steps`` task-loss steps — and averages the matrices.
    With ``monotone`` (default) the assignment is :func:`order_preserving` (depth order kept, a flat
    matrix gives the ``depth`` mapping); with ``monotone: false`` each guide tap takes its most similar
    target tap. ``info`` keeps the matrix, the choice and the ``depth`` mapping's choice beside it.
    """
    if context is None:
        raise PairgraphError("mapping 'learned' measures similarities on data and needs the spec's models and task",
                             "compile it from a spec (pairgraph.compile or `pairgraph compile`), or use uniform/depth")
    spec = context.spec
    batches, batch_size, warmup_steps = _check_options(spec, batches, batch_size, warmup_steps, monotone, depth_prior)
    measure = measure or spec.similarity.measure
    get_measure(measure)  # an unknown name fails before any model is built
    total: torch.Tensor | None = None
    used = rows = 0
    for act in context.activations(batches, batch_size, warmup_steps):
        g = {n: act.guide[n].float() for n in guide.names}
        t = {n: act.target[n].float() for n in target.names}
        s = similarity_matrix(g, t, measure, act.mask, spec.similarity.sequence).double().cpu()
        total = s if total is None else total + s
        used, rows = used + 1, next(iter(g.values())).shape[0]
    assert total is not None, "calibration yielded no batch"
    matrix = total / used
    finite = torch.nan_to_num(matrix, nan=-math.inf)  # a NaN similarity never wins a tap
    if monotone:
        idx = order_preserving(matrix, guide, target, float(depth_prior))
    else:
        idx = [int(j) for j in finite.argmax(dim=1)]
    pairs = [(g.name, target.taps[j].name, 1.0) for g, j in zip(guide.taps, idx)]
    by_depth = [target.names.index(t) for _, t, _ in depth(guide, target).pairs]
    info = {
        "matrix": [[_num(v) for v in r] for r in matrix.tolist()],
        "measure": measure,
        "sequence": spec.similarity.sequence,
        "batches": used,
        "batch_size": rows,
        "warmup_steps": warmup_steps,
        "monotone": monotone,
        "depth_prior": float(depth_prior),
        "guide_weights": spec.guide.weights,
        "chosen": idx,
        "depth_chosen": by_depth,
        "mean_similarity": _num(sum(float(finite[i, j]) for i, j in enumerate(idx)) / len(idx)),
    }
    return Correspondence(pairs, "learned", guide.names, target.names, info)


# ---------------------------------------------------------------- explicit: pairs by hand


def _names(names: Sequence[str], limit: int = 4) -> str:
    """At most ``limit`` names, then how many more: short enough for a one-line error."""
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def _explicit_entry(i: int, entry: Any) -> tuple[str, str, float]:
    """``mapping.pairs[i]`` checked for shape: ``(guide glob, target glob, weight)``."""
    where = f"mapping.pairs[{i}]"
    form = "[guide_glob, target_glob] or [guide_glob, target_glob, weight]"
    if not isinstance(entry, list | tuple) or len(entry) not in (2, 3):
        got = (f"{len(entry)} item{'s' * (len(entry) != 1)}" if isinstance(entry, list | tuple)
               else f"a {type(entry).__name__}")
        raise PairgraphError(f"{where} must be {form} (got {got}: {shorten(repr(entry), 80)})",
                             f"write {where} as e.g. [\"blocks.0\", \"layers.0\", 1.0]")
    for k, side in enumerate(("guide", "target")):
        if not isinstance(entry[k], str) or not entry[k]:
            raise PairgraphError(f"{where}: the {side} glob must be a non-empty string (got {shorten(repr(entry[k]), 80)})",
                                 f"quote the {side} tap name or glob in {where}, e.g. \"blocks.*\"")
    weight = entry[2] if len(entry) == 3 else 1.0
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        raise PairgraphError(f"{where}: the weight must be a finite number ≥ 0 (got {shorten(repr(weight), 80)})",
                             f"make the third item of {where} a number such as 1.0 (0 turns the term off), "
                             "or leave it out for weight 1")
    return entry[0], entry[1], float(weight)


def _match(graph: LayerGraph, other: LayerGraph, glob: str, side: str, i: int) -> list[str]:
    """The ``side`` taps ``glob`` matches (``fnmatchcase``), in tap order; none is a one-line error."""
    found = [n for n in graph.names if fnmatch.fnmatchcase(n, glob)]
    if found:
        return found
    close = difflib.get_close_matches(glob, graph.names, n=3, cutoff=0.5)
    other_side = "target" if side == "guide" else "guide"
    if any(fnmatch.fnmatchcase(n, glob) for n in other.names):
        hint = f"it matches {other_side} taps: each entry is [guide, target, weight], guide first"
    elif close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = f"use one of the {side} taps: {_names(graph.names, 6)}"
    raise PairgraphError(f"mapping.pairs[{i}]: {side} glob {glob!r} matches no {side} tap", hint)


def _pair_up(i: int, g_glob: str, gs: list[str], t_glob: str, ts: list[str]) -> list[tuple[str, str]]:
    """Zip equal counts; one tap on a side goes with every tap of the other; anything else is an error."""
    if len(gs) == len(ts):
        return list(zip(gs, ts))
    if len(gs) == 1:
        return [(gs[0], t) for t in ts]
    if len(ts) == 1:
        return [(g, ts[0]) for g in gs]
    raise PairgraphError(
        f"mapping.pairs[{i}]: guide glob {g_glob!r} matches {len(gs)} taps ({_names(gs)}) but target glob "
        f"{t_glob!r} matches {len(ts)} ({_names(ts)}); pairing needs equal counts or a single tap on one side",
        "split the entry into groups of equal size, or narrow one glob to a single tap")


@MAPPERS.register("explicit")
def explicit(guide: LayerGraph, target: LayerGraph, *, pairs: Any = None) -> Correspondence:
    """The pairs the user wrote: ``pairs: [[guide_glob, target_glob, weight], ...]`` (weight default 1).

    Globs are ``fnmatch.fnmatchcase`` patterns over tap names (an exact name is a glob); each must
    match at least one tap of its side. Within an entry the matched taps are taken in tap order
    (the network's order, not alphabetical): equal counts pair zip-wise (the k-th guide match with
    the k-th target match); a side matching one tap pairs it with every tap the other side matches;
    any other count mismatch is an error. Every pair of an entry gets the entry's weight
    (a finite number ≥ 0; 0 keeps the term in the logs without training on it). Pairs are listed in
    entry order. Guide taps no entry names get no loss term (a partial mapping is allowed). The
    same (guide tap, target tap) produced by two entries is an error, not merged: the loss keeps one
    term per pair, so a merge would have to invent a weight (sum? max?), and an overlap is almost
    always a glob wider than meant. Needs no data.
    """
    if pairs is None:
        raise PairgraphError("mapping 'explicit' needs pairs",
                             'add mapping.pairs: [["guide_glob", "target_glob", weight], ...]')
    if not isinstance(pairs, list | tuple) or not pairs:
        raise PairgraphError(f"mapping.pairs must be a non-empty list of [guide_glob, target_glob, weight] "
                             f"entries (got {shorten(repr(pairs), 80)})", 'write mapping.pairs: [["blocks.*", "layers.*", 1.0]]')
    out: list[tuple[str, str, float]] = []
    first: dict[tuple[str, str], int] = {}
    entries = []
    for i, entry in enumerate(pairs):
        g_glob, t_glob, weight = _explicit_entry(i, entry)
        gs = _match(guide, target, g_glob, "guide", i)
        ts = _match(target, guide, t_glob, "target", i)
        matched = _pair_up(i, g_glob, gs, t_glob, ts)
        for g, t in matched:
            if (g, t) in first:
                raise PairgraphError(f"mapping.pairs[{first[g, t]}] and mapping.pairs[{i}] both pair guide tap "
                                     f"{g!r} with target tap {t!r}",
                                     "keep that pair in one entry only (narrow the other's globs)")
            first[g, t] = i
            out.append((g, t, weight))
        entries.append({"guide": g_glob, "target": t_glob, "weight": weight, "pairs": len(matched)})
    return Correspondence(out, "explicit", guide.names, target.names, {"entries": entries})


def build_mapping(kind: str, guide: LayerGraph, target: LayerGraph, context: MappingContext | None = None,
                  **options: Any) -> Correspondence:
    """Run mapper ``kind`` with the spec's ``options``; ``context`` goes only to mappers that take one."""
    mapper = MAPPERS.get(kind)
    signature = inspect.signature(mapper)
    kwargs = dict(options)
    if "context" in signature.parameters:
        kwargs["context"] = context
    try:
        signature.bind(guide, target, **kwargs)
    except TypeError as e:
        raise PairgraphError(f"mapping {kind!r} rejected its options {sorted(options)}: {e}",
                             "remove the unknown mapping options") from None
    return mapper(guide, target, **kwargs)
