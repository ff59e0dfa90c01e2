"""The learned mapper's assignment rule: depth-monotone, flat matrices give `depth` (docs/mapping.md, issue #31)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

import pairgraph
from pairgraph.compiler.mapping import depth, order_preserving, relative_depths
from pairgraph.core.layer_graph import LayerGraph, TapPoint, finish_graph

COPY_PASTE = [[0.982, 0.975, 0.971, 0.971],  # docs/mapping.md: 4 Transformer blocks × 4 RNN layers at init
              [0.981, 0.975, 0.971, 0.971],
              [0.982, 0.975, 0.971, 0.971],
              [0.981, 0.974, 0.970, 0.969]]


def chain(n: int, prefix: str) -> LayerGraph:
    taps = [TapPoint(f"{prefix}.{i}", "Linear", (2, 8)) for i in range(n)]
    return finish_graph(taps, [(a.name, b.name) for a, b in itertools.pairwise(taps)], "fx", None, [])


def resnet_like(blocks: int) -> LayerGraph:
    """conv → per block (a, b, and a parallel shortcut from the block's input) → next block: branches."""
    names, edges, prev = ["stem"], [], "stem"
    for k in range(blocks):
        a, b, s = f"b{k}.a", f"b{k}.b", f"b{k}.shortcut"
        names += [a, b, s]
        edges += [(prev, a), (a, b), (prev, s)]
        prev = f"b{k}.out"
        names.append(prev)
        edges += [(b, prev), (s, prev)]
    taps = [TapPoint(n, "Conv2d", (2, 4, 3, 3)) for n in names]
    return finish_graph(taps, edges, "fx", None, [])


def columns(guide: LayerGraph, target: LayerGraph, matrix) -> list[int]:
    return order_preserving(torch.tensor(matrix, dtype=torch.float64), guide, target, 0.05)


def depth_columns(guide: LayerGraph, target: LayerGraph) -> list[int]:
    return [target.names.index(t) for _, t, _ in depth(guide, target).pairs]


GRAPHS = [(chain(4, "g"), chain(4, "t")), (chain(9, "g"), chain(3, "t")), (chain(3, "g"), chain(11, "t")),
          (chain(1, "g"), chain(5, "t")), (chain(6, "g"), chain(1, "t")), (resnet_like(3), chain(7, "t")),
          (chain(5, "g"), resnet_like(2)), (resnet_like(4), resnet_like(2))]


@pytest.mark.parametrize(("guide", "target"), GRAPHS)
def test_a_flat_matrix_gives_the_depth_mapping(guide, target):
    flat = [[0.7] * len(target) for _ in guide.taps]
    assert columns(guide, target, flat) == depth_columns(guide, target)
    rng = random.Random(len(guide) * 31 + len(target))
    # a column effect below the prior's (target layers near the input resemble everything a little more,
    # 0.015 from first to last, as on copy-paste: 0.012) plus measurement noise
    col = [0.015 * (len(target) - j) / len(target) for j in range(len(target))]
    noisy = [[0.9 + col[j] + rng.uniform(-1e-3, 1e-3) for j in range(len(target))] for _ in guide.taps]
    # noise may only choose between target taps equally near in relative depth (an exact tie for `depth`)
    rg, rt = relative_depths(guide), relative_depths(target)
    gaps = [abs(rg[i] - rt[j]) for i, j in enumerate(columns(guide, target, noisy))]
    assert gaps == pytest.approx([abs(rg[i] - rt[j]) for i, j in enumerate(depth_columns(guide, target))], abs=1e-12)


def test_the_copy_paste_matrix_maps_block_k_to_layer_k_not_all_to_layer_0():
    assert columns(chain(4, "blocks"), chain(4, "layers"), COPY_PASTE) == [0, 1, 2, 3]


@pytest.mark.parametrize(("n_guide", "n_target"), [(40, 32), (4, 16), (12, 5)])
def test_a_column_effect_larger_than_the_prior_is_followed(n_guide, n_target):
    # as on MNIST-1D (docs/mapping.md): every guide tap resembles the target's first layers far more than its
    # deep ones (0.96 → 0.2); the data say so, so the guidance goes there, in depth order, not spread by depth
    guide, target = chain(n_guide, "g"), chain(n_target, "t")
    m = [[0.9 - 0.7 * j / (n_target - 1) - 0.2 * i / n_guide for j in range(n_target)] for i in range(n_guide)]
    idx = columns(guide, target, m)
    assert idx == sorted(idx) and max(idx) < n_target / 4 < max(depth_columns(guide, target))


@pytest.mark.parametrize(("guide", "target"), GRAPHS)
def test_deeper_guide_taps_never_map_to_shallower_target_taps(guide, target):
    rng = random.Random(7)
    for _ in range(50):
        m = [[rng.uniform(0, 1) for _ in target.taps] for _ in guide.taps]
        idx = columns(guide, target, m)
        for i, k in itertools.permutations(range(len(guide)), 2):
            if guide.taps[i].depth < guide.taps[k].depth:
                assert target.taps[idx[i]].depth <= target.taps[idx[k]].depth


@pytest.mark.parametrize(("n_guide", "n_target"), [(4, 10), (10, 4), (6, 6), (12, 5)])
def test_a_clear_signal_off_the_depth_mapping_is_found(n_guide, n_target):
    guide, target = chain(n_guide, "g"), chain(n_target, "t")
    rng = random.Random(n_guide * n_target)
    # a monotone planted path that is not the depth mapping: everything in the first half of the target
    planted = sorted(rng.randrange(max(n_target // 2, 1)) for _ in range(n_guide))
    assert planted != depth_columns(guide, target)
    m = [[0.6 + rng.uniform(-0.02, 0.02) + (0.3 if j == planted[i] else 0.0) for j in range(n_target)]
         for i in range(n_guide)]
    assert columns(guide, target, m) == planted


def test_a_nan_similarity_never_wins_and_a_prior_of_zero_follows_the_data():
    guide, target = chain(2, "g"), chain(3, "t")
    m = torch.tensor([[float("nan"), 0.5, 0.4], [0.1, 0.2, 0.9]], dtype=torch.float64)
    assert order_preserving(m, guide, target, 0.05) == [1, 2]
    weak = torch.tensor([[0.50, 0.51, 0.5], [0.50, 0.51, 0.5]], dtype=torch.float64)  # a faint column effect only
    assert order_preserving(weak, guide, target, 0.0) == [1, 1]  # no prior: the most similar column
    assert order_preserving(weak, guide, target, 0.05) == [0, 2]  # the prior outweighs 0.01: the depth mapping
    dust = torch.tensor([[0.5, 0.5 + 1e-12, 0.5]] * 2, dtype=torch.float64)
    assert order_preserving(dust, guide, target, 0.0) == [0, 0]  # float dust is a tie: the earliest column


def test_depth_prior_is_checked(tmp_path):
    spec = {"name": "p", "task": {"kind": "image_classification", "dataset": "mnist1d"},
            "guide": {"model": "deep_fcn", "args": {"preset": "cpu"}}, "target": {"model": "deep_fcn",
            "args": {"preset": "cpu"}}, "mapping": {"kind": "learned", "depth_prior": -1}}
    with pytest.raises(pairgraph.PairgraphError, match="depth_prior must be a finite number"):
        pairgraph.compile(spec, tmp_path, render=False, notify=None)


def test_a_flat_matrix_on_traced_resnet18_and_deep_fcn_gives_their_depth_mapping(tmp_path):
    cp = pairgraph.compile("specs/fcn_deep_from_resnet18.yaml", tmp_path, render=False, notify=None,
                           overrides=["mapping.kind=depth"])
    flat = [[0.5] * len(cp.target) for _ in cp.guide.taps]
    want = [cp.target.names.index(t) for _, t, _ in cp.correspondence.pairs]
    assert len(cp.guide) == 40 and columns(cp.guide, cp.target, flat) == want


def test_compile_says_why_each_learned_pair_was_chosen():
    from rich.console import Console

    from pairgraph.compiler.mapping import Correspondence
    from pairgraph.compiler.render import print_mapping

    guide, target = chain(4, "blocks"), chain(4, "layers")
    chosen = columns(guide, target, COPY_PASTE)
    corr = Correspondence([(g, target.names[j], 1.0) for g, j in zip(guide.names, chosen)], "learned", guide.names,
                          target.names, {"matrix": COPY_PASTE, "measure": "cka", "chosen": chosen,
                                         "depth_chosen": depth_columns(guide, target), "depth_prior": 0.05})
    console = Console(record=True, width=200)
    print_mapping(guide, target, corr, console)
    lines = [ln for ln in console.export_text().splitlines() if "blocks." in ln and "(0.9" in ln]
    assert len(lines) == 4
    assert "layers.0 (0.982)" in lines[0] and "most similar" in lines[0]
    assert "layers.3 (0.969)" in lines[3] and "layers.0 (0.981)" in lines[3] and "depth's choice, best +0.012" in lines[3]
