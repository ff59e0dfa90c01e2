"""Representational similarity measures between two layers' activations on the same minibatch.

The guidance loss is ``Σ w · (1 − M(A_t, A_g))``; this module provides M.  Every measure takes
``R ∈ ℝ^{b×d1}`` and ``R' ∈ ℝ^{b×d2}`` (b samples, one per row) and returns a scalar in which
1 means "identical up to the measure's invariances":

``cka`` — linear CKA with the biased HSIC (paper §3.1, eq. 2–6; Kornblith et al. 2019):
    K = R Rᵀ,  L = R' R'ᵀ,  H = I − 11ᵀ/b,  K̃ = HKH,  L̃ = HLH
    HSIC(K, L) = tr(K̃ L̃)
    CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))          ∈ [0, 1], 1 = identical
    (eq. 6's sentence says the range the other way round; it is 1 for identical representations.)
``debiased_cka`` — CKA with the unbiased HSIC of Song et al. 2007 (as in Nguyen, Raghu & Kornblith 2021):
    K̊ = K − diag(K) (zeroed diagonal),  L̊ likewise
    HSIC₁ = [tr(K̊L̊) + (1ᵀK̊1)(1ᵀL̊1)/((b−1)(b−2)) − 2/(b−2) · 1ᵀK̊L̊1] / (b(b−3))
    dCKA = HSIC₁(K, L) / sqrt(HSIC₁(K, K) · HSIC₁(L, L))      ≈ 0 for independent data, needs b ≥ 4
``rsa`` — representational similarity analysis (paper appendix H; Kriegeskorte et al. 2008):
    D_ij = 1 − r_i·r_j / (‖r_i‖‖r_j‖)                          (cosine-distance RDM)
    RSA = pearson(lowertri(D), lowertri(D'))                    (strict lower triangles, needs b ≥ 3)

How it is computed (see docs/similarity.md for the derivations and measured costs):

* ``Measure.prepare(act)`` does all per-tap work once per step; ``Measure.score(a, b)`` only the
  per-pair work, so a tap mapped to several layers is prepared once.
* Centring subtracts the column mean (never a b×b H); the first row is subtracted before the mean so a
  constant activation centres to exactly zero.  Inputs are cast to fp32 (autocast off) first, so
  fp16/bf16 activations cannot overflow.  Small taps (d < b) divide their centred features by the
  Frobenius norm (after a detached max-abs rescale); wide taps (d ≥ b) instead divide the b×b gram by
  its detached trace (= ‖F‖²_F), which costs O(b²) rather than several passes over b×d features and
  their gradients; only when that gram overflows fp32 do they fall back to scaling the features.
  CKA is scale-invariant, so either rescale is exact.
* CKA keeps, per tap, the centred features ``F`` (b×d) when d < b or the centred gram ``K = FFᵀ``
  (b×b) when d ≥ b.  tr(K̃L̃) is then ‖FᵀG‖²_F (cost b·d1·d2), Σ K⊙L (cost b²) or, mixed,
  Σ F⊙(L F) (cost b²·d1).
* Debiased CKA zeroes the gram's diagonal and folds its row sums r = K̊1 and total t = 1ᵀK̊1 into a
  U-centred gram once per tap:  K_u = K̊ − (r1ᵀ + 1rᵀ)/(b−2) + t/((b−1)(b−2)),  diag(K_u) = 0,  so that
  b(b−3)·HSIC₁(K, L) = Σ K_u⊙L_u  — a pair costs O(b²), and no large terms cancel (fp32-accurate).
* RSA builds the b×b cosine matrix once per tap (cost b²·d) from r_i = μ + c_i, so a constant tap
  gives bit-identical cosines, then keeps its strict lower triangle centred and scaled to unit norm;
  Pearson(D, D') = Pearson(cos, cos') because D = 1 − cos, so a pair is one O(b²) dot product.
* Everything runs in at least fp32 with autocast disabled (float64 stays float64 — used by the
  gradient checks).  ``precision`` (``similarity.precision``: fp32 | tf32 | bf16) applies to the matrix
  products alone — the grams, CKA's ‖FᵀF‖ and the products of ``score``, forward and backward — whose
  results are fp32 at every precision (:func:`pairgraph.core.measure.matmul_precision`).
  Denominators are ``sqrt(x + eps)`` so a constant activation scores 0 with finite, NaN-free values
  and gradients.

Sequence taps ``(b, T, ...)`` with an optional ``(b, T)`` bool mask (True = real position) are reduced
by ``sequence``: ``flatten`` (the paper: one ``T·d`` row per sample, padded positions zeroed),
``token`` (one row per real token) or ``position`` (one measure per time position over the samples
real there, averaged over positions with at least ``min_batch`` of them).  Taps with ndim < 3 have no
time axis and ignore the mask.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from pairgraph.config.names import MEASURES
from pairgraph.core.measure import (
    EPS,
    EPS_UNBIASED,
    PRECISIONS,
    SEQUENCE_MODES,
    TINY_SCALE,
    Measure,
    State,
    bmm,
    centre,
    centre_scale,
    first_valid,
    gram,
    pair_dtype,
    trace_kl,
)

__all__ = [
    "CKA",
    "MEASURES",
    "PRECISIONS",
    "RSA",
    "SEQUENCE_MODES",
    "DebiasedCKA",
    "Measure",
    "State",
    "get_measure",
    "gram",
    "similarity",
    "similarity_matrix",
]


# --------------------------------------------------------------------------------------- measures

@MEASURES.register("cka")
class CKA(Measure):
    """Linear CKA with the biased HSIC (paper eq. 2–6)."""

    name = "cka"
    min_batch = 2
    supports_gram = True

    def _prepare_rows(self, x: Tensor, valid: Tensor | None) -> State:
        _, n, d = x.shape
        if d >= n:
            return self._gram_state(self._raw_grams([(x, valid)])[0])
        # d < b: keep features: pair cost b·d1·d2, self ‖FᵀF‖²_F costs b·d²
        f = centre_scale(x, valid)
        hkk = bmm(f.transpose(1, 2), f).square().sum(dim=(1, 2))
        return State(self.name, "feat", f, torch.sqrt(hkk + EPS), n=n)

    def _prepare_many(self, rows: list[tuple[Tensor, Tensor | None]]) -> list[tuple[list[int], State]]:
        """Narrow row sets one by one; the grams of all wide ones (b × b whatever their width) rescaled at once."""
        out: list[tuple[list[int], State]] = []
        wide: dict[tuple[int, torch.dtype], list[int]] = {}  # grams of one size and dtype
        for i, (x, valid) in enumerate(rows):
            if x.shape[2] < x.shape[1]:
                out.append(([i], self._prepare_rows(x, valid)))
            else:
                wide.setdefault((x.shape[1], x.dtype), []).append(i)
        for idx in wide.values():
            grams = self._raw_grams([rows[i] for i in idx])
            out.append((idx, self._gram_state(grams[0] if len(grams) == 1 else torch.cat(grams))))
        return out

    def _raw_grams(self, rows: list[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        """d ≥ b: the gram of each row set's centred rows (b²·d, once per tap), before its rescale.

        No host sync (GPU): f is divided by a detached on-device factor that is exactly 1 — bit for bit the
        plain gram — unless max|f|²·d could overflow the dtype (fp32 beyond ~1e17; d the widest of the row
        sets, so that one factor computation serves them all); the trace rescale of :meth:`_gram_state`
        cancels the factor, in the value and in the gradient.
        """
        fs = [centre(x, valid) for x, valid in rows]
        limit = math.sqrt(torch.finfo(fs[0].dtype).max / (4 * max(f.shape[2] for f in fs)))
        # max |f| as abs then amax: torch's inf-norm (linalg.vector_norm) takes 19× as long on a CPU (0.94 ms against
        # 0.05 ms for one 256 × 2,816 tap; docs/performance.md, "The RNN pair's guided step (session 12)")
        tops = [(f.detach() if f.requires_grad else f).abs().amax(dim=(1, 2), keepdim=True) for f in fs]
        if len(fs) == 1:
            factors = [(tops[0] / limit).clamp_min(1.0)]
        else:
            factors = (torch.cat(tops) / limit).clamp_min(1.0).split([f.shape[0] for f in fs])
        return [gram(f / c) for f, c in zip(fs, factors, strict=True)]

    def _gram_state(self, k: Tensor) -> State:
        """Rescale the b×b gram by its detached trace (= ‖F‖²_F): O(b²) instead of several passes over the b×d
        features and their gradients."""
        scale = (k.detach() if k.requires_grad else k).diagonal(dim1=1, dim2=2).sum(-1).clamp_min(TINY_SCALE)
        return self._from_gram(k / scale.view(-1, 1, 1))

    def _from_gram(self, k: Tensor) -> State:
        return State(self.name, "gram", k, torch.sqrt(k.square().sum(dim=(1, 2)) + EPS), n=k.shape[1])

    def _score(self, a: State, b: State) -> Tensor:
        dt = pair_dtype(a, b)
        return trace_kl(a, b) / (a.norm.to(dt) * b.norm.to(dt))


@MEASURES.register("debiased_cka")
class DebiasedCKA(Measure):
    """CKA with the unbiased HSIC estimator (Song et al. 2007), via U-centred grams."""

    name = "debiased_cka"
    min_batch = 4
    supports_gram = True

    def _prepare_rows(self, x: Tensor, valid: Tensor | None) -> State:
        f = centre_scale(x, valid)
        return self._from_gram(gram(f), valid)  # centred gram, b²·d once per tap

    def _from_gram(self, k: Tensor, valid: Tensor | None = None) -> State:
        g, n, _ = k.shape
        off = ~torch.eye(n, dtype=torch.bool, device=k.device)
        if valid is not None:
            off = off & valid.unsqueeze(-1) & valid.unsqueeze(-2)
            count = valid.sum(dim=1).to(k.dtype)
        else:
            count = torch.full((g,), float(n), dtype=k.dtype, device=k.device)
        # groups with < 4 real rows are dropped in score; keep their arithmetic finite
        count = torch.where(count >= self.min_batch, count, torch.full_like(count, float(self.min_batch)))
        offf = off.to(k.dtype)
        k0 = k * offf  # K̊: zeroed diagonal (and padded rows)
        r = k0.sum(dim=-1)  # row sums 1ᵀK̊ (b)
        t = r.sum(dim=-1)  # total 1ᵀK̊1
        # U-centring folds the row sums and total into the matrix, so that
        # b(b−3)·HSIC₁(K, L) = Σ K_u ⊙ L_u  exactly (Song's three terms), with no large cancelling terms
        ku = k0 - (r.unsqueeze(-1) + r.unsqueeze(-2)) / (count - 2)[:, None, None]
        ku = (ku + (t / ((count - 1) * (count - 2)))[:, None, None]) * offf
        return State(self.name, "gram", ku, torch.sqrt(ku.square().sum(dim=(1, 2)) + EPS_UNBIASED), n=n)

    def _score(self, a: State, b: State) -> Tensor:
        dt = pair_dtype(a, b)
        return (a.mat.to(dt) * b.mat.to(dt)).sum(dim=(1, 2)) / (a.norm.to(dt) * b.norm.to(dt))


@MEASURES.register("rsa")
class RSA(Measure):
    """RSA: Pearson correlation of the strict lower triangles of cosine-distance RDMs (appendix H)."""

    name = "rsa"
    min_batch = 3

    def _prepare_rows(self, x: Tensor, valid: Tensor | None) -> State:
        g, n, d = x.shape
        if valid is not None:
            vf = valid.to(x.dtype).unsqueeze(-1)
            x = x * vf
        # cosine is per-row scale-invariant, so a global detached rescale changes nothing but the range
        x = x / x.detach().abs().amax(dim=(1, 2), keepdim=True).clamp_min(TINY_SCALE)
        # write each row as mu + c_i with c exactly 0 for a constant tap, so every cosine is then
        # bit-identical and the RDM has exactly zero variance:  x_i·x_j = |mu|² + mu·c_i + mu·c_j + c_i·c_j
        if valid is None:
            ref = x[:, :1]
            c = x - ref
            cm = c.mean(dim=1, keepdim=True)
            c = c - cm
        else:
            cnt = vf.sum(dim=1, keepdim=True).clamp_min(1.0)
            ref = x.gather(1, first_valid(valid)[:, None, None].expand(-1, 1, d))
            c = (x - ref) * vf
            cm = c.sum(dim=1, keepdim=True) / cnt
            c = (c - cm) * vf
        mu = ref + cm  # (G, 1, d)
        mu2 = mu.square().sum(dim=-1)  # (G, 1)
        a = torch.bmm(c, mu.transpose(1, 2)).squeeze(-1)  # (G, n)
        cc = gram(c)  # (G, n, n), cost b²·d
        sq = torch.diagonal(cc, dim1=1, dim2=2)
        rn = torch.sqrt((mu2 + 2.0 * a + sq).clamp_min(0.0) + EPS)  # row norms ‖x_i‖
        cos = (mu2.unsqueeze(-1) + a.unsqueeze(-1) + a.unsqueeze(-2) + cc) / (rn.unsqueeze(-1) * rn.unsqueeze(-2))
        # strict lower triangle of the real rows; Pearson(D, D') = Pearson(cos, cos') as D = 1 − cos
        pairs = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1).expand(g, n, n)
        if valid is None:
            i0 = torch.zeros(g, dtype=torch.long, device=x.device)
            i1 = torch.ones(g, dtype=torch.long, device=x.device)
        else:
            pairs = pairs & valid.unsqueeze(-1) & valid.unsqueeze(-2)
            order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)
            i0, i1 = order[:, 0], order[:, 1]
        pf = pairs.to(x.dtype)
        ref_v = cos[torch.arange(g, device=x.device), i1, i0]  # first real pair: exact 0 after subtraction
        v = (cos - ref_v[:, None, None]) * pf
        m = pf.sum(dim=(1, 2)).clamp_min(1.0)
        vc = (v - (v.sum(dim=(1, 2)) / m)[:, None, None]) * pf
        s = torch.sqrt(vc.square().sum(dim=(1, 2)) + EPS)
        vn = vc / s[:, None, None]
        return State(self.name, "rdm", vn, torch.ones_like(s), n=n)

    def _score(self, a: State, b: State) -> Tensor:
        dt = pair_dtype(a, b)
        return (a.mat.to(dt) * b.mat.to(dt)).sum(dim=(1, 2))


# --------------------------------------------------------------------------------------- functions


def get_measure(name: str) -> Measure:
    """The measure registered as ``name`` (PairgraphError with suggestions when unknown): one shared
    instance per class, so a measure's state is the same wherever it is looked up."""
    measure = MEASURES.get(name)
    return _instance(measure) if isinstance(measure, type) else measure


@functools.cache
def _instance(cls: type[Measure]) -> Measure:
    return cls()


def similarity(
    x: Tensor,
    y: Tensor,
    measure: str = "cka",
    mask: Tensor | None = None,
    sequence: str = "flatten",
) -> Tensor:
    """Similarity of two activations of the same batch (1 = identical)."""
    m = get_measure(measure)
    return m.score(m.prepare(x, mask, sequence), m.prepare(y, mask, sequence))


def similarity_matrix(
    guide_taps: dict[str, Tensor],
    target_taps: dict[str, Tensor],
    measure: str = "cka",
    mask: Tensor | None = None,
    sequence: str = "flatten",
) -> Tensor:
    """``(n_guide, n_target)`` similarities, rows/columns in dict order; each tap is prepared once."""
    m = get_measure(measure)
    gs = [m.prepare(a, mask, sequence) for a in guide_taps.values()]
    ts = [m.prepare(a, mask, sequence) for a in target_taps.values()]
    if not gs or not ts:
        return torch.zeros(len(gs), len(ts))
    return torch.stack([torch.stack([m.score(g, t) for t in ts]) for g in gs])
