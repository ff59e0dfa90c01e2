"""Tests for pairgraph.similarity: fast measures against naive float64 references, invariances,
numerics (fp16/bf16, autocast, zero variance, gradients), sequence masks, the matrix helper and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pairgraph.config import MEASURES
from pairgraph.core.similarity import Measure, get_measure, similarity, similarity_matrix
from pairgraph.errors import PairgraphError

NAMES = ["cka", "debiased_cka", "rsa"]


# ------------------------------------------------------------------ naive references (float64, from the formulas)


def _hsic_biased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype) - torch.ones(n, n, dtype=k.dtype) / n  # H = I − 11ᵀ/n   (eq. 3)
    return torch.trace((h @ k @ h) @ (h @ l @ h))  # tr(K̃ L̃)                          (eq. 4)


def ref_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().flatten(1), y.double().flatten(1)
    k, l = x @ x.T, y @ y.T  # eq. 2
    return (_hsic_biased(k, l) / torch.sqrt(_hsic_biased(k, k) * _hsic_biased(l, l))).item()  # eq. 5


def _hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al. 2007, on raw (uncentred) grams with zeroed diagonals."""
    n = k.shape[0]
    k = k - torch.diag(torch.diag(k))
    l = l - torch.diag(torch.diag(l))
    one = torch.ones(n, dtype=k.dtype)
    return (
        torch.trace(k @ l)
        + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ k @ l @ one)
    ) / (n * (n - 3))


def ref_debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().flatten(1), y.double().flatten(1)
    k, l = x @ x.T, y @ y.T
    return (_hsic_unbiased(k, l) / torch.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(l, l))).item()


def ref_rsa(x: torch.Tensor, y: torch.Tensor) -> float:
    def lower(r: torch.Tensor) -> np.ndarray:
        r = r.double().flatten(1).numpy()
        u = r / np.linalg.norm(r, axis=1, keepdims=True)
        d = 1.0 - u @ u.T  # cosine-distance RDM
        i, j = np.tril_indices(r.shape[0], -1)
        return d[i, j]

    return float(np.corrcoef(lower(x), lower(y))[0, 1])


REFS = {"cka": ref_cka, "debiased_cka": ref_debiased_cka, "rsa": ref_rsa}


def _pair(b: int, d1: int, d2: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Related, offset (non-centred) data so every measure is well away from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d1, generator=g) + 0.5
    w = torch.randn(d1, d2, generator=g) / d1**0.5
    y = torch.tanh(x @ w) + 0.3 * torch.randn(b, d2, generator=g) + 0.2
    return x, y


SHAPES = [
    (16, 5, 7),  # d ≪ b: both taps keep features
    (12, 300, 500),  # d ≫ b: both taps keep grams
    (20, 4, 300),  # mixed: features × gram
    (20, 300, 4),  # mixed the other way
    (10, 10, 10),  # d = b (gram form)
    (24, 1, 3),  # a single feature
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-d{}-d{}".format(*s))
@pytest.mark.parametrize("name", NAMES)
def test_matches_naive_reference(name, shape):
    x, y = _pair(*shape)
    want = REFS[name](x, y)
    got64 = similarity(x.double(), y.double(), name).item()
    got32 = similarity(x, y, name).item()
    assert abs(got64 - want) < 1e-5
    assert abs(got32 - want) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_sequence_taps_and_4d_match_reference_on_flattened(name):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 3, 4, 5, generator=g)
    y = torch.randn(9, 6, 7, generator=g) + x.flatten(1)[:, :7].unsqueeze(1)
    assert abs(similarity(x, y, name).item() - REFS[name](x, y)) < 1e-5


# ------------------------------------------------------------------ invariances


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


@pytest.mark.parametrize("shape", [(24, 6, 9), (10, 40, 60), (16, 5, 50)], ids=["feat", "gram", "mixed"])
@pytest.mark.parametrize("name", ["cka", "debiased_cka"])
def test_cka_invariances(name, shape):
    x, y = _pair(*shape, seed=1)
    base = similarity(x, y, name)
    d1 = x.shape[1]
    perm = torch.randperm(d1, generator=torch.Generator().manual_seed(2))
    for xt in (
        x * 37.5,  # isotropic scaling
        x * 1e-3,
        x @ _orthogonal(d1, 4),  # orthogonal transform
        x[:, perm],  # feature permutation
        x + torch.randn(1, d1) * 10,  # translation (centring)
    ):
        torch.testing.assert_close(similarity(xt, y, name), base, atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(16, 5), (8, 100)])
