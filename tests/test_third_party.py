"""Models a researcher already uses: timm's, and their own factories (issue #19, first part)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import pairgraph
from pairgraph.compiler.build import build_root
from pairgraph.tasks import get_task

timm = pytest.importorskip("timm")

TASK = {"kind": "image_classification", "dataset": "cifar10", "num_classes": 10, "image_size": [32, 32]}
TARGET = {"model": "deep_fcn", "args": {"preset": "cpu", "num_blocks": 4, "width": 64}}


def _spec(guide: dict, **extra) -> dict:
    return {"name": "third", "task": TASK, "guide": guide, "target": TARGET, "train": {"batch_size": 16}, **extra}


@pytest.mark.parametrize(("name", "args", "expected"), [
    ("resnet18", {}, ["conv1", "bn1", "layer1.0.conv1"]),
    ("vit_tiny_patch16_224", {"patch_size": 8}, ["patch_embed.proj", "blocks.0", "blocks.1"]),
    ("convnext_atto", {}, ["stem.0", "stem.1", "stages.0.blocks.0", "stages.0.blocks.1"]),  # stem.1: LayerNorm2d
])
def test_timm_models_compile_with_the_layers_a_person_would_choose(name, args, expected, tmp_path):
    cp = pairgraph.compile(_spec({"model": f"timm:{name}", "args": args}), tmp_path, render=False, notify=None)
    names = cp.guide.names
    assert names[: len(expected)] == expected
    assert not any(n.startswith("head") or n == "fc" for n in names)  # the classifier head is never tapped
    if name.startswith("vit"):
        assert names[1:13] == [f"blocks.{i}" for i in range(12)] and names[-1] == "norm"  # whole blocks
    # the generated network computes what the eager timm model computes
    task = get_task(cp.spec.task)
    root = build_root(cp.spec.resolved(), "guide", task).eval()
    generated = cp.module.Guide(build_root(cp.spec.resolved(), "guide", task)).eval()
    x = task.example_input(2, device="cpu")
    with torch.no_grad():
        out, taps = generated(x)
        torch.testing.assert_close(out, root(x))
    assert set(taps) == set(names)


def test_timm_guide_trains_and_the_guidance_loss_falls(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 48), ("test", 8)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    spec = _spec({"model": "timm:vit_tiny_patch16_224", "args": {"patch_size": 8, "depth": 4}},
                 task={"kind": "image_classification", "dataset": f"folder:{root}", "val_size": 8},
                 train={"batch_size": 16, "steps": 30, "eval_every": 30, "lr": 1e-3})
    summary = pairgraph.compile(spec, tmp_path / "b", render=False, notify=None).train(
        runs_dir=tmp_path / "runs", run_id="t", progress=False)
    steps = [json.loads(ln) for ln in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    guidance = [r["guidance_loss"] for r in steps if "guidance_loss" in r]
    assert sum(guidance[-5:]) / 5 < sum(guidance[:5]) / 5


def test_an_unknown_timm_model_gets_did_you_mean(tmp_path):
    with pytest.raises(pairgraph.PairgraphError, match="unknown timm model 'vit_tiny_patch16_22' — fix: did you mean"):
        pairgraph.compile(_spec({"model": "timm:vit_tiny_patch16_22"}), tmp_path, render=False, notify=None)


def test_a_missing_optional_dependency_names_the_install_command(monkeypatch, tmp_path):
    import importlib

    real = importlib.import_module

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_timm)
    with pytest.raises(pairgraph.PairgraphError, match=r"needs timm, which is not installed — fix: pip install "
                                                       r"'pairgraph\[timm\]'"):
        pairgraph.compile(_spec({"model": "timm:resnet18"}), tmp_path, render=False, notify=None)


FACTORY = '''
import torch.nn as nn

def build(**kwargs):
    """A factory that takes **kwargs: it must receive the task's arguments."""
    seen = sorted(kwargs)
    assert seen == ["image_size", "in_channels", "num_classes"], seen
    h, w = kwargs["image_size"]
    return nn.Sequential(nn.Flatten(), nn.Linear(kwargs["in_channels"] * h * w, 32), nn.ReLU(),
                         nn.Linear(32, kwargs["num_classes"]))
