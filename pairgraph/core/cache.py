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

from pairgraph.core.similarity import State, get_measure
from pairgraph.errors import PairgraphError


class CacheTooLarge(PairgraphError):
    """The cache would not fit under its memory limit."""


@dataclass
class CachedTap:
    kind: str  # "feat": (N, d) rows; "gram": (N, N) gram of dataset-centred rows
    mat: Tensor


class GuideCache:
    """Per-tap cached guide rows or grams over a fixed dataset, indexed by example number."""

    def __init__(self, taps: dict[str, CachedTap], measure: str):
        self.taps, self.measure = taps, measure

    @property
    def nbytes(self) -> int:
        return sum(t.mat.numel() * t.mat.element_size() for t in self.taps.values())

    def states(self, index: Tensor, precision: str = "fp32") -> dict[str, State]:
        """The prepared guide states of the examples ``index`` (one step's batch), as ``prepare`` gives at
        ``precision`` (the cache itself is built in fp32)."""
        m = get_measure(self.measure)
        out: dict[str, State] = {}
        for name, tap in self.taps.items():
            idx = index.to(tap.mat.device)
            if tap.kind == "feat":
                out[name] = m.prepare(tap.mat[idx], None, "flatten", precision)
            else:
                out[name] = m.prepare_gram(tap.mat[idx][:, idx], precision)
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
        out: dict[str, CachedTap] = {}
        for t in taps:
            r = torch.cat(rows.pop(t)).to(device)
            if r.shape[1] < n:
                out[t] = CachedTap("feat", r)
            else:
                r = r - r.mean(dim=0, keepdim=True)  # dataset-centred: keeps the gram's entries small
                out[t] = CachedTap("gram", r @ r.T)
            del r
        return cls(out, measure)

