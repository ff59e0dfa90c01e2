"""Training: guidance lowers the alignment loss, schedules and modes do what they say, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_specs import copy_paste_pair

import pairgraph
import pairgraph.tasks
from pairgraph.compiler.build import build_root
from pairgraph.core.loss import Feed, distill_loss
from pairgraph.errors import PairgraphError
from pairgraph.tasks import get_task
from pairgraph.training import resume_run


def tiny(mode: str = "guidance", **train) -> dict:
    return copy_paste_pair({"batch_size": 16, "steps": 8, "eval_every": 4, "lr": 3e-3, "seed": 1, **train},
                           guidance={"mode": mode})


@pytest.fixture
def batch():
    task = get_task({"kind": "copy_paste", "length": [2, 4], "size": 400})
    x, y = task.datasets(0)["train"][:32]
    return x, y


def test_guided_steps_lower_guidance_loss(tmp_path, batch):
    pair = pairgraph.compile(tiny(), tmp_path, render=False).build()
    opt = torch.optim.Adam(pair.target.parameters(), lr=3e-3)
    x, y = batch
    first = None
    for step in range(25):
        out = pair(x, y, step)
        first = first if first is not None else out.guidance_loss.item()
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert pair(x, y, 25).guidance_loss.item() < 0.7 * first


def test_until_step_stops_calling_the_guide(tmp_path, batch):
    pair = pairgraph.compile(tiny(), tmp_path, overrides=["guidance.until_step=3"], render=False).build()
    calls = []
    pair.guide.register_forward_hook(lambda m, i, o: calls.append(1))
    x, y = batch
    for step in range(6):
        out = pair(x, y, step)
        assert out.guided == (step < 3)
        assert (out.guidance_loss.item() > 0) == (step < 3)
    assert len(calls) == 3


def test_baseline_never_calls_the_guide(tmp_path, batch):
    pair = pairgraph.compile(tiny("baseline"), tmp_path, render=False).build()
    pair.guide.register_forward_hook(lambda m, i, o: pytest.fail("guide called in baseline mode"))
    out = pair(*batch, 0)
    assert torch.equal(out.loss, out.task_loss)


def test_noise_mode_feeds_the_guide_noise(tmp_path, batch):
    pair = pairgraph.compile(tiny(), tmp_path, overrides=["guidance.guide_input=noise"], render=False).build()
    seen = []
    pair.guide.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    x, y = batch
    pair(x, y, 0)
    (gx,) = seen
    assert gx.shape == x.shape and not torch.equal(gx, x)
    assert torch.equal(gx == 0, x == 0)  # padding stays padding; the tokens are random


def test_code_noise_is_the_authors_clamped_sum_of_two_draws():
    draws = iter([torch.full((4, 3), 0.5), torch.full((4, 3), 2.0), torch.full((4, 3), -3.0), torch.full((4, 3), 0.0)])
    feed = Feed("noise", "eval", lambda x: next(draws), None, "code")
    x = torch.zeros(4, 3)
    assert torch.equal(feed.guide_view(x), torch.full((4, 3), 0.7))  # 0.5 + 0.1 · 2.0
    assert torch.equal(feed.guide_view(x), torch.zeros(4, 3))  # -3.0 + 0 clamped to 0
    paper = Feed("noise", "eval", lambda x: torch.full((4, 3), -3.0), None, "paper")
    assert torch.equal(paper.guide_view(x), torch.full((4, 3), -3.0))  # the paper's N(0, 1), unclamped


def test_code_noise_on_an_image_pair_reaches_the_guide_in_0_1(tmp_path):
    spec = {"name": "code_noise", "task": {"kind": "image_classification", "dataset": "mnist1d", "train_size": 80,
                                           "val_size": 16, "test_size": 16},
            "guide": {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 32}},
            "target": {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 16}},
            "guidance": {"guide_input": "noise", "noise": "code"},
            "train": {"batch_size": 16, "steps": 2, "eval_every": 2, "lr": 1e-3, "seed": 0}}
    pair = pairgraph.compile(spec, tmp_path, render=False).build()
    seen = []
    pair.guide.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    x0, _ = get_task(spec["task"]).datasets(0)["train"][0]
    x = torch.randn(64, *x0.shape)
    pair(x, torch.zeros(64, dtype=torch.long), 0)
    (gx,) = seen
    assert gx.shape == x.shape and gx.min() >= 0 and gx.max() <= 1
    assert 0.35 < (gx == 0).float().mean() < 0.65 and 0.08 < (gx == 1).float().mean() < 0.25  # clamped at both ends


def test_code_noise_refuses_token_inputs_and_a_guide_fed_the_batch(tmp_path, batch):
    pair = pairgraph.compile(tiny(), tmp_path, overrides=["guidance.guide_input=noise", "guidance.noise=code"],
                             render=False).build()
    with pytest.raises(PairgraphError, match="real-valued inputs"):
        pair(*batch, 0)
    with pytest.raises(PairgraphError, match="guidance.noise code applies only to a noise-fed guide"):
        pairgraph.compile(tiny(), tmp_path / "b", overrides=["guidance.noise=code"], render=False)


def test_distill_mode_uses_guide_logits(tmp_path, batch):
    pair = pairgraph.compile(tiny("distill"), tmp_path, render=False).build()
    x, y = batch
    out = pair(x, y, 0)
    with torch.no_grad():
        g_logits, _ = pair.guide(x)
        s_logits, _ = pair.target(x)
    mask = get_task(tiny()["task"]).valid_mask(x)
    assert set(out.terms) == {"distill"}
    expected = distill_loss(s_logits, g_logits, 4.0, mask)
    torch.testing.assert_close(out.guidance_loss.detach(), expected)
    with torch.no_grad():  # other guide weights → other distillation loss
        for p in pair.guide.parameters():
            p.mul_(1.5)
    assert not torch.allclose(pair(x, y, 0).guidance_loss, out.guidance_loss)


def test_run_directory_and_summary(tmp_path):
    summary = pairgraph.compile(tiny(), tmp_path / "b", render=False).train(runs_dir=tmp_path / "runs", run_id="r",
                                                                            progress=False)
    run = tmp_path / "runs" / "tiny" / "r"
    for f in ("spec.yaml", "env.json", "metrics.jsonl", "summary.json", "checkpoints/best.safetensors",
              "checkpoints/last.safetensors", "checkpoints/last_state.pt"):
        assert (run / f).exists(), f
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if "split" not in r]
    assert steps == list(range(1, 9))
    assert all(r["terms"] for r in lines if "split" not in r)
    assert [r["step"] for r in lines if r.get("split") == "val"] == [4, 8]
    assert summary["best_step"] in (4, 8) and "accuracy" in summary["test"]
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 1 and env["torch"] == torch.__version__


def test_resume_matches_uninterrupted_run(tmp_path):
    full = pairgraph.compile(tiny(), tmp_path / "b1", render=False).train(runs_dir=tmp_path, run_id="full",
                                                                          progress=False)
    cp = pairgraph.compile(tiny(), tmp_path / "b2", render=False)
    stopped = cp.train(runs_dir=tmp_path, run_id="cut", progress=False, stop_after=6)  # killed after step 6
    assert stopped["stopped_at"] == 6
    resumed = resume_run(tmp_path / "tiny" / "cut", progress=False)
    assert resumed["test"] == full["test"] and resumed["best_val_loss"] == full["best_val_loss"]
    cut = [json.loads(ln) for ln in (tmp_path / "tiny" / "cut" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(ln) for ln in (tmp_path / "tiny" / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in cut] == [r["step"] for r in ref]  # no lost or duplicated steps
    assert [r.get("loss") for r in cut] == [r.get("loss") for r in ref]


def test_train_first_guide_is_trained_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "cache"))
    spec = tiny()
    spec["guide"]["weights"] = "train"
    spec["train"]["steps"] = 4
    cp = pairgraph.compile(spec, tmp_path / "b", render=False)
    s1 = cp.train(runs_dir=tmp_path / "runs", run_id="a", progress=False)
    cached = list((tmp_path / "cache" / "guides").glob("*.safetensors"))
    assert len(cached) == 1
    env = json.loads((tmp_path / "runs" / "tiny" / "a" / "env.json").read_text())
    assert env["guide_weights"] == str(cached[0])
    mtime = cached[0].stat().st_mtime_ns
    s2 = cp.train(runs_dir=tmp_path / "runs", run_id="b", progress=False)
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not retrained
    assert s1["test"] == s2["test"]
    # the trained guide differs from the seeded init, and build() resolves it like training does
    from safetensors.torch import load_file

    trained = load_file(str(cached[0]))
    task = pairgraph.tasks.get_task(cp.spec.task)
    untrained = build_root(cp.spec.resolved(), "guide", task).state_dict()
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained if k.endswith("weight"))
    built = cp.build().guide.state_dict()
    assert all(torch.equal(trained[k], built[k]) for k in trained)


def test_bf16_runs_the_networks_in_bf16_and_the_similarity_in_fp32(tmp_path, batch):
    pair = pairgraph.compile(tiny(), tmp_path / "b", render=False).build()
    x, y = batch
    dtypes = []
    for net in (pair.guide, pair.target):
        for m in net.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.RNNBase)):
                m.register_forward_hook(lambda m, i, o: dtypes.append((o[0] if isinstance(o, tuple) else o).dtype))
    ref = pair(x, y, 0)
    assert dtypes and set(dtypes) == {torch.float32}
    dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = pair(x, y, 0)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert low.guidance_loss.dtype == torch.float32
    assert abs(low.guidance_loss.item() - ref.guidance_loss.item()) < 0.02  # bf16 activations, fp32 CKA
    summary = pairgraph.compile(tiny(precision="bf16"), tmp_path / "c", render=False).train(
        runs_dir=tmp_path / "runs", run_id="bf16", progress=False)
    assert summary["test"]["accuracy"] >= 0 and summary["best_val_loss"] < 10


def test_limited_validation_is_a_fixed_random_subset_not_a_prefix(tmp_path):
    from torch import nn

    from pairgraph.training import Trainer

    spec = {"name": "ev", "task": {"kind": "image_classification", "dataset": "mnist1d"},
            "guide": {"model": "deep_fcn", "args": {"num_blocks": 1, "width": 8}},
            "target": {"model": "deep_fcn", "args": {"num_blocks": 1, "width": 8}},
            "train": {"batch_size": 16, "eval_batches": 2, "seed": 3}}
    trainer = Trainer(pairgraph.compile(spec, tmp_path, render=False, notify=None), runs_dir=tmp_path / "runs")
    labels = torch.arange(10).repeat_interleave(20)  # a split stored in class order
    x = torch.zeros(200, 1, 1, 40)
    x[:, 0, 0, 0] = labels.float()
    data = torch.utils.data.TensorDataset(x, labels)

    class Oracle(nn.Module):  # predicts the class written into the input
        def forward(self, inp):
            return nn.functional.one_hot(inp[:, 0, 0, 0].long(), 10).float(), {}

    def seen(batches):
        preds: list = []
        trainer.evaluate(Oracle(), data, preds, batches=batches)
        return [label for _, label in preds]

    subset = seen(2)
    assert len(subset) == 32 and len(set(subset)) >= 6  # a prefix would hold classes 0 and 1 only
    assert seen(2) == subset  # the same examples at every evaluation
    assert sorted(seen(None)) == labels.tolist()
