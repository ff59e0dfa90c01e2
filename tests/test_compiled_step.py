"""train.compile (issue #28 item 4): the alignment under torch.compile equals the eager step's, and falls back
to eager with one line where torch.compile fails."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.core.compiled import compile_mode
from pairgraph.tasks import get_task
from pairgraph.training import resume_run


def _pair(tmp_path, mode="guidance"):
    spec = copy_paste_pair({"batch_size": 16, "seed": 3}, guidance={"mode": mode})
    cp = pairgraph.compile(spec, tmp_path / "b", render=False, notify=None)
    task = get_task(cp.spec.task)
    x, y = task.datasets(0)["train"][:16]
    return cp.build(), x, y


def _step(pair, x, y):
    """The losses and the target's gradients of one guided step."""
    pair.zero_grad()
    out = pair(x, y, 0)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in pair.target.named_parameters() if p.grad is not None}
    return out, grads


def _assert_same_step(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    for f in ("loss", "task_loss", "guidance_loss"):
        torch.testing.assert_close(getattr(out_b, f), getattr(out_a, f), atol=1e-5, rtol=1e-5)
    assert out_a.terms.keys() == out_b.terms.keys() and len(out_a.terms) > 1
    for k in out_a.terms:
        torch.testing.assert_close(out_b.terms[k], out_a.terms[k], atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        torch.testing.assert_close(grads_b[k], grads_a[k], atol=1e-5, rtol=1e-5)


def test_the_mode_is_cuda_graphs_on_a_gpu_and_default_elsewhere():
    assert compile_mode(torch.device("cuda", 0)) == "reduce-overhead"
    assert compile_mode(torch.device("cpu")) == "default"


@pytest.mark.slow  # compiling both passes: ~60 s on this busy 2-core machine
def test_the_compiled_alignment_equals_the_eager_step_within_1e_5(tmp_path, capsys):
    pair, x, y = _pair(tmp_path)
    eager = _step(pair, x, y)
    compiled = pair.compile_alignment(torch.device("cpu"))
    first = _step(pair, x, y)  # compiles
    again = _step(pair, x, y)  # runs the compiled graphs
    assert compiled.fallback is None and compiled.fn is not compiled.eager
    assert pair.compile_seconds is not None and pair.compile_seconds > 0
    err = capsys.readouterr().err
    assert err.count("alignment compiled in") == 1 and "mode default" in err
    _assert_same_step(eager, first)
    _assert_same_step(eager, again)


@pytest.mark.gpu
def test_cuda_graphs_equal_the_eager_step_and_keep_every_steps_terms(tmp_path):
    pair, x, y = _pair(tmp_path)
    dev = torch.device("cuda")
    pair.to(dev)
    x, y = x.to(dev), y.to(dev)
    eager = _step(pair, x, y)
    compiled = pair.compile_alignment(dev)
    steps = [_step(pair, x, y) for _ in range(4)]  # warm-up, recording, replays: each kept, as a log interval keeps them
    assert compiled.mode == "reduce-overhead" and compiled.fallback is None
    for s in steps:
        _assert_same_step(eager, s)


class _NoCompiler(RuntimeError):
    pass


def _failing_compile(fn, **kwargs):
    def compiled(*args):
        raise _NoCompiler("C++ compiler not found: install gcc\n  Traceback (most recent call last): ...")
    return compiled


@pytest.mark.parametrize("where", ["on the first call", "at torch.compile"])
def test_a_failing_compile_runs_eager_after_one_line(tmp_path, capsys, monkeypatch, where):
    pair, x, y = _pair(tmp_path)
    eager = _step(pair, x, y)
    if where == "at torch.compile":
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: (_ for _ in ()).throw(_NoCompiler("needs Python < 3.14")))
    else:
        monkeypatch.setattr(torch, "compile", _failing_compile)
    compiled = pair.compile_alignment(torch.device("cpu"))
    steps = [_step(pair, x, y) for _ in range(2)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, printed once
    assert "_NoCompiler" in err and "the step runs eager" in err
    assert compiled.fallback is not None and pair.compile_seconds is None
    for s in steps:
        _assert_same_step(eager, s)


def test_an_objective_error_is_raised_as_it_is_not_taken_for_a_failed_compile(tmp_path, capsys):
    pair, x, y = _pair(tmp_path)
    pair.pairs.append(("no.such.tap", pair.pairs[0][1], 1.0))  # a tap the guide does not have
    compiled = pair.compile_alignment(torch.device("cpu"))
    with pytest.raises(KeyError, match="no.such.tap"):
        pair(x, y, 0)
    assert compiled.fallback is None and "eager" not in capsys.readouterr().err


@pytest.mark.slow  # compiles (~25 s here)
def test_train_compile_records_the_compile_time_and_a_resume_may_switch_it_on(tmp_path):
    spec = copy_paste_pair({"batch_size": 16, "steps": 3, "eval_every": 3, "seed": 1}, guidance={"mode": "guidance"})
    eager = pairgraph.compile(spec, tmp_path / "b", render=False).train(runs_dir=tmp_path, run_id="r", progress=False,
                                                                        stop_after=1)
    assert eager["stopped_at"] == 1
    resumed = resume_run(tmp_path / "tiny" / "r", progress=False, overrides=["train.compile=true"])
    assert resumed["steps"] == 3 and resumed["compile_seconds"] > 0
    assert json.loads((tmp_path / "tiny" / "r" / "summary.json").read_text())["compile_seconds"] > 0


def test_a_resume_may_switch_train_compile_on_and_a_failed_compile_costs_one_line(tmp_path, capsys, monkeypatch):
    spec = copy_paste_pair({"batch_size": 16, "steps": 2, "eval_every": 2, "seed": 1}, guidance={"mode": "guidance"})
    pairgraph.compile(spec, tmp_path / "b", render=False).train(runs_dir=tmp_path, run_id="r", progress=False,
                                                                stop_after=1)
    monkeypatch.setattr(torch, "compile", _failing_compile)
    capsys.readouterr()
    resumed = resume_run(tmp_path / "tiny" / "r", progress=False, overrides=["train.compile=true"])
    assert resumed["steps"] == 2 and resumed["compile_seconds"] is None
    assert capsys.readouterr().err.count("the step runs eager") == 1


def test_bench_compile_runs_the_guided_step_and_the_gram_floor_through_the_same_compiled_alignment(
        tmp_path, monkeypatch):
    from pairgraph.bench.variants import build_variants

    compiled_fns = []

    def fake_compile(fn, **kwargs):  # records what is compiled; runs it as it is
        compiled_fns.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    spec = copy_paste_pair({"batch_size": 8}, guidance={"mode": "guidance"})
    cp = pairgraph.compile(spec, tmp_path / "b", render=False, notify=None)
    fns, pair = build_variants(cp, 8, torch.device("cpu"), compile_modules=True, only=("gram", "guided"))
    assert pair.compiled_terms is not None and pair.compiled_terms.eager in compiled_fns
    calls = []
    monkeypatch.setattr(pair.compiled_terms, "fn", lambda *a: calls.append(1) or pair.objective.terms(*a))
    fns["gram"]()
    fns["guided"]()
    assert len(calls) == 2
