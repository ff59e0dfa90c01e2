"""FitNets and REPA baselines (issue #20): projector losses, and projectors trained, saved and resumed
beside the target but never inside its weights."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.core.projection import Projectors, matched
from pairgraph.training import resume_run


def test_fitnets_is_the_mse_of_a_1x1_projection_after_pooling_the_larger_grid():
    torch.manual_seed(0)
    g, t = torch.randn(4, 8, 4, 4), torch.randn(4, 16, 2, 2)
    proj = Projectors("fitnets", [("g", "t", 1.0)], {"g": g}, {"t": t})
    lin = proj.nets[0]
    assert (lin.in_features, lin.out_features) == (16, 8)
    pooled = F.avg_pool2d(g, 2)  # the guide's 4×4 grid averaged to the target's 2×2
    conv = F.conv2d(t, lin.weight[:, :, None, None], lin.bias)  # a linear map per token is a 1×1 conv
    torch.testing.assert_close(proj.term(0, g, t), F.mse_loss(conv, pooled))


def test_repa_is_one_minus_the_cosine_per_real_token():
    torch.manual_seed(0)
    g, t = torch.randn(3, 5, 6), torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    proj = Projectors("repa", [("g", "t", 1.0)], {"g": g}, {"t": t}, hidden=7)
    assert [m.out_features for m in proj.nets[0] if isinstance(m, torch.nn.Linear)] == [7, 7, 6]
    cos = F.cosine_similarity(proj.nets[0](t), g, dim=-1)
    expected = torch.stack([1 - cos[i, j] for i in range(3) for j in range(5) if mask[i, j]]).mean()
    torch.testing.assert_close(proj.term(0, g, t, mask), expected)
    t2 = t.clone()
    t2[0, 3:] = 100.0  # padding never enters the loss
    torch.testing.assert_close(proj.term(0, g, t2, mask), expected)


def test_a_vector_tap_meets_an_image_tap_as_one_token_the_images_mean():
    g, t = torch.randn(2, 8, 3, 3), torch.randn(2, 5)
    gm, tm, keep = matched(g, t, None)
    assert gm.shape == (2, 1, 8) and tm.shape == (2, 1, 5) and keep is None
    torch.testing.assert_close(gm[:, 0], g.mean((2, 3)))


def spec(mode: str, **train) -> dict:
    return copy_paste_pair({"batch_size": 8, "steps": 6, "eval_every": 3, "lr": 3e-3, "seed": 1, **train},
                           guidance={"mode": mode, "projector_dim": 16})


def projector_weights(run) -> dict:
    return load_file(str(run / "checkpoints" / "last.projectors.safetensors"))


@pytest.mark.parametrize("mode", ["fitnets", "repa"])
def test_projectors_train_with_the_target_resume_exactly_and_stay_out_of_its_weights(mode, tmp_path):
    cp = pairgraph.compile(spec(mode), tmp_path / "b", render=False, notify=None)
    fresh = cp.build()
    reference = pairgraph.compile(spec("guidance"), tmp_path / "g", render=False, notify=None).build()
    for k, v in reference.target.state_dict().items():  # projectors are seeded apart: the target starts alike
        torch.testing.assert_close(fresh.target.state_dict()[k], v)
    full = cp.train(runs_dir=tmp_path, run_id="full", progress=False)
    assert full["projector_parameters"] == fresh.projectors.num_parameters() > 0
    assert full["target_parameters"] == sum(p.numel() for p in fresh.target.parameters())
    run = tmp_path / "tiny" / "full"
    trained = projector_weights(run)
    assert any(not torch.equal(trained[k], v) for k, v in fresh.projectors.state_dict().items())  # they learned
    target_keys = set(load_file(str(run / "checkpoints" / "best.safetensors")))
    assert target_keys == set(fresh.target.state_dict()) and not any("nets." in k for k in target_keys)

    cut = pairgraph.compile(spec(mode), tmp_path / "b2", render=False, notify=None)
    assert cut.train(runs_dir=tmp_path, run_id="cut", progress=False, stop_after=4)["stopped_at"] == 4
    resumed = resume_run(tmp_path / "tiny" / "cut", progress=False)  # from the step-3 checkpoint
    assert resumed["test"] == full["test"] and resumed["best_val_loss"] == full["best_val_loss"]
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(ln) for ln in (tmp_path / "tiny" / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in again] == [r.get("loss") for r in rows]
    assert all(torch.equal(v, projector_weights(tmp_path / "tiny" / "cut")[k]) for k, v in trained.items())


def test_a_projector_mode_runs_the_guide_on_every_step_even_when_a_cell_asks_for_the_cache(tmp_path):
    """The cache keeps CKA's prepared grams, not the raw taps a projector needs: like baseline and distill,
    the projector modes ignore guidance.cache_guide (a study cell sets it for all its arms)."""
    cp = pairgraph.compile(spec("fitnets"), tmp_path / "b", ["guidance.cache_guide=true"], render=False, notify=None)
    assert cp.train(runs_dir=tmp_path, run_id="c", progress=False)["guide_calls"] == 6


def mlp(width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Linear(6, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3))


@pytest.mark.parametrize("objective", ["fitnets", "repa"])
def test_guidance_loss_trains_its_projectors_in_a_user_loop_and_its_terms_are_the_projector_terms(objective):
    guide, target = mlp(12, 0), mlp(5, 1)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in (guide, target)]
    rng = torch.get_rng_state()
    guidance = pairgraph.GuidanceLoss(guide, target, example_input=x[:4], objective=objective, projector_dim=8)
    assert torch.equal(torch.get_rng_state(), rng) and guide.training and target.training  # neither model changed
    for m, st in zip((guide, target), states, strict=True):
        assert all(torch.equal(v, st[k]) for k, v in m.state_dict().items())
    again = pairgraph.GuidanceLoss(guide, target, example_input=x[:4], objective=objective, projector_dim=8)
    again.remove()
    start = {k: v.clone() for k, v in guidance.projectors.state_dict().items()}
    assert all(torch.equal(v, again.projectors.state_dict()[k]) for k, v in start.items())  # seeded
    trainable = [p for p in guidance.parameters() if p.requires_grad]
    assert trainable and [id(p) for p in trainable] == [id(p) for p in guidance.projectors.parameters()]
    assert not {id(p) for p in guide.parameters()} & {id(p) for p in trainable}
    first = guidance.projectors.nets[0]
    first = first if objective == "fitnets" else first[0]
    assert first.in_features == 5 and len(guidance.pairs) == len(guidance.projectors.nets) > 0

    opt = torch.optim.Adam([*target.parameters(), *guidance.parameters()], lr=1e-2)
    for _ in range(4):
        loss = F.cross_entropy(target(x), y) + guidance(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, states[0][k]) for k, v in guide.state_dict().items())  # the guide never moves
    assert any(not torch.equal(v, start[k]) for k, v in guidance.projectors.state_dict().items())  # they learned

    taps: dict[str, dict[str, torch.Tensor]] = {"g": {}, "t": {}}
    for side, model, names in (("g", guide, {p[0] for p in guidance.pairs}), ("t", target, {p[1] for p in guidance.pairs})):
        for name in names:
            dict(model.named_modules())[name].register_forward_hook(
                lambda m, a, out, side=side, name=name: taps[side].__setitem__(name, out.detach().clone()))
    target(x)
    total = guidance(x)
    expected = [guidance.projectors.term(i, taps["g"][g], taps["t"][t]) for i, (g, t, _) in enumerate(guidance.pairs)]
    for (g, t, _), e in zip(guidance.pairs, expected, strict=True):
        torch.testing.assert_close(guidance.last_terms[f"{g}->{t}"], e.detach())
    torch.testing.assert_close(total, sum(w * e for (_, _, w), e in zip(guidance.pairs, expected, strict=True)))


def test_guidance_loss_refuses_an_unknown_objective_in_one_line():
    with pytest.raises(pairgraph.PairgraphError, match="cka, fitnets, repa") as e:
        pairgraph.GuidanceLoss(mlp(4, 0), mlp(4, 1), example_input=torch.randn(4, 6), objective="vicreg")
    assert "\n" not in str(e.value)
