"""The measure interface behind :mod:`pairgraph.core.similarity`: per-tap ``State``, the shared
numerics (centring, scaling, grams, traces) and the ``Measure`` base class. The formulas and the
reason for every numerical guard are documented in :mod:`pairgraph.core.similarity`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from pairgraph.errors import PairgraphError

SEQUENCE_MODES = ("flatten", "token", "position")
#: precisions of the similarity's matrix products (``similarity.precision``), see :func:`matmul_precision`
PRECISIONS = ("fp32", "tf32", "bf16")

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
    precision: str = "fp32"  # of the matrix products that made it, and of score's (see matmul_precision)

    @property
    def groups(self) -> int:
        return self.mat.shape[0]


# --------------------------------------------------------------------------------------- helpers


def no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        return contextlib.nullcontext()


def compute_dtype(t: Tensor) -> torch.dtype:
    """At least fp32: float64 stays float64 (used by gradcheck), everything else becomes fp32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def first_valid(valid: Tensor) -> Tensor:
    """Index of the first True row in each group of ``valid`` (G, n); 0 when a group has none."""
    return valid.to(torch.uint8).argmax(dim=1)


def centre(x: Tensor, valid: Tensor | None) -> Tensor:
    """Column-centre each group of ``x`` (G, n, d) over its real rows; padded rows come out as 0.

    Subtracting a real row first makes a constant tap centre to exactly 0 (the mean of equal floats
    need not round back to the same float).
    """
    if valid is None:
        xs = x - x[:, :1]
        return xs - xs.mean(dim=1, keepdim=True)
    vf = valid.to(x.dtype).unsqueeze(-1)
    cnt = vf.sum(dim=1, keepdim=True).clamp_min(1.0)
    ref = x.gather(1, first_valid(valid)[:, None, None].expand(-1, 1, x.shape[-1]))
    xs = (x - ref) * vf
    return (xs - xs.sum(dim=1, keepdim=True) / cnt) * vf


def centre_scale(x: Tensor, valid: Tensor | None) -> Tensor:
    """Column-centre each group of ``x`` (G, n, d) over its real rows and scale it to unit Frobenius norm.

    Subtracting a real row first makes a constant tap centre to exactly 0 (the mean of equal floats
    need not round back to the same float).  Padded rows come out as 0.
    """
    xc = centre(x, valid)
    # detached max-abs rescale: exact for a scale-invariant measure and keeps the squares in range
    m = xc.detach().abs().amax(dim=(1, 2), keepdim=True).clamp_min(TINY_SCALE)
    xc = xc / m
    return xc / torch.sqrt(xc.square().sum(dim=(1, 2), keepdim=True) + TINY)


# --------------------------------------------------------------------------------------- precision

_PRECISION: contextvars.ContextVar[str] = contextvars.ContextVar("pairgraph_matmul_precision", default="fp32")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PairgraphError(f"unknown similarity precision {precision!r}", "use one of " + ", ".join(PRECISIONS))
    return precision


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Within the block, :func:`bmm` and :func:`gram` — the grams and the products of the scores, forward
    and backward — multiply at ``precision``; everything else stays fp32 and so do their results.

    ``fp32``: ordinary fp32 products (bit for bit what pairgraph always computed). ``tf32``: on CUDA,
    the products with TF32 tensor cores allowed (``torch.backends.cuda.matmul.fp32_precision``, or
    ``allow_tf32`` on an older torch, set for each product and restored); TF32 is a CUDA format, so on
    other devices this is fp32. ``bf16``: both operands cast to bf16, the product (fp32-accumulated by
    the BLAS) cast back to fp32. float64 inputs (gradient checks) always multiply in float64.
    """
    token = _PRECISION.set(check_precision(precision))
    try:
        yield
    finally:
        _PRECISION.reset(token)


def _effective(*ts: Tensor) -> str:
    """The precision of a product of ``ts`` in the current :func:`matmul_precision` block."""
    p = _PRECISION.get()
    if p == "fp32" or any(t.dtype == torch.float64 for t in ts) or (p == "tf32" and ts[0].device.type != "cuda"):
        return "fp32"
    return p


@contextlib.contextmanager
def _tf32_allowed() -> Iterator[None]:
    """TF32 for CUDA matmuls within the block, the previous setting restored exactly after it: through
    ``fp32_precision`` where torch has it (≥ 2.9; its legacy ``allow_tf32`` would turn an inherited
    "none" into an explicit "ieee"), else ``allow_tf32``."""
    m = torch.backends.cuda.matmul
    try:
        attr, on, old = "fp32_precision", "tf32", m.fp32_precision
    except AttributeError:
        attr, on, old = "allow_tf32", True, m.allow_tf32
    setattr(m, attr, on)
    try:
        yield
    finally:
        setattr(m, attr, old)


def _product(a: Tensor, b: Tensor, precision: str) -> Tensor:
    """``bmm(a, b)`` at ``precision`` (already effective), returned in fp32 (or a's dtype for fp32)."""
    if precision == "bf16":
        return torch.bmm(a.bfloat16(), b.bfloat16()).float()
    if precision == "tf32":
        with _tf32_allowed():
            return torch.bmm(a, b)
    return torch.bmm(a, b)


class _Product(torch.autograd.Function):
    """``bmm(a, b)`` whose backward products run at the forward's precision too."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: Tensor, b: Tensor, precision: str) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.precision = precision
        return _product(a, b, precision)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        a, b = ctx.saved_tensors
        ga = _product(grad, b.transpose(1, 2), ctx.precision) if ctx.needs_input_grad[0] else None
        gb = _product(a.transpose(1, 2), grad, ctx.precision) if ctx.needs_input_grad[1] else None
        return ga, gb, None


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """``torch.bmm(a, b)`` at the current :func:`matmul_precision` (plain ``torch.bmm`` at fp32)."""
    p = _effective(a, b)
    if p == "fp32":
        return torch.bmm(a, b)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _Product.apply(a, b, p)
    return _product(a, b, p)


class _Gram(torch.autograd.Function):
    """``F Fᵀ`` per group whose backward is one bmm, ``(G + Gᵀ) F``, where autograd's bmm rule takes
    two (one per operand, though both are F): a third less work for a target tap's gram. Both run at
    the precision given (see :func:`matmul_precision`)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, f: Tensor, precision: str) -> Tensor:
        ctx.save_for_backward(f)
        ctx.precision = precision
        return _product(f, f.transpose(1, 2), precision)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (f,) = ctx.saved_tensors
        return _product(grad + grad.transpose(1, 2), f, ctx.precision), None


