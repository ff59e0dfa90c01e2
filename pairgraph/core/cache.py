"""Guide caching: a frozen guide on a fixed training set is run once, not on every step.

A frozen guide in eval mode, fed the batch itself (no noise, no augmentation), gives every
training example the same activations on every step. For the similarity, all that a step needs
from a guide tap is a function of the batch's rows, so :class:`GuideCache` keeps, per tap, the
smaller of two exact forms over the ``N`` training examples:

* ``feat`` (d < N): the rows themselves, ``N × d``; a step indexes its b rows and prepares them as
  usual (every measure);
* ``gram`` (d ≥ N): the ``N × N`` gram of the rows after subtracting the dataset mean, ``G``; a
  step takes the sub-gram ``G[i, i]`` and the measure double-centres it in O(b²), which equals the
  gram of the batch-centred rows, because centring the rows with the batch mean removes any common
  offset (linear CKA and debiased CKA; RSA needs the raw rows).

Memory is ``4 · N · Σ_taps min(d, N)`` bytes (plus ``4 · N · Σ d`` while building). Building runs
the guide once over the training set and costs ``N² · d`` per gram tap; every step then skips the
guide's forward and, for gram taps, their ``b² · d`` grams. The cache is computed in fp32 without
autocast, so under ``precision: bf16`` it is the more accurate of the two. See
docs/performance.md for measured costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pairgraph.core.alignment import Prepared, TapGroup
from pairgraph.core.similarity import get_measure
from pairgraph.errors import PairgraphError


class CacheTooLarge(PairgraphError):
    """The cache would not fit under its memory limit."""


@dataclass
class CachedTap:
    kind: str  # "feat": (N, d) rows; "gram": (N, N) gram of dataset-centred rows
    mat: Tensor  # a view into its group's stacked tensor


@dataclass
class CachedGroup:
    """Cached taps of one kind and size, stacked (k, N, d or N): a step indexes and prepares them at once, in
    the groups :func:`pairgraph.core.alignment.score_pairs` reads."""

    kind: str
    names: list[str]
    mats: Tensor


class GuideCache:
    """Per-tap cached guide rows or grams over a fixed dataset, indexed by example number, stored stacked by
    kind and size (:class:`CachedGroup`)."""

    def __init__(self, groups: list[CachedGroup], measure: str):
        self.groups, self.measure = groups, measure
        self.taps = {n: CachedTap(g.kind, g.mats[i]) for g in groups for i, n in enumerate(g.names)}

    @property
    def nbytes(self) -> int:
        return sum(g.mats.numel() * g.mats.element_size() for g in self.groups)

    def states(self, index: Tensor, precision: str = "fp32") -> Prepared:
        """The prepared guide states of the examples ``index`` (one step's batch), as ``prepare`` gives at
        ``precision`` (the cache itself is built in fp32), one stacked state per cached group."""
        m = get_measure(self.measure)
        out: Prepared = {}
        for g in self.groups:
            idx = index.to(g.mats.device)
            if g.kind == "feat":
                state = m.prepare_stack(g.mats[:, idx], None, "flatten", precision)
            else:
                state = m.prepare_gram(g.mats[:, idx][:, :, idx], precision)
            out.update(dict.fromkeys(g.names, TapGroup(g.names, state)))
        return out

    @classmethod
    def build(
        cls,
        guide: nn.Module,
        inputs: Callable[[Tensor], Tensor],
        n: int,
        taps: Sequence[str],
        *,
        measure: str = "cka",
        sequence: str = "flatten",
        mask_fn: Callable[[Tensor], Tensor | None] | None = None,
        chunk: int = 256,
        max_bytes: float = 4 * 2**30,
        device: str | torch.device = "cpu",
        progress: Callable[[int], None] | None = None,
    ) -> GuideCache:
        """Run ``guide`` (frozen, eval) over examples ``0..n-1`` (``inputs(index)`` gives a batch).

        Raises a one-line error when the measure or sequence mode cannot be cached, or when the
        cache (or the transient rows of its gram taps) would exceed ``max_bytes``.
        """
        m = get_measure(measure)
        if sequence != "flatten":
            raise PairgraphError(f"the guide cache needs similarity.sequence 'flatten' (got {sequence!r})",
                                 "set similarity.sequence: flatten or guidance.cache_guide: false")
        taps = list(dict.fromkeys(taps))
        guide.eval()
        rows: dict[str, list[Tensor]] = {t: [] for t in taps}
        with torch.no_grad():
            for start in range(0, n, chunk):
                idx = torch.arange(start, min(n, start + chunk))
                x = inputs(idx).to(device)
                _, acts = guide(x)
                mask = mask_fn(x) if mask_fn is not None else None
                for t in taps:
                    a = acts[t].float()
                    if a.ndim >= 3 and mask is not None:  # flatten mode zeroes padded positions
                        a = a * mask.reshape(*mask.shape, *([1] * (a.ndim - 2))).to(a.dtype)
                    rows[t].append(a.reshape(a.shape[0], -1).cpu())
                if progress is not None:
                    progress(len(idx))
                if start == 0:
                    dims = {t: rows[t][0].shape[1] for t in taps}
                    need = 4 * n * sum(min(d, n) for d in dims.values())
                    transient = 4 * n * sum(dims.values())
                    wide = next((t for t, d in dims.items() if d >= n), None)
                    if wide is not None and not m.supports_gram:  # fail before the rest of the pass
                        raise PairgraphError(f"measure {measure!r} cannot be cached as a gram (tap {wide!r} is wide)",
                                             "use cka or debiased_cka, or guidance.cache_guide: false")
                    if max(need, transient) > max_bytes:
                            raise CacheTooLarge(
                            f"the guide cache needs {max(need, transient) / 2**30:.1f} GiB for {n} examples "
                            f"(taps of {sum(dims.values()):,} floats per example), over the "
                            f"{max_bytes / 2**30:.1f} GiB limit",
                            "use a smaller training set (task size), fewer guide taps, or guidance.cache_guide: false",
                        )
        return cls(_stacked(rows, taps, n, device), measure)


def _stacked(rows: dict[str, list[Tensor]], taps: list[str], n: int, device: str | torch.device) -> list[CachedGroup]:
    """The taps' rows (chunks of ``N × d``) as groups of one kind and size: rows when d < N, else the N × N gram
    of the dataset-centred rows (small entries)."""
    layout: dict[tuple[str, int], list[str]] = {}
    for t in taps:
        d = rows[t][0].shape[1]
        layout.setdefault(("feat", d) if d < n else ("gram", n), []).append(t)
    groups = []
    for (kind, size), names in layout.items():
        mats = torch.empty(len(names), n, size, device=device)
        for i, t in enumerate(names):
            r = torch.cat(rows.pop(t)).to(device)
            if kind == "gram":
                r = r - r.mean(dim=0, keepdim=True)
                r = r @ r.T
            mats[i] = r
            del r
        groups.append(CachedGroup(kind, names, mats))
    return groups
