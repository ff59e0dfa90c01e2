"""The compiler half: tracing, mappers, codegen (fx == eager for every zoo model), hook fallback."""

from __future__ import annotations

import ast
import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import pairgraph
from pairgraph.compiler.build import build_root
from pairgraph.compiler.mapping import build_mapping, uniform_indices
from pairgraph.config import LayerSelection
from pairgraph.core.trace import trace
from pairgraph.tasks import data_root
from pairgraph.zoo import MODELS, build_model

ROOT = Path(__file__).resolve().parents[1]


def test_uniform_indices_algorithm1():
    # Algorithm 1 with Python's round (half to even), as the published code computes it.
    assert uniform_indices(21, 50) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22, 24, 27, 29, 32, 34, 37, 39, 42, 44, 47, 49]
    assert uniform_indices(1, 7) == [0]  # one guide layer: step 1, i = 0
    assert uniform_indices(4, 4) == [0, 1, 2, 3]
    assert uniform_indices(5, 4) == [0, 1, 2, 2, 3]  # 1.5 → 2, 2.25 → 2
    assert uniform_indices(3, 1) == [0, 0, 0]


def test_uniform_paper_example_resnet18_to_50_layer_fcn():
    """Paper §3.2: ResNet-18 → 50-layer FCN maps every conv layer to every second or third linear layer."""
    with torch.device("meta"):
        guide = build_model("resnet18", {"preset": "paper"}, {"num_classes": 1000})
        target = build_model("deep_fcn", {"preset": "paper"}, {"image_size": (224, 224), "num_classes": 1000})
    x = torch.empty(2, 3, 224, 224, device="meta")
    # the published code taps Conv2d, Linear and AdaptiveAvgPool2d and drops the last (the head)
    g = trace(guide, x, LayerSelection(types=["Conv2d", "Linear", "AdaptiveAvgPool2d"]), "guide")
    t = trace(target, x, LayerSelection(types=["Linear"]), "target")
    assert (len(g), len(t)) == (21, 50)
    assert t.taps[0].shape == (2, 2048) and target.blocks[0].linear.in_features == 150528
    corr = build_mapping("uniform", g, t)
    idx = [t.names.index(p[1]) for p in corr.pairs]
    assert idx == uniform_indices(21, 50)
    assert [p[0] for p in corr.pairs] == g.names  # no guide layer dropped
    gaps = {b - a for a, b in itertools.pairwise(idx)}
    assert gaps == {2, 3}


def test_depth_mapper_downsample_shares_block_depth():
    with torch.device("meta"):
        guide = build_model("resnet18", {}, {})
    g = trace(guide, torch.empty(2, 3, 32, 32, device="meta"), LayerSelection(), "guide")
    assert g["layer2.0.downsample.0"].depth == g["layer2.0.conv1"].depth
    assert ("layer2.0.downsample.1", "layer2.1.conv1") in g.graph.edges
    corr = build_mapping("depth", g, g)  # a network mapped onto itself: equal depths, ties → earlier tap
    assert all(g[a].depth == g[b].depth for a, b, _ in corr.pairs)
    assert {a: b for a, b, _ in corr.pairs}["layer2.0.downsample.0"] == "layer2.0.conv1"


def _task_for(entry) -> dict:
    if entry.input == "image":
        return {"kind": "image_classification", "dataset": "cifar10"}
    if "classifier" in entry.name:
        return {"kind": "parity", "length": [2, 12], "size": 100}
    return {"kind": "copy_paste", "length": [2, 5], "size": 100}


