"""The explicit mapper: pairs of tap globs written in the spec (docs/mapping.md, "explicit")."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
import yaml
from tiny_specs import copy_paste_pair, run_cli

import pairgraph
from pairgraph.compiler.mapping import build_mapping
from pairgraph.core.layer_graph import LayerGraph, TapPoint
from pairgraph.core.loss import tap_key
from pairgraph.tasks import get_task

# the tiny pair's taps: guide (2-layer Transformer, blocks.* and norm) and target (2-layer RNN)
GUIDE = ["blocks.0", "blocks.1", "norm"]
TARGET = ["layers.0", "layers.1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # every test here runs with one torch thread


def graph(names: list[str]) -> LayerGraph:
    """A layer graph with these taps in this order (shapes and types do not matter to the mapper)."""
    taps = [TapPoint(n, "Linear", (2, 4), depth=i, index=i) for i, n in enumerate(names)]
    return LayerGraph(taps, nx.DiGraph(), "fx")


def explicit(pairs, guide=GUIDE, target=TARGET):
    return build_mapping("explicit", graph(guide), graph(target), pairs=pairs)


def error(pairs, guide=GUIDE, target=TARGET) -> str:
    with pytest.raises(pairgraph.PairgraphError) as err:
        explicit(pairs, guide, target)
    msg = str(err.value)
    assert "\n" not in msg and " — fix: " in msg, msg
    return msg


def tiny(pairs, **extra) -> dict:
    spec = copy_paste_pair({"batch_size": 8, "steps": 1}, mapping={"kind": "explicit", "pairs": pairs}, **extra)
    spec["guide"]["layers"] = {"include": ["blocks.*", "norm"]}
    return spec


# ---------------------------------------------------------------- semantics


def test_equal_counts_pair_zip_wise_in_tap_order():
    # tap order is the network's, not alphabetical: blocks.10 comes after blocks.9
    guide = [f"blocks.{i}" for i in range(12)] + ["norm"]
    target = [f"layers.{i}" for i in range(12)]
    corr = explicit([["blocks.*", "layers.*"]], guide, target)
    assert corr.pairs == [(f"blocks.{i}", f"layers.{i}", 1.0) for i in range(12)]
    corr = explicit([["blocks.1*", "layers.[4-6]", 2]], guide, target)
    assert corr.pairs == [("blocks.1", "layers.4", 2.0), ("blocks.10", "layers.5", 2.0), ("blocks.11", "layers.6", 2.0)]
    assert corr.kind == "explicit" and corr.guide == guide and corr.target == target
    assert corr.info == {"entries": [{"guide": "blocks.1*", "target": "layers.[4-6]", "weight": 2.0, "pairs": 3}]}
    json.dumps(corr.to_json())  # JSON-serialisable as mapping.json needs


def test_one_tap_on_a_side_pairs_with_every_match_of_the_other():
    corr = explicit([["norm", "layers.*", 0.5], ["blocks.*", "layers.1"]])
    assert corr.pairs == [("norm", "layers.0", 0.5), ("norm", "layers.1", 0.5),
                          ("blocks.0", "layers.1", 1.0), ("blocks.1", "layers.1", 1.0)]  # entry order kept
    assert [e["pairs"] for e in corr.info["entries"]] == [2, 2]


def test_exact_names_are_globs_and_a_partial_mapping_is_allowed():
    corr = explicit([("blocks.1", "layers.0")])  # a tuple entry (from Python) works like a YAML list
    assert corr.pairs == [("blocks.1", "layers.0", 1.0)]


def test_weights_reach_the_guided_pair_and_weight_the_loss(tmp_path):
    cp = pairgraph.compile(tiny([["blocks.0", "layers.0", 0.25], ["blocks.1", "layers.1", 3]]), tmp_path,
                           render=False, notify=None)
    pair = cp.build()
    assert pair.pairs == [("blocks.0", "layers.0", 0.25), ("blocks.1", "layers.1", 3.0)]
    x, y = get_task(cp.spec.task).generate(8, seed=0)
    out = pair(x, y, 0)
    terms = out.terms
    expected = 0.25 * terms[tap_key("blocks.0", "layers.0")] + 3.0 * terms[tap_key("blocks.1", "layers.1")]
    torch.testing.assert_close(out.guidance_loss, expected)


def test_an_unmapped_guide_tap_gives_no_term_and_is_drawn_without_one(tmp_path):
    cp = pairgraph.compile(tiny([["blocks.*", "layers.*", 0.5]]), tmp_path, notify=None)
    assert cp.guide.names == GUIDE and cp.target.names == TARGET  # norm is traced, but not mapped
    pair = cp.build()
    x, y = get_task(cp.spec.task).generate(8, seed=0)
    out = pair(x, y, 0)
    assert set(out.terms) == {tap_key("blocks.0", "layers.0"), tap_key("blocks.1", "layers.1")}
    data = json.loads((tmp_path / "mapping.json").read_text())
    assert data["guide_taps"] == GUIDE and [p["guide"] for p in data["pairs"]] == ["blocks.0", "blocks.1"]
    svg = (tmp_path / "mapping.svg").read_text()
    assert "(no term)" in svg and "w=0.5" in svg  # the render marks norm and writes the weights


# ---------------------------------------------------------------- errors: one line, naming the entry


@pytest.mark.parametrize(("pairs", "fragments"), [
    (None, ["mapping 'explicit' needs pairs", "add mapping.pairs"]),
    ([], ["mapping.pairs must be a non-empty list", "(got [])"]),
    ("blocks.0", ["mapping.pairs must be a non-empty list", "(got 'blocks.0')"]),
    ([["blocks.0", "layers.0"], ["blocks.1"]], [("mapping.pairs[1] must be [guide_glob, target_glob] or "
                                                 "[guide_glob, target_glob, weight] (got 1 item: ['blocks.1'])"),
                                                'write mapping.pairs[1] as e.g. ["blocks.0", "layers.0", 1.0]']),
    ([["blocks.0", "layers.0", 1, 2]], ["mapping.pairs[0] must be", "(got 4 items"]),
    (["blocks.0"], ["mapping.pairs[0] must be", "(got a str: 'blocks.0')"]),
    ([[0, "layers.0"]], ["mapping.pairs[0]: the guide glob must be a non-empty string (got 0)", "quote the guide"]),
    ([["blocks.0", None]], ["mapping.pairs[0]: the target glob must be a non-empty string (got None)"]),
    ([["blocks.0", "layers.0", -0.5]], ["mapping.pairs[0]: the weight must be a finite number ≥ 0 (got -0.5)",
                                        "make the third item of mapping.pairs[0] a number such as 1.0"]),
    ([["blocks.0", "layers.0", float("nan")]], ["mapping.pairs[0]: the weight must be a finite number ≥ 0 (got nan)"]),
    ([["blocks.0", "layers.0", float("inf")]], ["the weight must be a finite number ≥ 0 (got inf)"]),
    ([["blocks.0", "layers.0", "1.0"]], ["the weight must be a finite number ≥ 0 (got '1.0')"]),
    ([["blocks.0", "layers.0", True]], ["the weight must be a finite number ≥ 0 (got True)"]),
])
def test_bad_option_shapes(pairs, fragments):
    msg = error(pairs)
    for fragment in fragments:
        assert fragment in msg, msg


def test_an_unknown_option_is_refused():
    with pytest.raises(pairgraph.PairgraphError, match=r"mapping 'explicit' rejected its options \['pair', 'pairs'\]"):
        build_mapping("explicit", graph(GUIDE), graph(TARGET), pairs=[["norm", "layers.0"]], pair=1)


def test_a_glob_matching_no_tap_names_the_side_and_suggests():
    msg = error([["blocks.0", "layers.0"], ["blok.1", "layers.1"]])
    assert msg == ("mapping.pairs[1]: guide glob 'blok.1' matches no guide tap — fix: did you mean 'blocks.1' or "
                   "'blocks.0'?")
    msg = error([["blocks.0", "layer.1"]])
    assert msg.startswith("mapping.pairs[0]: target glob 'layer.1' matches no target tap — fix: did you mean 'layers.1'")
    # nothing close: the first few tap names
    msg = error([["zzz", "layers.0"]], guide=[f"blocks.{i}" for i in range(9)])
    assert msg.endswith("fix: use one of the guide taps: blocks.0, blocks.1, blocks.2, blocks.3, blocks.4, blocks.5, "
                        "… (3 more)")
    # sides swapped: the glob matches the other network's taps
    msg = error([["layers.*", "blocks.*"]])
    assert "guide glob 'layers.*' matches no guide tap" in msg and "it matches target taps" in msg and "guide first" in msg


def test_a_count_mismatch_names_both_counts_and_the_taps():
    guide = [f"blocks.{i}" for i in range(6)]
    msg = error([["blocks.*", "layers.*"]], guide=guide)
    assert msg.startswith("mapping.pairs[0]: guide glob 'blocks.*' matches 6 taps (blocks.0, blocks.1, blocks.2, "
                          "blocks.3, … (2 more)) but target glob 'layers.*' matches 2 (layers.0, layers.1)")
    assert "split the entry into groups of equal size" in msg


def test_a_pair_made_twice_is_an_error_not_merged():
    msg = error([["blocks.*", "layers.*"], ["norm", "layers.1"], ["blocks.1", "layers.*", 2.0]])
    assert msg.startswith("mapping.pairs[0] and mapping.pairs[2] both pair guide tap 'blocks.1' with target tap "
                          "'layers.1'")


# ---------------------------------------------------------------- specs in YAML, the CLI


def write_spec(tmp_path, pairs) -> str:
    path = tmp_path / "explicit.yaml"
    path.write_text(yaml.safe_dump(tiny(pairs), sort_keys=False))
    return str(path)


def test_validate_and_compile_give_the_same_one_line_error(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path, [["blocks.*", "layers.*"], ["blocks.0", "layer.0", 2]])
    errors = []
    for cmd in (["validate", spec], ["compile", spec, "-o", str(tmp_path / "out"), "--no-render"]):
        code, _out, err = run_cli(cmd, capsys, monkeypatch)
        assert code == 2 and "Traceback" not in err
        errors.append(" ".join(err.split()))
    assert errors[0] == errors[1]
    assert errors[0] == ("error: mapping.pairs[1]: target glob 'layer.0' matches no target tap — fix: did you mean "
                         "'layers.0' or 'layers.1'?")
    assert not (tmp_path / "out").exists()  # compile stopped before writing anything


def test_a_yaml_spec_with_an_explicit_mapping_validates_and_compiles(tmp_path, capsys, monkeypatch):
    path = tmp_path / "explicit.yaml"
    path.write_text("""\
