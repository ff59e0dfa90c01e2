"""similarity.precision (fp32 | tf32 | bf16): the precision of the similarity's matrix products alone.

fp32 is the code as it was, bit for bit; bf16 stays within 1e-2 of it and returns fp32; tf32 is fp32
off CUDA; the spec field is validated and reaches the pair, the cache and GuidanceLoss."""

from __future__ import annotations

import pytest
import torch
import yaml

import pairgraph
from pairgraph.config import parse_spec
from pairgraph.core import measure as measure_mod
from pairgraph.core import similarity as similarity_mod
from pairgraph.core.similarity import get_measure
from pairgraph.errors import PairgraphError, SpecError
from pairgraph.tasks import get_task

NAMES = ["cka", "debiased_cka", "rsa"]
SHAPES = {"feat": (24, 6, 9), "gram": (12, 60, 90), "mixed": (16, 5, 50)}


def _pair(b: int, d1: int, d2: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d1, generator=g) + 0.5
    y = torch.tanh(x @ torch.randn(d1, d2, generator=g) / d1**0.5) + 0.3 * torch.randn(b, d2, generator=g)
    return x, y


def _value_and_grads(name: str, x: torch.Tensor, y: torch.Tensor, **kw) -> tuple[torch.Tensor, ...]:
    m = get_measure(name)
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    v = m.score(m.prepare(x, **kw), m.prepare(y, **kw))
    v.backward()
    return v.detach(), x.grad, y.grad


# ------------------------------------------------------------------ the code before precision existed, verbatim


class _OldGram(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f):
        ctx.save_for_backward(f)
        return torch.bmm(f, f.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        (f,) = ctx.saved_tensors
        return torch.bmm(grad + grad.transpose(1, 2), f)


def _old_gram(f):
    return _OldGram.apply(f) if f.requires_grad else torch.bmm(f, f.transpose(1, 2))


def _old_trace_kl(a, b):
    dt = measure_mod.pair_dtype(a, b)
    x, y = a.mat.to(dt), b.mat.to(dt)
    if a.kind == "feat" and b.kind == "feat":
        return torch.bmm(x.transpose(1, 2), y).square().sum(dim=(1, 2))
    if a.kind == "gram" and b.kind == "gram":
        return (x * y).sum(dim=(1, 2))
    f, k = (x, y) if a.kind == "feat" else (y, x)
    return (f * torch.bmm(k, f)).sum(dim=(1, 2))


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_fp32_is_the_old_code_bit_for_bit(name, shape, monkeypatch):
    x, y = _pair(*SHAPES[shape])
    monkeypatch.setattr(similarity_mod, "gram", _old_gram)
    monkeypatch.setattr(similarity_mod, "bmm", torch.bmm)
    monkeypatch.setattr(similarity_mod, "trace_kl", _old_trace_kl)
    old = _value_and_grads(name, x, y)
    monkeypatch.undo()
    new = _value_and_grads(name, x, y, precision="fp32")
    for o, n in zip(old, new, strict=True):
        assert torch.equal(o, n)


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("name", NAMES)
def test_bf16_is_within_1e_2_of_fp32_and_returns_float32(name, shape):
    x, y = _pair(*SHAPES[shape], seed=1)
    v32, gx32, gy32 = _value_and_grads(name, x, y)
    v16, gx16, gy16 = _value_and_grads(name, x, y, precision="bf16")
    assert v16.dtype == gx16.dtype == gy16.dtype == torch.float32
    assert abs(v16.item() - v32.item()) < 1e-2
    assert v16.item() != v32.item()  # the products really ran in bf16
    for g16, g32 in ((gx16, gx32), (gy16, gy32)):
        assert ((g16 - g32).norm() / g32.norm()).item() < 5e-2
    state = get_measure(name).prepare(x, precision="bf16")
    assert state.mat.dtype == state.norm.dtype == torch.float32 and state.precision == "bf16"


def test_bf16_backward_of_the_gram_runs_in_bf16_too():
    f = torch.randn(1, 8, 40, generator=torch.Generator().manual_seed(2), requires_grad=True)
    g = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(3))
    with measure_mod.matmul_precision("bf16"):
        k = measure_mod.gram(f)
    assert k.dtype == torch.float32
    (grad,) = torch.autograd.grad((k * g).sum(), f)
    expected = torch.bmm((g + g.transpose(1, 2)).bfloat16(), f.detach().bfloat16()).float()
    assert grad.dtype == torch.float32 and torch.equal(grad, expected)