'''


def test_a_factory_beside_the_spec_is_found_from_any_folder_and_gets_the_task_arguments(tmp_path):
    """Through the console script (whose sys.path has neither the working directory nor the spec's folder)."""
    specs = tmp_path / "project"
    specs.mkdir()
    (specs / "mymodels.py").write_text(FACTORY)
    spec = _spec({"model": "resnet18", "args": {"preset": "cpu"}})
    spec["target"] = {"model": "mymodels:build"}
    (specs / "pair.yaml").write_text(yaml.safe_dump(spec))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = Path(sys.executable).with_name("pairgraph")
    proc = subprocess.run([str(script), "validate", str(specs / "pair.yaml")], cwd=elsewhere, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "mymodels:build" in " ".join(proc.stdout.split())


def test_weights_pretrained_uses_timms_own_loading_code_offline(tmp_path):
    """timm's real pretrained path (create_model(pretrained=True)), pointed at a local file instead of the hub."""
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.nn.init.constant_(source.conv1.weight, 0.25)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    guide = {"model": "timm:resnet18", "weights": "pretrained", "args": {"pretrained_cfg_overlay": {"file": str(path)}}}
    cp = pairgraph.compile(_spec(guide), tmp_path / "b", render=False, notify=None)
    pair = cp.build()
    assert torch.equal(pair.guide.conv1.weight, source.conv1.weight)
    assert torch.equal(pair.guide.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    # timm re-initialises a classifier whose size differs from its pretrained config's (1000 classes): the head is
    # the task's, the body the checkpoint's
    assert pair.guide.fc.weight.shape == (10, 512)


def test_weights_pretrained_is_refused_for_a_model_without_its_own_weights(tmp_path):
    spec = _spec({"model": "resnet18", "args": {"preset": "cpu"}, "weights": "pretrained"})
    cp = pairgraph.compile(spec, tmp_path / "b", render=False, notify=None)
    with pytest.raises(pairgraph.PairgraphError, match="has no pretrained weights of its own"):
        cp.build()


@pytest.mark.parametrize(("name", "args", "levels"), [
    ("resnet18", {}, ["act1", "layer1", "layer2", "layer3", "layer4"]),
    ("vit_tiny_patch16_224", {"patch_size": 8, "depth": 3}, ["blocks.0", "blocks.1", "blocks.2"]),
    ("convnext_atto", {}, ["stages.0", "stages.1", "stages.2", "stages.3"]),
])
def test_the_timm_provider_taps_forward_intermediates_feature_levels(name, args, levels, tmp_path):
    guide = {"model": f"timm:{name}", "args": args, "layers": {"provider": "timm"}}
    cp = pairgraph.compile(_spec(guide), tmp_path, render=False, notify=None)
    assert cp.guide.method == "timm" and cp.guide.names == levels  # timm's own levels; never the head
    assert "Guide = intermediates(" in (cp.out_dir / "guided_pair.py").read_text()
    task = get_task(cp.spec.task)
    root = build_root(cp.spec.resolved(), "guide", task).eval()
    generated = cp.module.Guide(build_root(cp.spec.resolved(), "guide", task)).eval()
    x = task.example_input(3, device="cpu")
    with torch.no_grad():
        out, taps = generated(x)
        torch.testing.assert_close(out, root(x))
        _, expected = root.forward_intermediates(x)
    assert list(taps) == levels
    for level, act in zip(levels, expected, strict=True):
        torch.testing.assert_close(taps[level], act)
    assert set(generated.state_dict()) == set(root.state_dict())
    pair = cp.build()
    y = torch.zeros(3, dtype=torch.long)
    assert torch.isfinite(pair(x, y).guidance_loss)


def test_auto_falls_back_to_forward_intermediates_when_fx_fails_and_says_so(tmp_path, monkeypatch):
    from pairgraph.core import trace as trace_mod

    def no_fx(*args, **kwargs):
        raise TypeError("symbolically traced variables cannot be used as inputs to control flow")

    monkeypatch.setitem(trace_mod.PROVIDERS, "fx", no_fx)
    said = []
    cp = pairgraph.compile(_spec({"model": "timm:resnet18"}), tmp_path, render=False, notify=said.append)
    assert cp.guide.method == "timm" and cp.target.method == "hooks"
    assert any("falling back to timm's forward_intermediates" in s for s in said), said
    with pytest.raises(pairgraph.PairgraphError, match="torch.fx cannot trace the guide .* — fix: set guide.layers.provider: auto"):
        pairgraph.compile(_spec({"model": "timm:resnet18", "layers": {"provider": "fx"}}), tmp_path / "b",
                          render=False, notify=None)


def test_the_timm_provider_on_a_model_without_it_is_one_line(tmp_path):
    with pytest.raises(pairgraph.PairgraphError, match="has no forward_intermediates/feature_info — fix: set "
                                                       "guide.layers.provider to auto, fx or hooks"):
        pairgraph.compile(_spec({"model": "resnet18", "args": {"preset": "cpu"}, "layers": {"provider": "timm"}}),
                          tmp_path, render=False, notify=None)


@pytest.mark.parametrize(("name", "args", "method"), [
    ("regnetx_002", {}, "fx"),  # head.fc reaches the logits through a flatten module
    # two heads, averaged in eval mode and both returned in training mode: fx's graph depends on the mode
    ("levit_128s", {}, "timm"),
    ("eva02_tiny_patch14_224", {"patch_size": 8}, "fx"),  # its EvaBlocks kept whole: fx captures no constant
])
def test_unseen_timm_models_tap_no_head_and_only_batch_first_activations(name, args, method, tmp_path):
    cp = pairgraph.compile(_spec({"model": f"timm:{name}", "args": args}), tmp_path, render=False, notify=None)
    assert cp.guide.method == method
    assert not any(n.startswith("head") for n in cp.guide.names), cp.guide.names[-4:]
    pair = cp.build()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out, taps = pair.guide(x)
    assert out.shape == (3, 10) and all(a.shape[0] == 3 for a in taps.values())
