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
  gradient checks).  Denominators are ``sqrt(x + eps)`` so a constant activation scores 0 with finite,
  NaN-free values and gradients.

Sequence taps ``(b, T, ...)`` with an optional ``(b, T)`` bool mask (True = real position) are reduced
by ``sequence``: ``flatten`` (the paper: one ``T·d`` row per sample, padded positions zeroed),
``token`` (one row per real token) or ``position`` (one measure per time position over the samples
real there, averaged over positions with at least ``min_batch`` of them).  Taps with ndim < 3 have no
time axis and ignore the mask.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pairgraph.errors import PairgraphError
from pairgraph.config.names import MEASURES

__all__ = [
    "CKA",
    "MEASURES",
    "RSA",
    "SEQUENCE_MODES",
    "DebiasedCKA",
    "Measure",
    "State",
    "get_measure",
    "similarity",
    "similarity_matrix",
]

SEQUENCE_MODES = ("flatten", "token", "position")

#: added under the square root of the Frobenius norm used to scale centred features (only matters for
#: an exactly-zero tap, where it keeps 0/0 away); the features are max-abs rescaled first, so any
#: non-constant tap has a sum of squares ≥ 1.
TINY = 1e-30
#: lower clamp for the detached max-abs rescale.
TINY_SCALE = 1e-30
#: added to every denominator's radicand; normalised quantities are O(1/b) or larger, so this
#: biases a value by < 1e-8 relative while making a zero-variance tap score exactly 0.
EPS = 1e-12
#: the same for debiased CKA, whose self-similarity ‖K_u‖²_F is only ~1/d for wide independent-looking
#: features (it is 0 for a constant tap, where the gradient is exactly 0, so a tiny value is safe).
EPS_UNBIASED = 1e-24


# --------------------------------------------------------------------------------------- state


@dataclass
class State:
    """Per-tap precomputation returned by :meth:`Measure.prepare`, consumed by :meth:`Measure.score`.

    Tensors carry a leading group axis ``G``: 1 for ``flatten``/``token``, ``T`` for ``position``.
    ``n`` is the (padded) number of rows per group.
    """

    measure: str
    kind: str  # "feat": b×d centred unit-norm features; "gram": b×b (U-)centred gram; "rdm": centred RDM
    mat: Tensor  # (G, n, d) or (G, n, n)
    norm: Tensor  # (G,) sqrt(self-similarity + eps)
    n: int
    sequence: str = "flatten"
    keep: Tensor | None = None  # (G,) bool: group has ≥ min_batch real rows (position mode)

    @property
    def groups(self) -> int:
        return self.mat.shape[0]


# --------------------------------------------------------------------------------------- helpers


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        return contextlib.nullcontext()


def _compute_dtype(t: Tensor) -> torch.dtype:
    """At least fp32: float64 stays float64 (used by gradcheck), everything else becomes fp32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _first_valid(valid: Tensor) -> Tensor:
    """Index of the first True row in each group of ``valid`` (G, n); 0 when a group has none."""
    return valid.to(torch.uint8).argmax(dim=1)


def _centre(x: Tensor, valid: Tensor | None) -> Tensor:
    """Column-centre each group of ``x`` (G, n, d) over its real rows; padded rows come out as 0.

    Subtracting a real row first makes a constant tap centre to exactly 0 (the mean of equal floats
    need not round back to the same float).
    """
    if valid is None:
        xs = x - x[:, :1]
        return xs - xs.mean(dim=1, keepdim=True)
    vf = valid.to(x.dtype).unsqueeze(-1)
    cnt = vf.sum(dim=1, keepdim=True).clamp_min(1.0)
    ref = x.gather(1, _first_valid(valid)[:, None, None].expand(-1, 1, x.shape[-1]))
    xs = (x - ref) * vf
    return (xs - xs.sum(dim=1, keepdim=True) / cnt) * vf


def _centre_scale(x: Tensor, valid: Tensor | None) -> Tensor:
    """Column-centre each group of ``x`` (G, n, d) over its real rows and scale it to unit Frobenius norm.

    Subtracting a real row first makes a constant tap centre to exactly 0 (the mean of equal floats
    need not round back to the same float).  Padded rows come out as 0.
    """
    xc = _centre(x, valid)
    # detached max-abs rescale: exact for a scale-invariant measure and keeps the squares in range
    m = xc.detach().abs().amax(dim=(1, 2), keepdim=True).clamp_min(TINY_SCALE)
    xc = xc / m
    return xc / torch.sqrt(xc.square().sum(dim=(1, 2), keepdim=True) + TINY)


class _Gram(torch.autograd.Function):
    """``F Fᵀ`` per group whose backward is one bmm, ``(G + Gᵀ) F``, where autograd's bmm rule takes
    two (one per operand, though both are F): a third less work for a target tap's gram."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, f: Tensor) -> Tensor:
        ctx.save_for_backward(f)
        return torch.bmm(f, f.transpose(1, 2))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (f,) = ctx.saved_tensors
        return torch.bmm(grad + grad.transpose(1, 2), f)