def gram(f: Tensor) -> Tensor:
    """The per-group gram ``F Fᵀ`` of ``f`` (G, n, d) at the current :func:`matmul_precision`, with the
    cheaper backward when ``f`` needs grad."""
    p = _effective(f)
    return _Gram.apply(f, p) if f.requires_grad else _product(f, f.transpose(1, 2), p)


def pair_dtype(a: State, b: State) -> torch.dtype:
    x, y = a.mat.dtype, b.mat.dtype
    return x if x == y else torch.promote_types(x, y)  # (promote_types is an ATen op: not dispatched when equal)


def trace_kl(a: State, b: State) -> Tensor:
    """tr(K L) per group for centred K, L stored as features or grams (cost picked at prepare)."""
    dt = pair_dtype(a, b)
    x, y = a.mat.to(dt), b.mat.to(dt)
    if a.kind == "feat" and b.kind == "feat":  # ‖Fᵀ G‖²_F, cost b·d1·d2
        return bmm(x.transpose(1, 2), y).square().sum(dim=(1, 2))
    if a.kind == "gram" and b.kind == "gram":  # Σ K⊙L, cost b²
        return (x * y).sum(dim=(1, 2))
    f, k = (x, y) if a.kind == "feat" else (y, x)  # tr(Fᵀ L F), cost b²·d
    return (f * bmm(k, f)).sum(dim=(1, 2))


