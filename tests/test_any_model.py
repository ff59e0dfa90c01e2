"""Any model, round two (issue #33): fx that half-works, subclassed layers, the meta shortcut, input sizes,
train/eval behaviour in generated code, and taps at the right places."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import pairgraph
from pairgraph.compiler.build import build_root
from pairgraph.tasks import get_task

IMG = {"kind": "image_classification", "dataset": "cifar10", "num_classes": 10, "image_size": [32, 32]}
FCN = {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 16}}


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def _compile(tmp_path, guide, target=FCN, task=IMG, notify=None, **extra):
    spec = {"name": "any", "task": task, "guide": guide, "target": target, "train": {"batch_size": 8}, **extra}
    return pairgraph.compile(spec, tmp_path, render=False, notify=notify)


class _Small(nn.Module):
    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class TraceHostile(_Small):
    """fx fails mid-trace with an error of any type (here the one the issue saw)."""

    error: type[Exception] = NotImplementedError

    def forward(self, x):
        if isinstance(x, fx.Proxy):
            raise self.error("wrap must be called at the top level of a module")
        return super().forward(x)


class _OddError(Exception):
    pass


def trace_hostile(**kwargs) -> nn.Module:
    return TraceHostile(**kwargs)


def odd_trace_error(**kwargs) -> nn.Module:
    m = TraceHostile(**kwargs)
    m.error = _OddError
    return m


@torch.fx.wrap
def scaled(x: torch.Tensor, k: float) -> torch.Tensor:
    return x * k


class Wrapped(_Small):
    def forward(self, x):
        return self.fc(scaled(self.conv(x), 2.0).mean((2, 3)))


def wrapped(**kwargs) -> nn.Module:
    return Wrapped(**kwargs)


@pytest.mark.parametrize("ref", ["test_any_model:trace_hostile", "test_any_model:odd_trace_error"])
def test_any_fx_failure_falls_back_to_hooks_with_a_notice_naming_it(ref, tmp_path):
    said: list[str] = []
    cp = _compile(tmp_path, {"model": ref}, notify=said.append)
    assert cp.guide.method == "hooks" and cp.guide.names == ["conv"]
    cause = "NotImplementedError" if "hostile" in ref else "_OddError"
    assert any(s.startswith("notice: torch.fx cannot trace the guide") and cause in s for s in said), said


def test_an_fx_wrapped_function_in_generated_code_imports_and_matches(tmp_path):
    cp = _compile(tmp_path, {"model": "test_any_model:wrapped"})
    assert cp.guide.method == "fx" and "_symbolic_trace.wrap(" not in (tmp_path / "guided_pair.py").read_text()
    _same_in_both_modes(cp)


class WSConv(nn.Conv2d):
    """A weight-standardised convolution: a Conv2d subclass of a user's own (like timm's ScaledStdConv2d)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class SubclassedLayers(nn.Module):
    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.a = WSConv(3, 8, 3, padding=1)
        self.b = WSConv(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.b(torch.relu(self.a(x))).mean((2, 3)))


def subclassed(**kwargs) -> nn.Module:
    return SubclassedLayers(**kwargs)


def test_tap_types_match_subclasses_and_dotted_class_paths(tmp_path):
    guide = {"model": "test_any_model:subclassed"}
    assert _compile(tmp_path / "a", guide).guide.names == ["a", "b"]  # default types: WSConv is a Conv2d
    typed = {**guide, "layers": {"types": ["Conv2d"]}}
    assert _compile(tmp_path / "b", typed).guide.names == ["a", "b"]
    dotted = {**guide, "layers": {"types": ["test_any_model.WSConv"]}}
    assert _compile(tmp_path / "c", dotted).guide.names == ["a", "b"]


def test_timm_weight_standardised_convs_are_conv_taps(tmp_path):
    pytest.importorskip("timm")
    cp = _compile(tmp_path, {"model": "timm:nf_resnet26", "args": {}})
    assert sum(t.type == "ScaledStdConv2d" for t in cp.guide.taps) >= 10


