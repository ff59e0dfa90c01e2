"""The mapping drawn as graphs: the layout, mapping.html's structure and data, `pairgraph inspect` (issue #31)."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

import pairgraph
from pairgraph.analysis.mapping_training import inspect_run
from pairgraph.compiler.graph_layout import block_of, layout
from pairgraph.compiler.mapping import Correspondence
from pairgraph.compiler.mapping_html import mapping_page, training_curves
from pairgraph.core.layer_graph import LayerGraph, TapPoint, finish_graph

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "specs" / "rnn_from_transformer.yaml"


def graph(names: list[str], edges: list[tuple[str, str]]) -> LayerGraph:
    return finish_graph([TapPoint(n, "Conv2d", (2, 4, 3, 3)) for n in names], edges, "fx", None, [])


def page_json(text: str) -> dict:
    found = re.search(r'<script id="pairgraph-data" type="application/json">(.*?)</script>', text, re.DOTALL)
    assert found, "no embedded data"
    return json.loads(found.group(1))


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.external = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if a.get(key):
                self.external.append((tag, a[key]))


@pytest.mark.parametrize(("name", "block"), [("layer2.0.downsample.0", "layer2.0"), ("layer2.0.conv1", "layer2.0"),
                                             ("blocks.3", ""), ("conv1", ""), ("encoder.layer.11.attention.output",
                                                                                   "encoder.layer.11")])
def test_a_tap_belongs_to_the_repeated_block_of_its_last_numbered_part(name, block):
    assert block_of(name) == block


def test_a_branch_gets_a_side_lane_and_a_residual_add_is_marked():
    # stem → a → b ; stem → shortcut ; (b + shortcut) → out: a ResNet block with a downsample
    g = graph(["stem", "b.0.a", "b.0.b", "b.0.shortcut", "out"],
              [("stem", "b.0.a"), ("b.0.a", "b.0.b"), ("stem", "b.0.shortcut"), ("b.0.b", "out"),
               ("b.0.shortcut", "out")])
    lay = layout(g)
    assert [n.lane for n in lay.nodes] == [0, 0, 0, 1, 0]
    assert [n.merge for n in lay.nodes] == [False, False, False, False, True]
    assert lay.blocks == {"b.0": (1, 3)}


def test_a_chain_of_residual_adds_draws_one_skip_per_block_not_a_fan():
    # identity blocks: each block's first tap is fed by its previous block's last tap and by everything the
    # residual stream carries (the tap graph links a tap to every tap whose output reaches it)
    names = ["stem"] + [f"l.{k}.{p}" for k in range(4) for p in ("c1", "c2")] + ["head"]
    edges = [(a, b) for a, b in itertools.pairwise(names)]
    stream = ["stem"]
    for k in range(4):
        nxt = names[names.index(f"l.{k}.c2") + 1]
        edges += [(s, nxt) for s in stream]
        stream.append(f"l.{k}.c2")
    lay = layout(graph(names, edges))
    into = {v: [u for u, w in lay.edges if w == v] for v in names}
    assert into["l.3.c1"] == ["l.1.c2", "l.2.c2"]  # the block above, and the latest of the stream before it
    assert into["head"] == ["l.2.c2", "l.3.c2"]
    assert len(lay.edges) < len(edges)


def test_compile_writes_a_self_contained_page_whose_data_matches_the_mapping(tmp_path):
    cp = pairgraph.compile(DEMO, tmp_path, notify=None)
    text = (tmp_path / "mapping.html").read_text()
    tags = Tags()
    tags.feed(text)
    assert tags.external == []  # offline: nothing loaded from anywhere
    assert {"graph", "search", "tip", "collapse", "expand", "pairgraph-data"} <= tags.ids
    assert "heatmap" not in tags.ids  # uniform measures nothing
    data = page_json(text)
    assert [n["name"] for n in data["guide"]["nodes"]] == cp.guide.names
    assert [n["name"] for n in data["target"]["nodes"]] == cp.target.names
    assert [(p["guide"], p["target"], p["weight"]) for p in data["pairs"]] == cp.correspondence.pairs
    node = data["target"]["nodes"][0]
    assert node["type"] == cp.target.taps[0].type and node["shape"] == list(cp.target.taps[0].shape[1:])
    assert data["guide"]["method"] == cp.guide.method and data["training"] is None


def test_a_learned_page_carries_the_matrix_and_each_pair_its_measured_similarity(tmp_path):
    spec = yaml.safe_load(DEMO.read_text())
    spec["mapping"] = {"kind": "learned", "batches": 1, "batch_size": 32}
    cp = pairgraph.compile(spec, tmp_path, notify=None)
    data = page_json((tmp_path / "mapping.html").read_text())
    m = cp.correspondence.info["matrix"]
    assert data["matrix"] == m
    for p, j in zip(data["pairs"], cp.correspondence.info["chosen"]):
        assert p["similarity"] == m[cp.guide.names.index(p["guide"])][j]
    assert 'id="heatmap"' in (tmp_path / "mapping.html").read_text()


def test_a_hostile_title_cannot_end_the_data_script():
    g = graph(["a", "b"], [("a", "b")])
    corr = Correspondence([("a", "b", 1.0)], "uniform", ["a", "b"], ["a", "b"])
    evil = "</script><script>alert(1)</script>"
    text = mapping_page(g, g, corr, evil)
    assert text.count("</script>") == 2 and "<script>alert" not in text
    assert page_json(text)["title"] == evil


def test_training_curves_say_when_each_pair_was_matched():
    records = [{"step": s, "terms": {"g0->t0": 1.0 - 0.3 * s, "g1->t1": 0.5}} for s in range(4)]
    records.append({"step": 4, "terms": {"g0->t0": float("nan")}})  # a NaN is not a point
    curves = training_curves(records, [("g0", "t0", 1.0), ("g1", "t1", 1.0), ("g2", "t2", 1.0)], threshold=0.2)
    pairs = {(p["guide"], p["target"]): p for p in curves["pairs"]}
    assert pairs["g0", "t0"]["steps"] == [0, 1, 2, 3] and pairs["g0", "t0"]["matched_at"] == 3
    assert pairs["g1", "t1"]["matched_at"] is None and ("g2", "t2") not in pairs


def _fake_run(tmp_path: Path) -> tuple[Path, pairgraph.CompiledPair]:
    run = tmp_path / "run"
    cp = pairgraph.compile(DEMO, run / "build", render=False, notify=None)
    (run / "spec.yaml").write_text((run / "build" / "spec.yaml").read_text())
    lines = []
    for step in range(1, 6):
        terms = {f"{g}->{t}": (0.9 if k else 0.9 / step) for k, (g, t, _) in enumerate(cp.correspondence.pairs)}
        lines.append(json.dumps({"step": step, "loss": 1.0, "guided": True, "terms": terms}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run, cp


def test_inspect_adds_the_training_curves_to_the_page_and_draws_them(tmp_path):
    run, cp = _fake_run(tmp_path)
    found = inspect_run(run, tmp_path / "out", threshold=0.2)
    data = page_json((tmp_path / "out" / "mapping.html").read_text())
    assert [p["matched_at"] for p in data["training"]["pairs"]] == [5] + [None] * (len(cp.correspondence) - 1)
    assert (tmp_path / "out" / "mapping_training.png").stat().st_size > 10_000
    assert found.pairs == len(cp.correspondence) and 'id="curves"' in (tmp_path / "out" / "mapping.html").read_text()


def test_inspect_compiles_the_spec_of_a_run_without_build_like_a_studys_stored_run(tmp_path):
    run, cp = _fake_run(tmp_path)
    shutil.rmtree(run / "build")
    found = inspect_run(run, tmp_path / "out", threshold=0.2)
    assert [(p["guide"], p["target"]) for p in found.curves["pairs"]] == [(g, t) for g, t, _ in cp.correspondence.pairs]
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "terms": {"x->y": 0.5}}) + "\n")
    with pytest.raises(pairgraph.PairgraphError, match="logged no guidance term of its mapping's 4 pairs"):
        inspect_run(run, tmp_path / "out")


def test_inspect_says_what_is_wrong_in_one_line(tmp_path, capsys, monkeypatch):
    from tiny_specs import run_cli

    run, _ = _fake_run(tmp_path)
    (run / "build" / "mapping.json").write_text('{"kind": "uniform"}')
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    cases = [([str(run)], "is not a mapping pairgraph wrote"), ([str(tmp_path / "nowhere")], "does not exist"),
             ([str(bare)], "has neither build/mapping.json nor spec.yaml"),
             ([str(run), "--threshold", "-1"], "threshold must be between 0 and 2")]
    for args, fragment in cases:
        code, _, err = run_cli(["inspect", *args], capsys, monkeypatch)
        assert code == 2 and fragment in err and "Traceback" not in err and err.count("\n") == 1