def test_self_similarity_is_one(name, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5)) + 1.0
    assert abs(similarity(x, x, name).item() - 1.0) < 1e-5


def test_rsa_scale_invariant_per_sample():
    x, y = _pair(12, 8, 6, seed=6)
    scale = torch.rand(12, 1, generator=torch.Generator().manual_seed(7)) * 5 + 0.1
    torch.testing.assert_close(similarity(x * scale, y, "rsa"), similarity(x, y, "rsa"), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ biased vs debiased


def test_biased_cka_is_high_for_independent_wide_data_debiased_is_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 65536, generator=g)
    y = torch.randn(64, 65536, generator=g)
    assert similarity(x, y, "cka").item() > 0.9
    assert abs(similarity(x, y, "debiased_cka").item()) < 0.05


# ------------------------------------------------------------------ numerics


@pytest.mark.parametrize("name", NAMES)
def test_fp32_is_accurate_for_wide_activations_and_small_batch(name):
    # debiased CKA's self-similarity is ~1/d here: the U-centred form keeps fp32 within 1e-5
    g = torch.Generator().manual_seed(16)
    x = torch.randn(16, 65536, generator=g) + 0.5
    y = torch.randn(16, 65536, generator=g) + x * 0.05
    assert abs(similarity(x, y, name).item() - REFS[name](x, y)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(7, 5, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    y = (torch.randn(7, 11, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: similarity(a, b, name), (x, y))


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64_position_mode_with_mask(name):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randn(6, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    mask = torch.tensor([[1, 1, 1]] * 5 + [[1, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a, b: similarity(a, b, name, mask=mask, sequence="position"), (x, y))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_inputs(name, dtype):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(16, 65536, generator=g) * 30 + 5
    y = x * 0.5 + torch.randn(16, 65536, generator=g) * 20
    xl, yl = x.to(dtype), y.to(dtype)
    low = similarity(xl, yl, name)
    ref = similarity(xl.float(), yl.float(), name)
    assert low.dtype == torch.float32
    assert torch.isfinite(low)
    assert abs(low.item() - ref.item()) < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_autocast_is_disabled_inside(name):
    x, y = _pair(32, 70, 50, seed=11)
    want = similarity(x, y, name)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = similarity(x, y, name)
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) < 1e-6


@pytest.mark.parametrize("value", [0.0, 0.1, 3.7, -1e4])
@pytest.mark.parametrize("shape", [(16, 5), (8, 300)], ids=["feat", "gram"])
@pytest.mark.parametrize("name", NAMES)
def test_zero_variance_is_zero_with_finite_gradient(name, shape, value):
    const = torch.full(shape, value, requires_grad=True)
    other = torch.randn(shape[0], 9, generator=torch.Generator().manual_seed(12), requires_grad=True)
    for a, b in ((const, other), (other, const)):
        a.grad = b.grad = None
        s = similarity(a, b, name)
        s.backward()
        assert s.item() == 0.0
        assert torch.isfinite(const.grad).all() and torch.isfinite(other.grad).all()
    both = torch.zeros(shape, requires_grad=True)
    s = similarity(both, both * 2.0, name)
    s.backward()
    assert s.item() == 0.0 and torch.isfinite(both.grad).all()


# ------------------------------------------------------------------ sequences and masks


def _seq(seed: int = 13, b: int = 8, t: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 5, generator=g) + 0.3
    y = torch.randn(b, t, 3, 2, generator=g) + x[..., :1, None] * 0.8
    lengths = torch.tensor([6, 5, 5, 4, 4, 3, 2, 1])[:b]
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return x, y, mask


@pytest.mark.parametrize("name", NAMES)
def test_flatten_mask_equals_zeroed_padding(name):
    x, y, mask = _seq()
    got = similarity(x, y, name, mask=mask, sequence="flatten")
    xz = x * mask[..., None]
    yz = y * mask[..., None, None]
    torch.testing.assert_close(got, similarity(xz, yz, name), atol=1e-6, rtol=0)
    assert abs(got.item() - REFS[name](xz, yz)) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_token_mode_equals_stacked_real_tokens(name):
    x, y, mask = _seq()
    got = similarity(x, y, name, mask=mask, sequence="token")
    xt, yt = x[mask], y[mask].flatten(1)
    torch.testing.assert_close(got, similarity(xt, yt, name), atol=1e-6, rtol=0)
    assert abs(got.item() - REFS[name](xt, yt)) < 1e-5
    # without a mask every position is a token
    torch.testing.assert_close(
        similarity(x, y, name, sequence="token"), similarity(x.reshape(-1, 5), y.reshape(-1, 6), name)
    )


@pytest.mark.parametrize("name", NAMES)
def test_position_mode_averages_positions_with_enough_real_samples(name):
    x, y, mask = _seq()
    got = similarity(x, y, name, mask=mask, sequence="position")
    min_batch = get_measure(name).min_batch
    per_pos = [
        REFS[name](x[mask[:, t], t], y[mask[:, t], t]) for t in range(x.shape[1]) if mask[:, t].sum() >= min_batch
    ]
    assert len(per_pos) < x.shape[1]  # some positions are skipped
    assert abs(got.item() - float(np.mean(per_pos))) < 1e-5
    # without a mask: plain average over all positions
    want = np.mean([REFS[name](x[:, t], y[:, t]) for t in range(x.shape[1])])
    assert abs(similarity(x, y, name, sequence="position").item() - want) < 1e-5


@pytest.mark.parametrize("sequence", ["flatten", "token", "position"])
@pytest.mark.parametrize("name", NAMES)
def test_padding_content_does_not_matter(name, sequence):
    x, y, mask = _seq()
    x = x.clone().requires_grad_()
    base = similarity(x, y, name, mask=mask, sequence=sequence)
    base.backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~mask] == 0).all()  # padded positions get no gradient
    g = torch.Generator().manual_seed(14)
    pad = ~mask
    x2 = torch.where(pad[..., None], torch.randn(x.shape, generator=g) * 1e3, x.detach())
    y2 = torch.where(pad[..., None, None], torch.randn(y.shape, generator=g) * 1e3 + 7, y)
    torch.testing.assert_close(similarity(x2, y2, name, mask=mask, sequence=sequence), base.detach(), atol=1e-6, rtol=0)


def test_position_mode_with_no_usable_position_is_zero():
    x, y, _ = _seq()
    mask = torch.zeros(8, 6, dtype=torch.bool)
    mask[0] = True
    for name in NAMES:
        assert similarity(x, y, name, mask=mask, sequence="position").item() == 0.0


def test_two_dim_taps_ignore_the_mask():
    x, y = _pair(8, 5, 7)
    mask = torch.ones(8, 3, dtype=torch.bool)
    mask[0, 2] = False
    for name in NAMES:
        torch.testing.assert_close(similarity(x, y, name, mask=mask), similarity(x, y, name))


# ------------------------------------------------------------------ similarity_matrix


@pytest.mark.parametrize("name", NAMES)
def test_similarity_matrix_matches_pairwise_and_prepares_once(name, monkeypatch):
    g = torch.Generator().manual_seed(15)
    guide = {"conv1": torch.randn(12, 3, 4, 4, generator=g), "fc": torch.randn(12, 7, generator=g)}
    target = {
        "l1": guide["fc"] @ torch.randn(7, 200, generator=g),
        "l2": torch.randn(12, 5, generator=g),
        "l3": guide["conv1"].flatten(1)[:, :9] + 0.1,
    }
    want = torch.tensor([[similarity(gv, tv, name).item() for tv in target.values()] for gv in guide.values()])

    measure = get_measure(name)
    calls = []
    orig = measure.prepare

    def counting(act, mask=None, sequence="flatten"):
        calls.append(act.shape)
        return orig(act, mask, sequence)

    monkeypatch.setattr(measure, "prepare", counting)
    got = similarity_matrix(guide, target, name)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert len(calls) == 5


def test_similarity_matrix_is_differentiable():
    x = torch.randn(10, 6, requires_grad=True)
    m = similarity_matrix({"g": torch.randn(10, 4)}, {"a": x, "b": x * 2 + 1}, "cka")
    (1 - m).sum().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------ registry and errors


def test_registry_and_attributes():
    assert set(NAMES) <= set(MEASURES.names())
    for name, min_batch in [("cka", 2), ("debiased_cka", 4), ("rsa", 3)]:
        m = get_measure(name)
        assert isinstance(m, Measure) and m.name == name and m.min_batch == min_batch
    with pytest.raises(PairgraphError, match="debiased_cka"):
        get_measure("debiased-cka")


@pytest.mark.parametrize("name", NAMES)
def test_too_small_batch_raises(name):
    m = get_measure(name)
    b = m.min_batch - 1
    with pytest.raises(PairgraphError, match=f"at least {m.min_batch}.*fix: raise train.batch_size"):
        m.prepare(torch.randn(b, 10))
    with pytest.raises(PairgraphError, match="at least"):
        m.prepare(torch.randn(b, 4, 10), sequence="position")
    with pytest.raises(PairgraphError, match="real tokens"):
        mask = torch.zeros(5, 4, dtype=torch.bool)
        mask[0, :b] = True
        m.prepare(torch.randn(5, 4, 10), mask=mask, sequence="token")
    m.prepare(torch.randn(m.min_batch, 10))  # exactly min_batch is fine


def test_debiased_message_names_the_fix():
    with pytest.raises(PairgraphError) as err:
        similarity(torch.randn(3, 8), torch.randn(3, 8), "debiased_cka")
    assert str(err.value) == "debiased_cka needs a batch of at least 4 (got 3 samples) — fix: raise train.batch_size"


@pytest.mark.parametrize("sequence", ["flatten", "token", "position"])
def test_mismatched_mask_raises(sequence):
    x = torch.randn(6, 5, 3)
    for bad in (torch.ones(6, 4, dtype=torch.bool), torch.ones(5, 5, dtype=torch.bool)):
        with pytest.raises(PairgraphError, match="mask"):
            similarity(x, x, "cka", mask=bad, sequence=sequence)


def test_other_errors():
    with pytest.raises(PairgraphError, match="sequence mode"):
        similarity(torch.randn(6, 3), torch.randn(6, 3), sequence="tokens")
    m = get_measure("cka")
    with pytest.raises(PairgraphError, match="disagree"):
        m.score(m.prepare(torch.randn(6, 3)), m.prepare(torch.randn(7, 3)))
    with pytest.raises(PairgraphError, match="prepared by"):
        m.score(m.prepare(torch.randn(6, 3)), get_measure("rsa").prepare(torch.randn(6, 3)))


def test_gram_with_one_bmm_backward_has_the_exact_gradients_of_f_ft():
    from pairgraph.core.similarity import gram

    f = torch.randn(2, 6, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gram, (f,))
    assert torch.autograd.gradgradcheck(gram, (f,))
    w = torch.randn(2, 6, 6, dtype=torch.float64)
    (g1,) = torch.autograd.grad((gram(f) * w).sum(), f)
    (g2,) = torch.autograd.grad((torch.bmm(f, f.transpose(1, 2)) * w).sum(), f)
    torch.testing.assert_close(g1, g2)


def test_huge_or_half_precision_activations_keep_a_finite_gram_without_a_host_check():
    """The gram is kept in range by an on-device rescale (no `bool(isfinite)` sync): CKA is unchanged."""
    from pairgraph.core.similarity import get_measure

    m = get_measure("cka")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 300, generator=g), torch.randn(32, 300, generator=g)
    ref = m.score(m.prepare(x), m.prepare(y))
    big = m.score(m.prepare(x * 1e30), m.prepare(y))  # squared, 1e60: beyond fp32
    torch.testing.assert_close(big, ref, rtol=1e-5, atol=1e-6)
    half = m.score(m.prepare((x * 300).half()), m.prepare(y.half()))  # 300² · 300 overflows fp16's 65504
    assert torch.isfinite(half) and abs(half.float().item() - ref.item()) < 1e-2
