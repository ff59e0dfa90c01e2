"""pairgraph's `paper` tap preset and `authors` Deep FCN layout against the choices of the authors' code
(github.com/vsubramaniam851/untrainable-networks, read for issue #29: rep_sim/layer_extract.py's
FeatureMapExtractor and imagenet-comparison/mlp.py's ImageNetNarrowMLP). The authors' choices are
written out here as data, not copied code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pairgraph
from pairgraph.core.layer_graph import PAPER_TYPES
from zoo import build_model

#: FeatureMapExtractor.layers_to_retain: the module types whose outputs the authors' CKA loss compares;
#: the extractor then drops the last hooked module's output (``list(...)[:-1]``)
AUTHORS_HOOKED_TYPES = {"Conv2d", "Linear", "AdaptiveAvgPool2d", "LSTM", "RNN", "TransformerDecoderLayer",
                        "LayerNorm", "MultiheadAttention"}
#: ImageNetNarrowMLP: (in, out) of each Linear, each but the last followed by BatchNorm1d, ReLU, Dropout(0.1)
AUTHORS_DEEP_FCN_LINEARS = [(150528, 2048), (2048, 1024)] + [(1024, 1024)] * 46 + [(1024, 1000)]


def test_the_paper_tap_preset_hooks_the_authors_module_types():
    assert set(PAPER_TYPES) == AUTHORS_HOOKED_TYPES


def test_the_authors_deep_fcn_preset_is_their_layout_module_for_module():
    with torch.device("meta"):
        fcn = build_model("deep_fcn", {"preset": "authors", "image_size": 224}, {"num_classes": 1000})
    linears = [(m.in_features, m.out_features) for m in fcn.modules() if isinstance(m, nn.Linear)]
    assert linears == AUTHORS_DEEP_FCN_LINEARS
    for block in fcn.blocks:  # Linear → BatchNorm1d → ReLU → Dropout(0.1), in that order
        kinds = [type(m).__name__ for m in block]
        assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] and block[3].p == 0.1
        assert block[1].num_features == block[0].out_features
    assert sum(p.numel() for p in fcn.parameters()) == sum(i * o + o for i, o in AUTHORS_DEEP_FCN_LINEARS) + sum(
        2 * o for _, o in AUTHORS_DEEP_FCN_LINEARS[:-1])


def test_the_paper_preset_taps_the_authors_fcn_where_their_extractor_does(tmp_path):
    """Their extractor keeps every Linear's output but the last (the logits): 48 taps, one per block."""
    spec = {"task": {"kind": "image_classification", "num_classes": 10, "image_size": [8, 8]},
            "guide": {"model": "resnet18", "args": {"preset": "cpu"}, "layers": {"preset": "paper"}},
            "target": {"model": "deep_fcn", "args": {"preset": "authors", "width": 16, "first_width": 32},
                       "layers": {"preset": "paper"}}}
    cp = pairgraph.compile(spec, tmp_path / "fcn", render=False, notify=None)
    assert cp.target.names == [f"blocks.{i}.linear" for i in range(48)]


@pytest.mark.parametrize("bad", [0, -3])
def test_a_bad_first_width_is_a_one_line_error(bad):
    from pairgraph.errors import PairgraphError

    with pytest.raises(PairgraphError) as e:
        build_model("deep_fcn", {"num_blocks": 2, "width": 8, "first_width": bad})
    assert "first_width must be at least 1" in e.value.message
