"""The guide cache: exact (same loss and gradients as running the guide), used by the trainer, refused when unsafe."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.core.similarity import get_measure
from pairgraph.errors import PairgraphError
from pairgraph.tasks import get_task


@pytest.mark.parametrize("measure", ["cka", "debiased_cka"])
@pytest.mark.parametrize("d", [5, 300])  # narrow (feature form) and wide (gram form) rows
def test_prepare_gram_equals_prepare_of_the_rows(measure, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, d, generator=g, dtype=torch.float64) + 3.0
    y = x[:, :3] @ torch.randn(3, 6, generator=g, dtype=torch.float64) + torch.randn(
        32, 6, generator=g, dtype=torch.float64
    )
    m = get_measure(measure)
    offset = torch.randn(d, generator=g, dtype=torch.float64) * 5  # any common vector: double centring removes it
    xs = x - offset
    from_gram = m.score(m.prepare_gram(xs @ xs.T), m.prepare(y))
    direct = m.score(m.prepare(x), m.prepare(y))
    assert from_gram.item() == pytest.approx(direct.item(), rel=1e-10, abs=1e-12)
    assert 0.05 < direct.item() < 0.99  # a value that could be wrong


def test_rsa_refuses_a_gram():
    with pytest.raises(PairgraphError, match="cannot be computed from a gram"):
        get_measure("rsa").prepare_gram(torch.eye(4))


def image_spec(**guidance) -> dict:
    # mnist1d rows are 40 floats; a 96-wide guide tap is "wide" (a gram) for N < 96 and rows beyond
    return {
        "name": "cached",
        "task": {
            "kind": "image_classification",
            "dataset": "mnist1d",
            "train_size": 80,
            "val_size": 16,
            "test_size": 16,
        },
        "guide": {
            "model": "deep_fcn",
            "args": {"num_blocks": 2, "width": 96},
            "layers": {"include": ["blocks.*", "head"], "drop_output": False},
        },
        "target": {"model": "deep_fcn", "args": {"num_blocks": 3, "width": 24}},
        "guidance": {"cache_guide": True, **guidance},
        "train": {"batch_size": 16, "steps": 6, "eval_every": 3, "lr": 1e-3, "seed": 0},
    }


def copy_spec(**guidance) -> dict:
    return copy_paste_pair({"batch_size": 16, "steps": 6, "eval_every": 3, "lr": 3e-3, "seed": 0}, size=120,
                           d_model=16, hidden=16, name="cached_seq", guidance={"cache_guide": True, **guidance})


def viewed_spec() -> dict:
    """A guide fed its own view of the images (resized, renormalized): deterministic, so still cacheable."""
    spec = image_spec()
    spec["guide"] = {**spec["guide"], "input": {"resize": [2, 60], "normalize": {"mean": [0.1], "std": [0.5]}}}
    return spec


@pytest.mark.parametrize("make", [image_spec, copy_spec, viewed_spec])
def test_cached_guide_gives_the_same_loss_and_gradients_without_running_the_guide(tmp_path, make):
    spec = make()
    pair = pairgraph.compile(spec, tmp_path, render=False, notify=None).build()
    train = get_task(spec["task"]).datasets(0)["train"]
    n = len(train)

    def inputs(index):
        return torch.stack([train[int(i)][0] for i in index])

    cache = pair.cache_guide(inputs, n, chunk=7)  # a chunk that does not divide N
    assert {t.kind for t in cache.taps.values()} == ({"gram"} if make is copy_spec else {"feat", "gram"})
    index = torch.tensor([3, 17, 5, 40, 41, 9, 0, 30, 22, 11, 60, 2, 45, 7, 8, 19])
    x = inputs(index)
    y = torch.stack([train[int(i)][1] for i in index])

    def loss_and_grads(idx):
        pair.target.zero_grad()
        out = pair(x, y, 0, idx)
        out.loss.backward()
        return out, [p.grad.clone() for p in pair.target.parameters() if p.grad is not None]

    calls = pair.guide_calls
    cached, g_cached = loss_and_grads(index)
    assert pair.guide_calls == calls  # the guide did not run
    fresh, g_fresh = loss_and_grads(None)
    assert pair.guide_calls == calls + 1
    assert cached.guidance_loss.item() == pytest.approx(fresh.guidance_loss.item(), rel=1e-5, abs=1e-6)
    assert 0.01 < fresh.guidance_loss.item()
    for a, b in zip(g_cached, g_fresh, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_trainer_uses_the_cache_and_matches_an_uncached_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    pairgraph.compile(image_spec(), tmp_path / "a", render=False, notify=None).train(runs_dir=runs, run_id="cached")
    assert "guide cache (asked for): 80 examples" in capsys.readouterr().out
    plain = pairgraph.compile(
        image_spec(), tmp_path / "b", overrides=["guidance.cache_guide=false"], render=False, notify=None
    )
    plain.train(runs_dir=runs, run_id="plain", progress=False)

    def losses(run):
        rows = [json.loads(ln) for ln in (runs / "cached" / run / "metrics.jsonl").read_text().splitlines()]
        return [r["guidance_loss"] for r in rows if "split" not in r]

    a, b = losses("cached"), losses("plain")
    assert len(a) == 6 and a == pytest.approx(b, rel=1e-4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (image_spec(guide_input="noise"), "guide_input is noise"),
        (image_spec(guide_bn="batch"), "guide_bn is batch"),
        ({**image_spec(), "task": {**image_spec()["task"], "augment": True}}, "task.augment is on"),
        ({**image_spec(), "task": {**image_spec()["task"], "augment": "random_resized_crop"}}, "task.augment is on"),
        (image_spec(cache_max_gb=1e-6), "over the 0.0 GiB limit"),
    ],
)
def test_unsafe_or_oversized_caches_are_refused_with_one_line(tmp_path, spec, message):
    cp = pairgraph.compile(spec, tmp_path, render=False, notify=None)
    with pytest.raises(PairgraphError, match=message) as e:
        cp.train(runs_dir=tmp_path / "runs", run_id="r", progress=False)
    assert "\n" not in str(e.value)


def test_caching_the_guide_is_not_a_different_configuration_for_a_study():
    from pairgraph.analysis import spec_diff
    from pairgraph.config import PairSpec

    def load_spec(d: dict) -> PairSpec:
        return PairSpec.model_validate(d)

    plain = load_spec(copy_spec(cache_guide=False)).resolved()
    cached = load_spec(copy_spec(cache_guide=True, cache_max_gb=1.0)).resolved()
    older = {**plain, "guidance": {k: v for k, v in plain["guidance"].items() if not k.startswith("cache")}}
    assert spec_diff(plain, cached) == [] and spec_diff(older, cached) == []
    assert spec_diff(plain, load_spec(copy_spec(guide_input="noise")).resolved())  # a real difference is seen


def _guide_calls(tmp_path, name: str, overrides: list[str]) -> tuple[int, str]:
    spec = image_spec()
    del spec["guidance"]["cache_guide"]  # the default: null
    cp = pairgraph.compile(spec, tmp_path / name, overrides, render=False, notify=None)
    return cp.train(runs_dir=tmp_path / "runs", run_id=name)["guide_calls"], name


@pytest.mark.parametrize(("overrides", "cached", "said"), [
    ([], True, "guide cache (on by default: exact here): 80 examples"),  # 6 steps × 16 ≥ 80 examples
    (["train.steps=4"], False, None),  # 64 examples seen: a cache pass over 80 would cost more
    (["task.augment=crop_flip"], False, None),  # inexact: not cached, and not an error either
    (["guidance.guide_bn=batch"], False, None),
    (["guidance.cache_max_gb=1e-6"], False, "guide cache off: the guide cache needs"),
])
def test_the_cache_turns_itself_on_where_it_is_exact_and_pays(tmp_path, capsys, overrides, cached, said):
    calls, _ = _guide_calls(tmp_path, "r", overrides)
    out = capsys.readouterr().out
    assert (calls == 0) == cached
    assert (said in out) if said else "guide cache" not in out


def test_every_shipped_spec_with_a_frozen_guide_and_fixed_inputs_caches_by_default():
    from pathlib import Path

    from pairgraph.config import load_spec
    from pairgraph.training.guide_cache import inexact

    specs = [load_spec(p) for p in sorted(Path(__file__).resolve().parents[1].glob("specs/**/*.yaml"))]
    fixed = [s for s in specs if s.task.get("augment", "none") == "none"]  # specs/paper's image specs augment
    assert len(fixed) >= 10
    for spec in specs:
        assert spec.guidance.cache_guide is None, spec.name
        if spec in fixed:
            assert inexact(spec) is None, spec.name  # none of them feeds noise or uses batch statistics
        else:
            assert "task.augment is on" in inexact(spec), spec.name
    augmented = load_spec(Path(__file__).resolve().parents[1] / "specs/fcn_deep_from_resnet18.yaml",
                          ["task.augment=crop_flip"])
    assert "task.augment is on" in inexact(augmented)
