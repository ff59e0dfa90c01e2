"""Alignment objectives (issue #20): reduce, weight schedules and gradient-norm balancing."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.tasks import get_task


def _pair(tmp_path, **guidance):
    spec = copy_paste_pair({"batch_size": 16}, guidance={"mode": "guidance", **guidance})
    cp = pairgraph.compile(spec, tmp_path / "b", render=False, notify=None)
    return cp, cp.build()


def _batch(cp, n=16):
    task = get_task(cp.spec.task)
    return next(iter(torch.utils.data.DataLoader(task.datasets(0)["train"], batch_size=n)))


def test_reduce_mean_is_the_weighted_mean_of_the_terms(tmp_path):
    cp, summed = _pair(tmp_path)
    _, mean = _pair(tmp_path / "m", reduce="mean")
    x, y = _batch(cp)
    a, b = summed(x, y, 0), mean(x, y, 0)
    weights = sum(w for *_, w in summed.pairs)
    assert len(summed.pairs) > 1
    torch.testing.assert_close(b.guidance_loss, a.guidance_loss / weights)
    torch.testing.assert_close(b.loss - b.task_loss, (a.loss - a.task_loss) / weights)


@pytest.mark.parametrize(("schedule", "expected"), [
    ("linear", {0: 2.0, 25: 1.5, 50: 1.0, 100: 0.0, 150: 0.0}),
    ("cosine", {0: 2.0, 25: 1.0 + math.cos(math.pi / 4), 50: 1.0, 100: 0.0, 150: 0.0}),
])
def test_weight_schedules_decay_to_zero_and_then_stop_calling_the_guide(schedule, expected, tmp_path):
    cp, pair = _pair(tmp_path, weight=2.0, schedule=schedule, schedule_steps=100)
    for step, w in expected.items():
        assert pair.weight_at(step) == pytest.approx(w)
    x, y = _batch(cp)
    mid = pair(x, y, 25)
    torch.testing.assert_close(mid.loss - mid.task_loss, expected[25] * mid.guidance_loss)
    calls = pair.guide_calls
    late = pair(x, y, 100)
    assert not late.guided and pair.guide_calls == calls and late.loss is late.task_loss


def test_a_decaying_schedule_needs_its_end_step(tmp_path):
    with pytest.raises(pairgraph.SpecError, match="guidance.schedule linear needs the step where the weight reaches 0"):
        pairgraph.compile(copy_paste_pair({}, guidance={"schedule": "linear"}), tmp_path, render=False, notify=None)


def test_grad_norm_balance_gives_alignment_the_task_gradients_norm_on_the_reference_parameter(tmp_path):
    cp, pair = _pair(tmp_path, balance="grad_norm")
    last = cp.correspondence.pairs[-1][1]
    ref = dict(pair.target.state_dict(keep_vars=True))[f"{last}.weight_ih_l0"]
    x, y = _batch(cp)
    out = pair(x, y, 0)
    g_task = torch.autograd.grad(out.task_loss, ref, retain_graph=True)[0]
    g_align = torch.autograd.grad(out.guidance_loss, ref, retain_graph=True)[0]
    scale = pair.last_balance
    assert scale == pytest.approx(float(g_task.norm() / (g_align.norm() + 1e-4)), rel=1e-5) and scale != 1.0
    g_total = torch.autograd.grad(out.loss, ref)[0]
    torch.testing.assert_close(g_total, g_task + scale * g_align)
    pair.eval()
    assert pair(x, y, 0).loss.requires_grad  # evaluation: no balancing, no error
    _, bad = _pair(tmp_path / "bad", balance="grad_norm", balance_parameter="layers.1.weight_ih")
    with pytest.raises(pairgraph.PairgraphError, match=r"not a parameter of the target — fix: did you mean "
                                                       r"'layers.1.weight_ih_l0'\?"):
        bad(x, y, 0)


def test_each_logged_step_carries_its_balance_scale(tmp_path):
    import json

    cp, _ = _pair(tmp_path, balance="grad_norm")
    s = cp.train(runs_dir=tmp_path / "runs", run_id="b", progress=False, stop_after=3)
    rows = [json.loads(ln) for ln in (tmp_path / "runs" / "tiny" / "b" / "metrics.jsonl").read_text().splitlines()]
    scales = [r["balance"] for r in rows if "split" not in r]
    assert s["stopped_at"] == 3 and len(scales) == 3 and all(x > 0 for x in scales) and len(set(scales)) > 1
