"""The drop-in GuidanceLoss: hooks capture the target's taps during the user's own forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import pairgraph
from pairgraph.compiler.build import build_root
from pairgraph.zoo import build_model


def test_guidance_loss_in_a_plain_training_loop():
    torch.manual_seed(0)
    guide = build_model("resnet18", {"preset": "cpu"}, {"num_classes": 10})
    target = build_model("deep_fcn", {"num_blocks": 4, "width": 64}, {"num_classes": 10})
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    guidance = pairgraph.GuidanceLoss(guide, target, example_input=x[:4])
    assert len(guidance.pairs) == 40  # every ResNet-18 conv/bn tap is mapped
    opt = torch.optim.Adam(target.parameters(), lr=1e-3)
    before = None
    for _ in range(15):
        logits = target(x)  # the hooks capture the taps; no second forward
        g = guidance(x)
        loss = F.cross_entropy(logits, y) + g
        before = before if before is not None else g.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in guide.parameters())
    target(x)
    assert guidance(x).item() < before


def test_guidance_loss_matches_compiled_pair(tmp_path):
    spec = {"name": "m", "task": {"kind": "image_classification", "dataset": "cifar10"},
            "guide": {"model": "resnet18"}, "target": {"model": "deep_fcn", "args": {"num_blocks": 3, "width": 32}}}
    pair = pairgraph.compile(spec, tmp_path, render=False).build()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    out = pair(x, y, 0)
    pair_spec = pairgraph.load_spec(tmp_path / "spec.yaml").resolved()
    task = pairgraph.tasks.get_task(pair_spec["task"])
    guide_root = build_root(pair_spec, "guide", task)  # same seeds → same weights as the pair
    target_root = build_root(pair_spec, "target", task)
    guide_root.eval()
    guidance = pairgraph.GuidanceLoss(guide_root, target_root, example_input=x)
    target_root(x)
    torch.testing.assert_close(guidance(x), out.guidance_loss, rtol=1e-5, atol=1e-5)


def test_guidance_loss_requires_a_target_forward_first():
    guide = build_model("deep_fcn", {"num_blocks": 2, "width": 16}, {})
    target = build_model("deep_fcn", {"num_blocks": 2, "width": 16}, {})
    guidance = pairgraph.GuidanceLoss(guide, target, example_input=torch.randn(4, 3, 32, 32))
    try:
        guidance(torch.randn(4, 3, 32, 32))
    except pairgraph.PairgraphError as e:
        assert "call target(x) before guidance(x)" in str(e)
    else:
        raise AssertionError("expected a PairgraphError")