name: tiny_explicit
task: {kind: copy_paste, length: [2, 4], size: 400}
guide: {model: transformer_decoder, args: {preset: cpu, num_layers: 2, d_model: 32}, layers: {include: ["blocks.*", norm]}}
target: {model: rnn, args: {num_layers: 2, hidden: 32}}
mapping:
  kind: explicit
  pairs:
    - [blocks.0, layers.0, 0.5]
    - [norm, "layers.*"]
train: {batch_size: 8, steps: 1}
""")
    code, out, _ = run_cli(["validate", str(path)], capsys, monkeypatch)
    assert code == 0 and "3 pairs (explicit)" in " ".join(out.split())
    code, out, _ = run_cli(["compile", str(path), "-o", str(tmp_path / "out"), "--no-render"], capsys, monkeypatch)
    assert code == 0 and "1 guide tap without a term" in " ".join(out.split())
    data = json.loads((tmp_path / "out" / "mapping.json").read_text())
    assert [(p["guide"], p["target"], p["weight"]) for p in data["pairs"]] == [
        ("blocks.0", "layers.0", 0.5), ("norm", "layers.0", 1.0), ("norm", "layers.1", 1.0)]
    assert data["kind"] == "explicit" and len(data["info"]["entries"]) == 2
    assert "('norm', 'layers.1', 1.0)" in (tmp_path / "out" / "guided_pair.py").read_text()