def gram(f: Tensor) -> Tensor:
    """The per-group gram ``F Fᵀ`` of ``f`` (G, n, d), with the cheaper backward when ``f`` needs grad."""
    return _Gram.apply(f) if f.requires_grad else torch.bmm(f, f.transpose(1, 2))


def _pair_dtype(a: State, b: State) -> torch.dtype:
    return torch.promote_types(a.mat.dtype, b.mat.dtype)


def _trace_kl(a: State, b: State) -> Tensor:
    """tr(K L) per group for centred K, L stored as features or grams (cost picked at prepare)."""
    dt = _pair_dtype(a, b)
    x, y = a.mat.to(dt), b.mat.to(dt)
    if a.kind == "feat" and b.kind == "feat":  # ‖Fᵀ G‖²_F, cost b·d1·d2
        return torch.bmm(x.transpose(1, 2), y).square().sum(dim=(1, 2))
    if a.kind == "gram" and b.kind == "gram":  # Σ K⊙L, cost b²
        return (x * y).sum(dim=(1, 2))
    f, k = (x, y) if a.kind == "feat" else (y, x)  # tr(Fᵀ L F), cost b²·d
    return (f * torch.bmm(k, f)).sum(dim=(1, 2))


def _reduce_groups(values: Tensor, a: State, b: State) -> Tensor:
    """Average per-group scores over the groups both taps keep (position mode); scalar otherwise."""
    if values.shape[0] == 1 and a.keep is None and b.keep is None:
        return values[0]
    keep = torch.ones_like(values, dtype=torch.bool)
    for s in (a, b):
        if s.keep is not None:
            keep = keep & s.keep
    total = torch.where(keep, values, torch.zeros_like(values)).sum()
    return total / keep.sum().clamp_min(1).to(values.dtype)


# --------------------------------------------------------------------------------------- base class


class Measure:
    """A representational similarity: ``score(prepare(A), prepare(B))`` is a scalar, 1 = identical.

    Subclasses implement :meth:`_prepare_rows` (per-tap work on rows already arranged by the sequence
    mode) and :meth:`_score` (per-pair work).  Register the class: ``@MEASURES.register("name")``.
    """

    name: str = "measure"
    min_batch: int = 2
    #: whether :meth:`prepare_gram` works (the measure depends on the rows only through their gram)
    supports_gram: bool = False

    # -- public API -------------------------------------------------------------------------------

    def prepare(self, act: Tensor, mask: Tensor | None = None, sequence: str = "flatten") -> State:
        """Per-tap work, done once per step and shared by every pair the tap takes part in."""
        with _no_autocast(act.device):
            x, valid = self._rows(act, mask, sequence)
            state = self._prepare_rows(x.to(_compute_dtype(act)), valid)
        state.sequence = sequence
        if valid is not None:
            state.keep = valid.sum(dim=1) >= self.min_batch
        return state

    def prepare_gram(self, gram: Tensor) -> State:
        """The state :meth:`prepare` gives for rows ``R`` (flatten mode, no mask), from ``R Rᵀ`` alone.

        ``gram`` (b×b) may be the gram of the rows minus any common vector (e.g. a dataset mean):
        double centring removes it.  Used by :class:`pairgraph.core.cache.GuideCache`.
        """
        if not self.supports_gram:
            raise PairgraphError(f"{self.name} cannot be computed from a gram", "use cka or debiased_cka")
        with _no_autocast(gram.device):
            k = gram.to(_compute_dtype(gram))
            k = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
            k = (k / k.diagonal().sum().clamp_min(TINY_SCALE)).unsqueeze(0)  # = F̂F̂ᵀ, ‖F̂‖_F = 1
            state = self._from_gram(k)
        state.sequence = "flatten"
        return state

    def _from_gram(self, k: Tensor) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, a: State, b: State) -> Tensor:
        """Scalar similarity of two prepared taps (1 = identical)."""
        self._check_pair(a, b)
        with _no_autocast(a.mat.device):
            return _reduce_groups(self._score(a, b), a, b)

    def __call__(self, x: Tensor, y: Tensor, mask: Tensor | None = None, sequence: str = "flatten") -> Tensor:
        return self.score(self.prepare(x, mask, sequence), self.prepare(y, mask, sequence))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, min_batch={self.min_batch})"

    # -- to implement -----------------------------------------------------------------------------

    def _prepare_rows(self, x: Tensor, valid: Tensor | None) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, a: State, b: State) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared plumbing --------------------------------------------------------------------------

    def _too_small(self, got: int, what: str) -> PairgraphError:
        return PairgraphError(
            f"{self.name} needs a batch of at least {self.min_batch} (got {got} {what})",
            "raise train.batch_size",
        )

    def _rows(self, act: Tensor, mask: Tensor | None, sequence: str) -> tuple[Tensor, Tensor | None]:
        """Arrange ``act`` as rows ``(G, n, d)`` plus a ``(G, n)`` real-row mask (None = all real)."""
        if sequence not in SEQUENCE_MODES:
            raise PairgraphError(
                f"unknown sequence mode {sequence!r} for {self.name}", "use one of " + ", ".join(SEQUENCE_MODES)
            )
        if act.ndim == 0:
            raise PairgraphError(f"{self.name} got a scalar activation", "tap a layer whose output has a batch axis")
        b = act.shape[0]
        if act.ndim < 3:  # (b,) or (b, d): no time axis, the mask does not apply
            if b < self.min_batch:
                raise self._too_small(b, "samples")
            return act.reshape(1, b, -1), None
        t = act.shape[1]
        if mask is not None:
            if mask.ndim != 2 or mask.shape[0] != b or mask.shape[1] != t:
                raise PairgraphError(
                    f"{self.name}: mask of shape {tuple(mask.shape)} does not fit activation of shape "
                    f"{tuple(act.shape)} (need (batch, time) = ({b}, {t}))",
                    "pass the (batch, time) padding mask of this batch, or none for non-sequence taps",
                )
            mask = mask.to(device=act.device, dtype=torch.bool)
        if sequence == "flatten":
            if b < self.min_batch:
                raise self._too_small(b, "samples")
            if mask is not None:
                act = act * mask.reshape(b, t, *([1] * (act.ndim - 2))).to(act.dtype)
            return act.reshape(1, b, -1), None
        if sequence == "token":
            tokens = act.reshape(b * t, -1) if mask is None else act[mask].reshape(-1, math.prod(act.shape[2:]))
            if tokens.shape[0] < self.min_batch:
                raise self._too_small(tokens.shape[0], "real tokens")
            return tokens.unsqueeze(0), None
        # position: one group per time step, rows = samples
        if b < self.min_batch:
            raise self._too_small(b, "samples")
        x = act.transpose(0, 1).reshape(t, b, -1)
        return x, (None if mask is None else mask.transpose(0, 1))

    def _check_pair(self, a: State, b: State) -> None:
        if a.measure != self.name or b.measure != self.name:
            raise PairgraphError(
                f"{self.name}.score got states prepared by {a.measure!r} and {b.measure!r}",
                f"prepare both taps with the {self.name!r} measure",
            )
        if a.n != b.n or a.groups != b.groups:
            raise PairgraphError(
                f"{self.name}: taps disagree on rows ({a.n} × {a.groups} groups vs {b.n} × {b.groups}; "
                f"sequence={a.sequence}/{b.sequence})",
                "tap both layers on the same batch with the same mask and sequence mode",
            )


