"""The learned mapper: a correspondence chosen from measured similarities (docs/mapping.md)."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pairgraph
from pairgraph.compiler.mapping import build_mapping, monotone_assignment, uniform_indices

WIDTH = 48
GUIDE_SEED = 1234
#: The target's layers in call order: "g" a copy of the next guide layer, "x" an extra random
#: Linear layer (tapped), "i" the next guide copy wrapped as Sequential(Identity, copy).
PLAN = ["g", "x", "x", "g", "x", "i", "g", "x", "x", "x"]
PLANTED = [0, 3, 5, 6]  # target tap index holding guide layer k's copy (taps are in call order)


pytestmark = pytest.mark.usefixtures("one_thread")  # every test here runs with one torch thread


class PlantedGuide(nn.Module):
    """An MLP on the flattened input: 4 tapped hidden Linear layers (ReLU between) and a head."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        dims = [in_features] + [WIDTH] * 4
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.head = nn.Linear(WIDTH, num_classes)
        g = torch.Generator().manual_seed(GUIDE_SEED)  # fixed weights, whatever the global seed
        with torch.no_grad():
            for lin in [*self.layers, self.head]:
                lin.weight.normal_(0.0, (2.0 / lin.in_features) ** 0.5, generator=g)
                lin.bias.normal_(0.0, 0.1, generator=g)

    def forward(self, x):
        h = x.flatten(1)
        for lin in self.layers:
            h = F.relu(lin(h))
        return self.head(h)