@pytest.mark.parametrize("name", NAMES)
def test_tf32_off_cuda_is_fp32(name):
    x, y = _pair(*SHAPES["gram"], seed=4)
    assert all(torch.equal(a, b) for a, b in zip(_value_and_grads(name, x, y, precision="tf32"),
                                                 _value_and_grads(name, x, y), strict=True))


def test_the_tf32_switch_is_scoped_and_restores_the_setting_exactly():
    matmul = torch.backends.cuda.matmul
    flag, on = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    before = getattr(matmul, flag)
    with measure_mod._tf32_allowed():
        assert getattr(matmul, flag) == on
    assert getattr(matmul, flag) == before


def test_a_bad_precision_is_one_line():
    with pytest.raises(PairgraphError, match="unknown similarity precision 'fp16' — fix: use one of fp32, tf32, bf16"):
        get_measure("cka").prepare(torch.randn(4, 3), precision="fp16")
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "x", "similarity": {"precision": "fp16"}})
    assert "similarity.precision" in str(e.value) and "\n" not in str(e.value)
    assert parse_spec({"name": "x"}).similarity.precision == "fp32"
    assert parse_spec({"name": "x", "similarity": {"precision": "bf16"}}).similarity.precision == "bf16"


def test_the_spec_precision_reaches_the_pair_and_the_guide_cache(tmp_path):
    spec = {"name": "prec", "task": {"kind": "copy_paste", "length": [2, 4], "size": 64},
            "guide": {"model": "transformer_decoder", "args": {"preset": "cpu", "num_layers": 2, "d_model": 32},
                      "layers": {"include": ["blocks.*"]}},
            "target": {"model": "rnn", "args": {"num_layers": 2, "hidden": 32}},
            "train": {"batch_size": 16}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    losses = {}
    for precision in ("fp32", "bf16"):
        cp = pairgraph.compile(tmp_path / "s.yaml", tmp_path / "build", [f"similarity.precision={precision}"],
                               render=False, notify=None)
        pair = cp.build()
        assert pair.precision == precision
        x, y = get_task(cp.spec.task).datasets(0)["train"][:16]
        losses[precision] = pair(x, y, 0).guidance_loss.item()
        pair.cache_guide(lambda i, x=x: x[i], 16, chunk=16)
        states = pair.guide_cache.states(torch.arange(16), pair.precision)
        assert {s.precision for s in states.values()} == {precision}
    assert losses["bf16"] != losses["fp32"] and abs(losses["bf16"] - losses["fp32"]) < 1e-2 * len(pair.pairs)


def test_guidance_loss_refuses_a_bad_precision():
    from pairgraph import GuidanceLoss

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(PairgraphError, match="unknown similarity precision"):
        GuidanceLoss(net, torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)),
                     example_input=torch.randn(4, 4), precision="fp8")


# ------------------------------------------------------------------ on a GPU (make gpu-check)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precisions_on_cuda_stay_close_and_leave_the_tf32_flag_alone(precision):
    x, y = _pair(256, 3000, 2000, seed=5)
    matmul = torch.backends.cuda.matmul
    flag = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, flag)
    v32, gx32, _ = _value_and_grads("cka", x.cuda(), y.cuda())
    v, gx, _ = _value_and_grads("cka", x.cuda(), y.cuda(), precision=precision)
    assert getattr(matmul, flag) == before
    assert v.dtype == gx.dtype == torch.float32
    assert abs(v.item() - v32.item()) < 1e-2 and ((gx - gx32).norm() / gx32.norm()).item() < 5e-2