# --------------------------------------------------------------------------------------- measures

@MEASURES.register("cka")
class CKA(Measure):
    """Linear CKA with the biased HSIC (paper eq. 2–6)."""

    name = "cka"
    min_batch = 2
    supports_gram = True

    def _centred(self, x: Tensor, valid: Tensor | None) -> tuple[str, Tensor, Tensor]:
        """(kind, features-or-gram, ‖K‖²_F) for the centred, unit-norm features of ``x``."""
        _, n, d = x.shape
        if d < n:  # keep features: pair cost b·d1·d2, self ‖FᵀF‖²_F costs b·d²
            f = _centre_scale(x, valid)
            return "feat", f, torch.bmm(f.transpose(1, 2), f).square().sum(dim=(1, 2))
        # d ≥ b: centre, take the gram (b²·d, once per tap), then rescale the b×b gram by its detached
        # trace (= ‖F‖²_F) — O(b²) instead of several passes over the b×d features and their gradients.
        f = _centre(x, valid)
        k = gram(f)
        if not bool(torch.isfinite(k).all()):  # activations beyond fp32's range once squared
            f = _centre_scale(x, valid)
            k = gram(f)
        scale = k.detach().diagonal(dim1=1, dim2=2).sum(-1).clamp_min(TINY_SCALE)
        k = k / scale[:, None, None]
        return "gram", k, k.square().sum(dim=(1, 2))

    def _prepare_rows(self, x: Tensor, valid: Tensor | None) -> State:
        kind, mat, hkk = self._centred(x, valid)
        return State(self.name, kind, mat, torch.sqrt(hkk + EPS), n=x.shape[1])

    def _from_gram(self, k: Tensor) -> State:
        return State(self.name, "gram", k, torch.sqrt(k.square().sum(dim=(1, 2)) + EPS), n=k.shape[1])

    def _score(self, a: State, b: State) -> Tensor:
        dt = _pair_dtype(a, b)
        return _trace_kl(a, b) / (a.norm.to(dt) * b.norm.to(dt))


@MEASURES.register("debiased_cka")
class DebiasedCKA(Measure):
    """CKA with the unbiased HSIC estimator (Song et al. 2007), via U-centred grams."""

    name = "debiased_cka"
    min_batch = 4
    supports_gram = True

    def _prepare_rows(self, x: Tensor, valid: Tensor | None) -> State:
        f = _centre_scale(x, valid)
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
        dt = _pair_dtype(a, b)
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
            ref = x.gather(1, _first_valid(valid)[:, None, None].expand(-1, 1, d))
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
        dt = _pair_dtype(a, b)
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