class PlantedTarget(nn.Module):
    """The guide's hidden layers (copied weights, same order) with extra tapped Linear layers between.

    The copies form the main path exactly as in the guide, so each reproduces its original's
    activation (CKA 1). Each extra layer is a random, non-orthogonal ``Linear`` fed the current
    main-path state and followed by a ReLU; its output joins the logits through a side head, so
    it is live and similar to — but never the same representation as — its neighbours.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        guide = PlantedGuide(in_features, num_classes)
        copies = iter(guide.layers)
        layers = []
        for kind in PLAN:
            if kind == "x":
                layers.append(nn.Linear(WIDTH, WIDTH))  # default (seeded) init: random, not orthogonal
            else:
                copy = next(copies)
                layers.append(copy if kind == "g" else nn.Sequential(nn.Identity(), copy))
        self.layers = nn.ModuleList(layers)
        self.head = guide.head
        self.side_head = nn.Linear(WIDTH, num_classes)

    def forward(self, x):
        h = x.flatten(1)
        side = None
        for kind, layer in zip(PLAN, self.layers):
            if kind == "x":
                z = F.relu(layer(h))
                side = z if side is None else side + z
            else:
                h = F.relu(layer(h))
        return self.head(h) + self.side_head(side)


def _features(image_size, in_channels) -> int:
    h, w = image_size
    return in_channels * h * w


def planted_guide(num_classes: int = 10, in_channels: int = 1, image_size=(1, 40)) -> nn.Module:
    return PlantedGuide(_features(image_size, in_channels), num_classes)


def planted_target(num_classes: int = 10, in_channels: int = 1, image_size=(1, 40)) -> nn.Module:
    return PlantedTarget(_features(image_size, in_channels), num_classes)


def _spec(mapping: dict, **task) -> dict:
    return {
        "name": "planted",
        "task": {"kind": "image_classification", "dataset": "mnist1d", **task},
        # this module as imported (its name depends on pytest's import mode), so the factories resolve
        "guide": {"model": f"{__name__}:planted_guide"},
        "target": {"model": f"{__name__}:planted_target", "layers": {"exclude": ["*head"]}},
        "mapping": mapping,
        "train": {"batch_size": 128, "seed": 0},
    }


def test_learned_recovers_planted_correspondence_and_uniform_does_not(tmp_path):
    cp = pairgraph.compile(_spec({"kind": "learned"}), tmp_path / "learned", notify=None)
    guide, target = cp.guide, cp.target
    assert len(guide) == 4 and len(target) == len(PLAN)
    planted = [(g, target.names[j]) for g, j in zip(guide.names, PLANTED)]
    assert [(g, t) for g, t, _ in cp.correspondence.pairs] == planted
    # the copies reproduce their originals; every extra layer is clearly less similar
    m = torch.tensor(cp.correspondence.info["matrix"])
    for i, j in enumerate(PLANTED):
        assert m[i, j] > 0.999
        assert m[i, [k for k in range(len(PLAN)) if k != j]].max() < 0.98

    uniform = pairgraph.compile(_spec({"kind": "uniform"}), tmp_path / "uniform", render=False, notify=None)
    assert [t.name for t in uniform.target.taps] == target.names
    assert [(g, t) for g, t, _ in uniform.correspondence.pairs] != planted
    assert [target.names.index(t) for _, t, _ in uniform.correspondence.pairs] == uniform_indices(4, len(PLAN))

    # order-free argmax finds the same cells here, since each copy is its original's best match
    free = pairgraph.compile(_spec({"kind": "learned", "monotone": False, "batches": 1}), tmp_path / "free",
                             render=False, notify=None)
    assert [(g, t) for g, t, _ in free.correspondence.pairs] == planted


def test_learned_mapping_json_records_the_matrix_and_the_png_shows_it(tmp_path):
    cp = pairgraph.compile(_spec({"kind": "learned", "batches": 1, "batch_size": 64}), tmp_path, notify=None)
    data = json.loads((tmp_path / "mapping.json").read_text())
    assert data["kind"] == "learned"
    info = data["info"]
    assert (info["measure"], info["batches"], info["batch_size"], info["monotone"]) == ("cka", 1, 64, True)
    assert len(info["matrix"]) == len(cp.guide) and all(len(r) == len(cp.target) for r in info["matrix"])
    assert info["chosen"] == PLANTED
    assert [p["target"] for p in data["pairs"]] == [cp.target.names[j] for j in PLANTED]
    assert "learned" in (tmp_path / "guided_pair.py").read_text()
    assert (tmp_path / "mapping.png").stat().st_size > 0 and (tmp_path / "mapping.svg").exists()
    assert "calibration examples" in (tmp_path / "mapping.svg").read_text()  # the matrix panel's title


def test_learned_is_deterministic_and_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = pairgraph.compile(_spec({"kind": "learned", "batches": 1, "warmup_steps": 2}), tmp_path / "a",
                          render=False, notify=None)
    assert torch.equal(torch.get_rng_state(), before)
    b = pairgraph.compile(_spec({"kind": "learned", "batches": 1, "warmup_steps": 2}), tmp_path / "b",
                          render=False, notify=None)
    assert a.correspondence.info["matrix"] == b.correspondence.info["matrix"]
    assert a.correspondence.info["warmup_steps"] == 2


def test_uniform_and_depth_compile_without_data_learned_says_the_data_is_missing(tmp_path):
    spec = _spec({"kind": "uniform"}, dataset="cifar10", data_dir=str(tmp_path / "nowhere"))
    spec["guide"]["model"] = spec["target"]["model"] = "deep_fcn"
    spec["guide"]["args"] = spec["target"]["args"] = {"preset": "cpu"}
    spec["target"]["layers"] = {}
    for kind in ("uniform", "depth"):
        pairgraph.compile({**spec, "mapping": {"kind": kind}}, tmp_path / kind, render=False, notify=None)
    with pytest.raises(pairgraph.PairgraphError) as err:
        pairgraph.compile({**spec, "mapping": {"kind": "learned"}}, tmp_path / "learned", render=False, notify=None)
    msg = str(err.value)
    assert "'learned'" in msg and "not found" in msg and "fix:" in msg and "\n" not in msg


def test_learned_uses_the_guide_weights_of_the_spec(tmp_path, monkeypatch):
    other = PlantedGuide(40, 10)
    for lin in other.layers:
        nn.init.normal_(lin.weight, std=0.2)  # not the weights the target copied
    torch.save(other.state_dict(), tmp_path / "guide.pt")
    spec = _spec({"kind": "learned", "batches": 1, "batch_size": 64})
    spec["guide"]["weights"] = str(tmp_path / "guide.pt")
    cp = pairgraph.compile(spec, tmp_path / "ckpt", render=False, notify=None)
    assert max(max(r) for r in cp.correspondence.info["matrix"]) < 0.99  # no copy is identical any more

    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "empty-cache"))
    spec["guide"]["weights"] = "train"
    with pytest.raises(pairgraph.PairgraphError, match="mapping 'learned' needs the trained guide .* not cached yet"):
        pairgraph.compile(spec, tmp_path / "train", render=False, notify=None)


@pytest.mark.parametrize(("options", "fragment"), [
    ({"batches": 0}, "batches"),
    ({"monotone": "yes"}, "monotone"),
    ({"measure": "kca"}, "unknown measure"),
    ({"bogus": 1}, "rejected its options"),
])
def test_learned_rejects_bad_options(options, fragment, tmp_path):
    with pytest.raises(pairgraph.PairgraphError, match=fragment):
        pairgraph.compile(_spec({"kind": "learned", **options}), tmp_path, render=False, notify=None)


def test_learned_needs_a_context():
    with pytest.raises(pairgraph.PairgraphError, match="needs the spec's models"):
        build_mapping("learned", None, None)  # type: ignore[arg-type]


def _brute_force(scores: list[list[float]]) -> tuple[float, list[int]]:
    l, t = len(scores), len(scores[0])
    best = max(itertools.combinations_with_replacement(range(t), l),  # exactly the non-decreasing sequences
               key=lambda js: sum(scores[i][j] for i, j in enumerate(js)))
    return sum(scores[i][j] for i, j in enumerate(best)), list(best)


def test_monotone_assignment_equals_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        l, t = rng.randint(1, 5), rng.randint(1, 6)
        scores = [[rng.uniform(-1, 1) for _ in range(t)] for _ in range(l)]
        value, assignment = _brute_force(scores)
        got = monotone_assignment(scores)
        assert all(a <= b for a, b in itertools.pairwise(got))
        assert sum(scores[i][j] for i, j in enumerate(got)) == pytest.approx(value, abs=1e-12)
        assert got == assignment  # continuous random scores: the optimum is unique


def test_monotone_assignment_hand_made():
    # row-wise argmax would cross (0 → 2, 1 → 0); the best order-preserving choice is 0 → 0, 1 → 0 (1.4 > 0.9)
    scores = [[0.6, 0.1, 0.9],
              [0.8, 0.7, 0.0]]
    assert monotone_assignment(scores) == [0, 0]
    assert monotone_assignment([[0.5, 0.5], [0.5, 0.5]]) == [0, 0]  # ties → the earlier column
    assert monotone_assignment([[1.0], [0.0], [0.3]]) == [0, 0, 0]  # more guide taps than target taps