@pytest.mark.parametrize("name", MODELS.names())
def test_generated_network_equals_eager(name, tmp_path):
    entry = MODELS.get(name)
    spec = {"name": f"t_{name}", "task": _task_for(entry), "guide": {"model": name, "args": {"preset": "cpu"}},
            "target": {"model": name, "args": {"preset": "cpu"}}, "train": {"batch_size": 8, "seed": 3}}
    cp = pairgraph.compile(spec, tmp_path, render=False)
    assert cp.target.method == "fx"
    pair = cp.build()
    task = pairgraph.tasks.get_task(cp.spec.task)
    x = task.example_input(4, device="cpu")
    if not x.is_floating_point():
        x = torch.randint(1, 3 if "classifier" in name else 6, x.shape)
    root = build_root(cp.spec.resolved(), "target", task)
    root.eval()
    pair.target.eval()
    with torch.no_grad():
        ref = root(x)
        out, taps = pair.target(x)
    torch.testing.assert_close(out, ref)
    assert set(taps) == set(cp.target.names)
    for t in cp.target.taps:
        assert taps[t.name].shape[0] == 4 and tuple(taps[t.name].shape[1:]) == t.shape[1:]
    pair.train()
    y = torch.randint(0, 2, (4,)) if "classifier" in name else None
    if y is None and entry.input == "image":
        y = torch.randint(0, 10, (4,))
    if y is None:
        y = torch.full(x.shape, -100)
        y[:, 3] = 2
    res = pair(x, y, 0)
    res.loss.backward()
    grads = [p.grad for p in pair.target.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in pair.guide.parameters())
    assert res.terms and all(0 <= v.item() <= 1 + 1e-5 for v in res.terms.values())


def test_compile_writes_outputs_and_module_is_importable(tmp_path):
    cp = pairgraph.compile(ROOT / "specs" / "rnn_from_transformer.yaml", tmp_path)
    for f in ("guided_pair.py", "mapping.json", "mapping.png", "mapping.svg", "spec.yaml"):
        assert (tmp_path / f).exists(), f
    mapping = json.loads((tmp_path / "mapping.json").read_text())
    assert len(mapping["pairs"]) == len(cp.guide) and mapping["kind"] == "uniform"
    src = (tmp_path / "guided_pair.py").read_text()
    imports = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert all(ln.split()[1].split(".")[0] in ("torch", "pairgraph") for ln in imports), imports
    assert "class Guide(TappedNetwork)" in src and "def build(" in src
    # reads like code a person wrote: no fx aliases for string annotations, no import it does not use
    assert "_Tensor_" not in src and "def forward(self, x : torch.Tensor)" in src
    tree = ast.parse(src)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    imported = {a.asname or a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)
                for a in n.names}
    assert imported <= used, imported - used


@pytest.mark.parametrize("spec", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").rglob("*.yaml")))
def test_every_spec_compiles(spec, tmp_path):
    task = pairgraph.load_spec(ROOT / spec).task
    if task.get("tokenizer") == "char" and not (data_root(None) / "tinyshakespeare.txt").exists():
        pytest.skip(f"{spec}: a character vocabulary is read from the text; {data_root(None)} is absent")
    cp = pairgraph.compile(ROOT / spec, tmp_path, render=False)
    assert len(cp.correspondence) == len(cp.guide) >= 1


def test_vit_b16_guide_to_deep_fcn_compiles(tmp_path):
    task = {"kind": "image_classification", "dataset": "folder:imagenet", "image_size": [224, 224], "num_classes": 1000}
    spec = {"name": "vit_fcn", "task": task, "guide": {"model": "torchvision:vit_b_16"},
            "target": {"model": "deep_fcn", "args": {"preset": "paper"}}}
    cp = pairgraph.compile(spec, tmp_path, render=True)
    assert cp.guide.method == "fx"
    assert any(t.type == "EncoderBlock" for t in cp.guide.taps)
    assert len(cp.correspondence) == len(cp.guide)


class Untraceable(nn.Module):
    """Data-dependent control flow defeats torch.fx."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(3 * 32 * 32, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        if h.sum() > 0:
            h = h.relu()
        return self.fc2(h)


def untraceable(num_classes: int = 10) -> nn.Module:
    return Untraceable(num_classes)


def test_hook_fallback_compiles_and_trains(tmp_path, capsys):
    spec = {"name": "hooks", "task": {"kind": "image_classification", "dataset": "cifar10"},
            "guide": {"model": "resnet18"},
            "target": {"model": f"{__name__}:untraceable", "layers": {"drop_output": False}}}
    notes = []
    cp = pairgraph.compile(spec, tmp_path, notify=notes.append)
    assert cp.target.method == "hooks" and cp.target.names == ["fc1", "fc2"]
    assert any("falling back to forward hooks" in n for n in notes)
    pair = cp.build()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    out = pair(x, y, 0)
    out.loss.backward()
    assert pair.target.root.fc1.weight.grad is not None