def reduce_groups(values: Tensor, a: State, b: State) -> Tensor:
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

    def prepare(self, act: Tensor, mask: Tensor | None = None, sequence: str = "flatten",
                precision: str = "fp32") -> State:
        """Per-tap work, done once per step and shared by every pair the tap takes part in.

        ``precision``: of the gram and the other matrix products, here and in :meth:`score` (see
        :func:`matmul_precision`); the state is fp32 at every precision.
        """
        return self.prepare_stack(act.unsqueeze(0), mask, sequence, precision)

    def prepare_stack(self, acts: Tensor, mask: Tensor | None = None, sequence: str = "flatten",
                      precision: str = "fp32") -> State:
        """:meth:`prepare` of ``k`` taps of one shape at once, stacked as ``acts`` (k, batch, …): one state whose
        groups are tap 0's groups, then tap 1's, … (``k · G`` in all), each as :meth:`prepare` gives it."""
        return self.prepare_stacks([acts], mask, sequence, precision)[0][1]

    def prepare_stacks(self, stacks: list[Tensor], mask: Tensor | None = None, sequence: str = "flatten",
                       precision: str = "fp32") -> list[tuple[list[int], State]]:
        """:meth:`prepare_stack` of several stacks (each of one shape, all with the same groups per tap), as
        ``(stacks, state)``: a state may hold several stacks' taps, in the order listed, where the measure
        finishes them together (CKA: the b × b grams of wide taps, whatever their width)."""
        with no_autocast(stacks[0].device), matmul_precision(precision):
            rows = [self._rows(a, mask, sequence) for a in stacks]
            out = self._prepare_many([(x.to(compute_dtype(a)), v) for (x, v), a in zip(rows, stacks, strict=True)])
        for idx, state in out:
            state.sequence, state.precision = sequence, precision
            valid = [rows[i][1] for i in idx]
            if valid[0] is not None:
                keep = [v.sum(dim=1) >= self.min_batch for v in valid]
                state.keep = keep[0] if len(keep) == 1 else torch.cat(keep)
        return out

    def prepare_gram(self, gram: Tensor, precision: str = "fp32") -> State:
        """The state :meth:`prepare` gives for rows ``R`` (flatten mode, no mask), from ``R Rᵀ`` alone.

        ``gram`` (b×b) may be the gram of the rows minus any common vector (e.g. a dataset mean):
        double centring removes it.  Used by :class:`pairgraph.core.cache.GuideCache`. ``precision`` is
        that of :meth:`score` (no product is computed here). A stack of ``k`` grams (k, b, b) gives
        one state of ``k`` groups, as :meth:`prepare_stack` does.
        """
        if not self.supports_gram:
            raise PairgraphError(f"{self.name} cannot be computed from a gram", "use cka or debiased_cka")
        with no_autocast(gram.device):
            k = gram.to(compute_dtype(gram))
            k = k if k.ndim == 3 else k.unsqueeze(0)
            k = k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True) + k.mean(dim=(1, 2), keepdim=True)
            trace = k.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(TINY_SCALE)
            k = k / trace[:, None, None]  # = F̂F̂ᵀ, ‖F̂‖_F = 1
            state = self._from_gram(k)
        state.sequence, state.precision = "flatten", check_precision(precision)
        return state

    def _from_gram(self, k: Tensor) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, a: State, b: State) -> Tensor:
        """Scalar similarity of two prepared taps (1 = identical), its products at the states' precision
        (fp32 when they were prepared at different ones)."""
        self._check_pair(a, b)
        with no_autocast(a.mat.device), matmul_precision(a.precision if a.precision == b.precision else "fp32"):
            return reduce_groups(self._score(a, b), a, b)

    def __call__(self, x: Tensor, y: Tensor, mask: Tensor | None = None, sequence: str = "flatten") -> Tensor:
        return self.score(self.prepare(x, mask, sequence), self.prepare(y, mask, sequence))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, min_batch={self.min_batch})"

    # -- to implement -----------------------------------------------------------------------------

    def _prepare_rows(self, x: Tensor, valid: Tensor | None) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare_many(self, rows: list[tuple[Tensor, Tensor | None]]) -> list[tuple[list[int], State]]:
        """:meth:`_prepare_rows` of several row sets; a measure may override it to finish some together."""
        return [([i], self._prepare_rows(x, valid)) for i, (x, valid) in enumerate(rows)]

    def _score(self, a: State, b: State) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared plumbing --------------------------------------------------------------------------

    def _too_small(self, got: int, what: str) -> PairgraphError:
        return PairgraphError(
            f"{self.name} needs a batch of at least {self.min_batch} (got {got} {what})",
            "raise train.batch_size",
        )

    def _rows(self, acts: Tensor, mask: Tensor | None, sequence: str) -> tuple[Tensor, Tensor | None]:
        """Arrange ``k`` stacked taps ``acts`` (k, b, …) as rows ``(k·G, n, d)`` plus a ``(k·G, n)`` real-row mask
        (None = all real)."""
        if sequence not in SEQUENCE_MODES:
            raise PairgraphError(
                f"unknown sequence mode {sequence!r} for {self.name}", "use one of " + ", ".join(SEQUENCE_MODES)
            )
        if acts.ndim == 1:
            raise PairgraphError(f"{self.name} got a scalar activation", "tap a layer whose output has a batch axis")
        k, b = acts.shape[:2]
        if acts.ndim < 4:  # (b,) or (b, d) per tap: no time axis, the mask does not apply
            if b < self.min_batch:
                raise self._too_small(b, "samples")
            return (acts if acts.ndim == 3 else acts.reshape(k, b, -1)), None
        t = acts.shape[2]
        if mask is not None:
            if mask.ndim != 2 or mask.shape[0] != b or mask.shape[1] != t:
                raise PairgraphError(
                    f"{self.name}: mask of shape {tuple(mask.shape)} does not fit activation of shape "
                    f"{tuple(acts.shape[1:])} (need (batch, time) = ({b}, {t}))",
                    "pass the (batch, time) padding mask of this batch, or none for non-sequence taps",
                )
            mask = mask.to(device=acts.device, dtype=torch.bool)
        if sequence == "flatten":
            if b < self.min_batch:
                raise self._too_small(b, "samples")
            if mask is not None:
                acts = acts * mask.reshape(1, b, t, *([1] * (acts.ndim - 3)))  # bool: x·1 or x·0, in x's dtype
            return acts.reshape(k, b, -1), None
        if sequence == "token":
            tokens = acts.reshape(k, b * t, -1) if mask is None else acts[:, mask].reshape(k, -1, math.prod(acts.shape[3:]))
            if tokens.shape[1] < self.min_batch:
                raise self._too_small(tokens.shape[1], "real tokens")
            return tokens, None
        # position: one group per time step, rows = samples
        if b < self.min_batch:
            raise self._too_small(b, "samples")
        x = acts.transpose(1, 2).reshape(k * t, b, -1)
        return x, (None if mask is None else mask.transpose(0, 1).repeat(k, 1))

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
