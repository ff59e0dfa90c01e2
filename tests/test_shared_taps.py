"""Guide taps whose CKA is provably another tap's are computed once (issue #21)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pairgraph
from pairgraph.core import similarity
from pairgraph.core.shared_taps import rescaled_taps, uniform_rescale
from pairgraph.core.taps import HookedNetwork


def _fcn_from_resnet(tmp_path, *overrides: str):
    spec = {"name": "alias", "task": {"kind": "image_classification", "dataset": "mnist1d", "train_size": 64,
                                      "val_size": 16, "test_size": 16},
            "guide": {"model": "resnet18", "args": {"preset": "cpu"}}, "target": {"model": "deep_fcn",
                                                                                  "args": {"num_blocks": 4}},
            "train": {"batch_size": 16, "steps": 2, "eval_every": 2}}
    return pairgraph.compile(spec, tmp_path / "b", list(overrides), render=False, notify=None)


def test_an_untrained_guides_batchnorms_share_their_convolutions_cka(tmp_path, monkeypatch):
    pair = _fcn_from_resnet(tmp_path).build()
    assert pair.guide_aliases["layer1.0.bn1"] == "layer1.0.conv1" and pair.guide_aliases["bn1"] == "conv1"
    assert all(k.rsplit(".", 1)[-1].startswith("bn") or "downsample.1" in k for k in pair.guide_aliases)
    x, y = torch.randn(16, 1, 1, 40), torch.randint(0, 10, (16,))
    prepared: list[tuple] = []  # one entry per tap prepared (taps of one shape are prepared stacked)
    real = similarity.CKA.prepare_stacks

    def counting(self, stacks, *args, **kwargs):
        prepared.extend(tuple(a.shape[1:]) for s in stacks for a in s)
        return real(self, stacks, *args, **kwargs)

    monkeypatch.setattr(similarity.CKA, "prepare_stacks", counting)
    shared = pair(x, y, 0)
    n_shared = len(prepared)
    aliases, pair.guide_aliases = pair.guide_aliases, {}
    prepared.clear()
    full = pair(x, y, 0)
    assert len(prepared) - n_shared == len(aliases) > 0  # one guide gram fewer per alias
    for k, v in full.terms.items():
        torch.testing.assert_close(shared.terms[k], v, atol=1e-5, rtol=0)


def test_a_batchnorm_that_scales_channels_differently_is_not_shared(tmp_path):
    bn = nn.BatchNorm2d(4).eval()
    assert uniform_rescale(bn)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 1.0, 1.0]))
    assert not uniform_rescale(bn)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), bn)
    wrapped = HookedNetwork(net, [("0", None, 0), ("1", None, 0)])
    assert rescaled_taps(wrapped, torch.randn(2, 1, 5, 5), ["0", "1"]) == {}
    with torch.no_grad():
        bn.weight.fill_(3.0)
        bn.running_var.fill_(4.0)
    assert rescaled_taps(wrapped, torch.randn(2, 1, 5, 5), ["0", "1"]) == {"1": "0"}


@pytest.mark.parametrize("override", ["guidance.guide_bn=batch", "similarity.measure=rsa", "guidance.mode=fitnets"])
def test_nothing_is_shared_where_it_would_not_be_exact(tmp_path, override):
    assert _fcn_from_resnet(tmp_path, override).build().guide_aliases == {}


def test_the_guide_cache_keeps_only_the_taps_it_needs(tmp_path):
    pair = _fcn_from_resnet(tmp_path).build()
    cache = pair.cache_guide(lambda i: torch.randn(len(i), 1, 1, 40, generator=torch.Generator().manual_seed(0)), 32)
    assert set(cache.taps) == set(pair.guide_taps()) and len(cache.taps) == len(pair.pairs) - len(pair.guide_aliases)