class MetaHostile(_Small):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(torch.rand(1))  # reads a value: impossible on the meta device


def meta_hostile(**kwargs) -> nn.Module:
    return MetaHostile(**kwargs)


def test_a_model_that_cannot_be_built_on_the_meta_device_is_built_on_the_cpu(tmp_path):
    cp = _compile(tmp_path, {"model": "test_any_model:meta_hostile"})
    assert cp.guide.names == ["conv"]


def test_an_input_the_model_rejects_names_the_size_the_library_records(tmp_path):
    with pytest.raises(pairgraph.PairgraphError, match=r"fails on the example input of shape \(2, 3, 32, 32\).*"
                                                       r"the model expects at least 75×75 px .*299 px"):
        _compile(tmp_path, {"model": "torchvision:inception_v3", "args": {"aux_logits": False, "init_weights": False}})


def test_torchvision_models_get_only_the_arguments_they_take(tmp_path):
    cp = _compile(tmp_path, {"model": "torchvision:swin_t"})  # takes no image_size
    assert cp.guide.names and not any(n.startswith("head") for n in cp.guide.names)


class ModeDependent(nn.Module):
    """Functional dropout and an auxiliary head, both switched on ``self.training`` in forward."""

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.aux1 = nn.Linear(8, num_classes)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        out = self.fc(F.dropout(h, 0.5, self.training))
        return (out, self.aux1(h)) if self.training else out


def mode_dependent(**kwargs) -> nn.Module:
    return ModeDependent(**kwargs)


def _same_in_both_modes(cp, side: str = "guide") -> None:
    """The generated network computes what the original computes, in eval and in training mode (same RNG)."""
    task = get_task(cp.spec.task)
    root = build_root(cp.spec.resolved(), side, task)
    generated = getattr(cp.module, side.capitalize())(root)
    x = task.example_input(4, device="cpu").normal_()
    for training in (False, True):
        generated.train(training)
        root.train(training)
        with torch.no_grad():
            torch.manual_seed(0)
            out, _ = generated(x)
            torch.manual_seed(0)
            ref = root(x)
        ref = ref if isinstance(ref, torch.Tensor) else ref[0]
        torch.testing.assert_close(out, ref, msg=f"training={training}")


def test_generated_code_keeps_train_and_eval_behaviour_of_a_user_model(tmp_path):
    said: list[str] = []
    cp = _compile(tmp_path, {"model": "test_any_model:mode_dependent"}, notify=said.append)
    assert cp.guide.method == "hooks" and any("training and eval mode" in s for s in said), said
    assert not any("aux" in n for n in cp.guide.names)
    _same_in_both_modes(cp)


@pytest.mark.parametrize(("ref", "args"), [
    ("timm:resnet18", {"drop_rate": 0.3, "drop_path_rate": 0.2}),  # functional dropout, stochastic depth
    ("torchvision:googlenet", {"aux_logits": True, "init_weights": False, "transform_input": False}),  # aux heads
    ("torchvision:convnext_tiny", {"stochastic_depth_prob": 0.3}),  # fx.wrap'ed stochastic depth
])
def test_generated_code_keeps_dropout_drop_path_and_aux_heads_as_in_the_original(ref, args, tmp_path):
    pytest.importorskip("timm")
    cp = _compile(tmp_path, {"model": ref, "args": args})
    assert not any("aux" in n.lower() for n in cp.guide.names), cp.guide.names
    _same_in_both_modes(cp)


class DataDependent(nn.Module):
    """Takes another path for dark images (the issue's ``KeyError: 'dark.0'``)."""

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dark = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
        self.light = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        h = self.stem(x)
        h = self.dark(h) if float(x.mean()) < 0.1 else self.light(h)
        return self.fc(h.mean((2, 3)))


def data_dependent(**kwargs) -> nn.Module:
    return DataDependent(**kwargs)


