"""The batched alignment (core/alignment.py): every term equals the per-pair reference, and its op count does
not grow with the number of pairs (issue #28)."""

from __future__ import annotations

import pytest
import torch

from pairgraph.bench.ops import OpCounter
from pairgraph.core.alignment import stack
from pairgraph.core.cache import GuideCache
from pairgraph.core.loss import alignment_terms, tap_key
from pairgraph.core.similarity import get_measure


def reference(guide, target, pairs, measure, mask=None, sequence="flatten", aliases=None, precision="fp32"):
    """Today's per-pair terms: every tap prepared alone, every pair scored alone."""
    m, same = get_measure(measure), aliases or {}
    return {tap_key(g, t): 1.0 - m.score(m.prepare(guide[same.get(g, g)], mask, sequence, precision),
                                         m.prepare(target[t], mask, sequence, precision)) for g, t, _ in pairs}


def taps_of(shapes, seed, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen).requires_grad_(grad) for n, s in shapes.items()}


IMAGE_GUIDE = {"conv1": (12, 3, 4, 4), "bn1": (12, 3, 4, 4), "layer1": (12, 8, 2, 2), "layer2": (12, 5),
               "fc": (12, 20)}  # wide (d ≥ b) and narrow (d < b) taps, two of one shape
IMAGE_TARGET = {"blocks.0": (12, 16), "blocks.1": (12, 16), "blocks.2": (12, 7), "head": (12, 3)}
IMAGE_PAIRS = [("conv1", "blocks.0", 1.0), ("bn1", "blocks.1", 0.5), ("layer1", "blocks.1", 1.0),
               ("layer2", "blocks.2", 2.0), ("fc", "head", 1.0), ("conv1", "head", 1.0), ("layer2", "blocks.0", 1.0)]


def assert_same(got, want):
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0, msg=k)


def assert_same_grads(target, got, want, precision="fp32"):
    """Equal gradients; in bf16 to bf16's rounding (a sum of a gram's gradients rounded to bf16 in another order
    can round the other way)."""
    g1 = torch.autograd.grad(sum(got.values()), list(target.values()), allow_unused=True)
    g2 = torch.autograd.grad(sum(want.values()), list(target.values()), allow_unused=True)
    tol = {"atol": 1e-6, "rtol": 1e-5} if precision == "fp32" else {"atol": 1e-3, "rtol": 1e-2}
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("measure", ["cka", "debiased_cka", "rsa"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batched_terms_equal_the_per_pair_reference(measure, precision):
    guide, target = taps_of(IMAGE_GUIDE, 0), taps_of(IMAGE_TARGET, 1, grad=True)
    aliases = {"bn1": "conv1"} if measure != "rsa" else None
    got = alignment_terms(guide, target, IMAGE_PAIRS, measure, aliases=aliases, precision=precision)
    want = reference(guide, target, IMAGE_PAIRS, measure, aliases=aliases, precision=precision)
    assert_same(got, want)
    assert_same_grads(target, got, want, precision)


SEQ = {"a": (6, 5, 4), "b": (6, 5, 4), "c": (6, 5, 2, 3), "d": (6, 9)}  # (batch, time, …) and one without time


@pytest.mark.parametrize("measure", ["cka", "debiased_cka", "rsa"])
@pytest.mark.parametrize("sequence", ["flatten", "token", "position"])
@pytest.mark.parametrize("masked", [False, True])
def test_batched_sequence_terms_equal_the_reference(measure, sequence, masked):
    guide, target = taps_of(SEQ, 2), taps_of({f"t{k}": s for k, s in SEQ.items()}, 3, grad=True)
    mask = None
    if masked:  # ragged lengths; every position keeps ≥ 4 real samples except the last (dropped in position mode)
        mask = torch.arange(5)[None, :] < torch.tensor([5, 5, 4, 4, 3, 2])[:, None]
    pairs = [("a", "ta", 1.0), ("b", "tb", 1.0), ("c", "tc", 1.0), ("a", "tb", 1.0), ("b", "tc", 1.0)]
    if sequence != "token":  # a tap without a time axis beside sequence taps (token mode would mix row counts)
        pairs.append(("d", "td", 1.0))
    got = alignment_terms(guide, target, pairs, measure, mask, sequence)
    want = reference(guide, target, pairs, measure, mask, sequence)
    assert_same(got, want)
    assert_same_grads(target, got, want)


def test_name_at_k_taps_and_duplicate_pairs_are_scored_like_any_other():
    guide = taps_of({"attn@0": (10, 16), "attn@1": (10, 16), "mlp": (10, 40)}, 4)
    target = taps_of({"rnn@0": (10, 16), "rnn@1": (10, 16)}, 5, grad=True)
    pairs = [("attn@1", "rnn@0", 1.0), ("attn@0", "rnn@1", 1.0), ("mlp", "rnn@0", 1.0), ("attn@1", "rnn@0", 1.0)]
    assert_same(alignment_terms(guide, target, pairs), reference(guide, target, pairs, "cka"))


@pytest.mark.parametrize("measure", ["cka", "debiased_cka"])
def test_cached_groups_give_the_reference_terms(measure):
    n, b = 40, 12
    rows = taps_of({"wide": (n, 50), "wide2": (n, 60), "narrow": (n, 6), "narrow2": (n, 6)}, 6)
    guide = torch.nn.Identity()
    cache = GuideCache.build(lambda_net(rows), lambda i: i, n, list(rows), measure=measure, chunk=16)
    assert {g.kind: len(g.names) for g in cache.groups} == {"gram": 2, "feat": 2}
    del guide
    index = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:b]
    target = taps_of({"t0": (b, 30), "t1": (b, 5)}, 7, grad=True)
    pairs = [("wide", "t0", 1.0), ("narrow", "t1", 1.0), ("wide2", "t1", 1.0), ("narrow2", "t0", 1.0)]
    got = alignment_terms({}, target, pairs, measure, guide_states=cache.states(index))
    want = reference({k: v[index] for k, v in rows.items()}, target, pairs, measure)
    for k in want:  # the cache's gram route rounds differently from the rows' (as before the batching)
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0, msg=k)


