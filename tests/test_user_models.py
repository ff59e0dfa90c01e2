"""User code and user models entering pairgraph: nothing of theirs is changed, failures are one line."""

from __future__ import annotations

import torch
from torch import nn

import pairgraph


def _bn_net(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(6, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.Linear(width, 3))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_guidance_loss_leaves_a_training_mode_guide_and_target_untouched():
    torch.manual_seed(0)
    guide, target = _bn_net(), _bn_net(16)
    guide.train()
    target.train()
    before_g, before_t = _snapshot(guide), _snapshot(target)
    x = torch.randn(32, 6)
    rng = torch.get_rng_state()
    guidance = pairgraph.GuidanceLoss(guide, target, example_input=x[:8])
    for name, value in guide.state_dict().items():
        assert torch.equal(value, before_g[name]), name  # num_batches_tracked too
    for name, value in target.state_dict().items():
        assert torch.equal(value, before_t[name]), name
    assert target.training and all(m.training for m in target.modules())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout in the trace drew no random numbers of the caller's
    loss = torch.nn.functional.cross_entropy(target(x), torch.randint(0, 3, (32,))) + guidance(x)
    loss.backward()
    assert torch.isfinite(loss)


def test_compiling_a_spec_twice_gives_the_same_module(tmp_path):
    from tiny_specs import copy_paste_pair

    spec = copy_paste_pair({"batch_size": 16})
    a = pairgraph.compile(spec, tmp_path / "a", render=False, notify=None)
    b = pairgraph.compile(spec, tmp_path / "b", render=False, notify=None)
    assert (tmp_path / "a" / "guided_pair.py").read_text().split("\n", 3)[3] == \
        (tmp_path / "b" / "guided_pair.py").read_text().split("\n", 3)[3]
    assert a.correspondence.pairs == b.correspondence.pairs


class _DictOut(nn.Module):
    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return {"logits": self.body(x)}


def dict_model(**kwargs) -> nn.Module:
    return _DictOut(**kwargs)


def test_a_forward_returning_a_dict_is_refused_at_compile_in_one_line(tmp_path, monkeypatch):
    """It once compiled, then crashed in training with AttributeError, leaving an incomplete run."""
    import pytest

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    spec = {"name": "dictout", "task": {"kind": "image_classification", "dataset": "cifar10", "num_classes": 10,
                                        "image_size": [32, 32]},
            "guide": {"model": "resnet18", "args": {"preset": "cpu"}},
            "target": {"model": "test_user_models:dict_model"}}
    with pytest.raises(pairgraph.PairgraphError, match="target 'test_user_models:dict_model' returns a dict from "
                                                        "forward.* fix: wrap it so forward returns the logits tensor"):
        pairgraph.compile(spec, tmp_path / "b", render=False, notify=None)
    assert not (tmp_path / "b").exists()


def test_a_non_utf8_text_file_is_one_line_naming_the_byte(tmp_path):
    import pytest

    from pairgraph.tasks import get_task

    path = tmp_path / "latin.txt"
    path.write_bytes("hello café world\n".encode("latin-1") * 50)
    task = get_task({"kind": "language_modeling", "source": str(path), "tokenizer": "char", "context": 4})
    with pytest.raises(pairgraph.PairgraphError, match=r"latin.txt is not UTF-8 text \(byte 9 is 0xe9\) — fix: convert"):
        task.datasets(0)