def test_a_data_dependent_model_is_tapped_only_where_every_input_passes(tmp_path):
    said: list[str] = []
    cp = _compile(tmp_path, {"model": "test_any_model:data_dependent"}, notify=said.append)
    assert cp.guide.method == "hooks" and cp.guide.names == ["stem"]
    assert any("runs other modules for other inputs" in s for s in said), said
    pair = cp.build()
    for x in (torch.zeros(4, 3, 32, 32), torch.ones(4, 3, 32, 32)):  # both paths
        with torch.no_grad():
            _, taps = pair.guide(x)
        assert set(taps) == {"stem"}


class EmbeddingAndLogits(_Small):
    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        return h, self.fc(h)


def embedding_and_logits(**kwargs) -> nn.Module:
    return EmbeddingAndLogits(**kwargs)


def test_several_outputs_name_output_in_the_fix(tmp_path):
    with pytest.raises(pairgraph.PairgraphError, match=r"forward returns several tensors.*fix: name the logits with "
                                                       r"guide.output: 1"):
        _compile(tmp_path, {"model": "test_any_model:embedding_and_logits"})
    assert _compile(tmp_path / "b", {"model": "test_any_model:embedding_and_logits", "output": 1}).guide.names


def test_timm_transformer_blocks_are_tapped_whole(tmp_path):
    pytest.importorskip("timm")
    cp = _compile(tmp_path, {"model": "timm:coat_lite_tiny", "args": {}})
    names = cp.guide.names
    assert [n for n in names if "serial_blocks" in n] == [f"serial_blocks{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    assert not any("qkv" in n or n.startswith("head") for n in names), names


def small_swin(num_classes: int = 10, **kwargs) -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer([4, 4], 16, [2, 2], [1, 2], [2, 2], num_classes=num_classes)


def small_maxvit(num_classes: int = 10, **kwargs) -> nn.Module:
    from torchvision.models.maxvit import MaxVit

    return MaxVit((32, 32), 8, 2, [8, 16], [2, 1], 4, 0.1, num_classes=num_classes)


@pytest.mark.parametrize(("ref", "blocks"), [
    ("test_any_model:small_swin", ["features.1.0", "features.1.1", "features.3.0", "features.3.1"]),
    ("test_any_model:small_maxvit", ["blocks.0.layers.0", "blocks.0.layers.1", "blocks.1.layers.0"])])
def test_torchvision_and_user_transformer_blocks_are_tapped_whole(ref, blocks, tmp_path):
    """Blocks of no known block list (torchvision's Swin and MaxViT classes, built as a user's model) are found as
    the repeated children with attention, and tapped whole, not at their norms, MLPs and attentions."""
    names = _compile(tmp_path, {"model": ref}).guide.names
    assert [n for n in names if any(n.startswith(b.rsplit(".", 1)[0]) for b in blocks)] == blocks, names


def test_transformers_poolers_and_embedding_norms_are_not_taps(tmp_path):
    pytest.importorskip("transformers")
    albert = {"model": "hf:albert", "args": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                                             "intermediate_size": 64, "embedding_size": 16}}
    task = {"kind": "parity", "length": [4, 8], "size": 200}
    cp = _compile(tmp_path, albert, {"model": "rnn_classifier", "args": {"hidden": 16}}, task)
    names = cp.guide.names
    assert names[0].startswith("albert.encoder.albert_layer_groups"), names
    assert not any("pooler" in n or "embeddings" in n for n in names), names


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_encoder_decoders_are_refused_in_one_line_naming_the_encoder_alone(model_type, tmp_path):
    pytest.importorskip("transformers")
    task = {"kind": "parity", "length": [4, 8], "size": 200}
    with pytest.raises(pairgraph.PairgraphError) as e:
        _compile(tmp_path, {"model": f"hf:{model_type}"}, {"model": "rnn_classifier", "args": {"hidden": 16}}, task)
    assert "is an encoder–decoder; pairgraph does not support encoder–decoders" in str(e.value)
    assert "fix: use the encoder alone" in str(e.value) and "\n" not in str(e.value)