def lambda_net(rows):
    class Rows(torch.nn.Module):
        def forward(self, i):
            return None, {k: v[i] for k, v in rows.items()}

    return Rows()


def count_alignment(n_pairs: int, measure: str = "cka", sequence: str = "flatten", masked: bool = False) -> int:
    """Ops of one alignment_terms over ``n_pairs`` pairs of distinct taps of two shapes per side, and of its
    backward to the taps (a second call: the first makes the plan), the terms summed without a per-term op."""
    b, t = 16, 3
    shapes = [(b, t, 5, 2), (b, 40)] if sequence == "flatten" else [(b, t, 10), (b, t, 4)]
    guide = taps_of({f"g{i}": shapes[i % 2] for i in range(n_pairs)}, 8)
    target = taps_of({f"t{i}": shapes[(i + 1) % 2] for i in range(n_pairs)}, 9, grad=True)
    pairs = [(f"g{i}", f"t{(i * 7) % n_pairs}", 1.0) for i in range(n_pairs)]
    mask = (torch.arange(t)[None] < torch.tensor([t, t - 1] * (b // 2))[:, None]) if masked else None

    def step() -> None:
        terms = alignment_terms(guide, target, pairs, measure, mask, sequence)
        torch.autograd.grad(stack(list(terms.values())).sum(), list(target.values()))

    step()
    with OpCounter() as c:
        step()
    return c.ops


@pytest.mark.parametrize(("measure", "sequence", "masked"), [("cka", "flatten", False), ("debiased_cka", "flatten", False),
                                                              ("rsa", "flatten", False), ("cka", "position", True)])
def test_the_op_count_does_not_grow_with_the_number_of_pairs(measure, sequence, masked):
    five, forty = count_alignment(5, measure, sequence, masked), count_alignment(40, measure, sequence, masked)
    assert forty <= 1.5 * five, (five, forty)
    assert forty < 15 * 40, forty  # the per-pair implementation took 76–107 ops per pair (issue #28)
