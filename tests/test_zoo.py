"""The zoo's contract: every model traces with fx (eager == traced), builds and shape-propagates on
the meta device, trains, has paper/cpu presets of the paper's sizes, and the untrainable targets
really are what the paper says (no residuals, pad-invariant parity models)."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pairgraph.errors import PairgraphError
from pairgraph.zoo import MODELS, build_model, list_models

EXPECTED = {
    "deep_fcn",
    "wide_fcn",
    "resnet18",
    "resnet50",
    "deep_convnet",
    "plain_resnet18",
    "rnn",
    "lstm",
    "transformer_decoder",
    "transformer_classifier",
    "rnn_classifier",
    "vit",
}
NAMES = list_models()
B, T, VOCAB, NUM_CLASSES = 4, 12, 16, 10
IMAGE_DEFAULTS = {"num_classes": NUM_CLASSES, "in_channels": 3, "image_size": (32, 32)}
TOKEN_DEFAULTS = {"vocab_size": VOCAB, "max_len": 64}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and far steadier on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def defaults(name: str) -> dict:
    return IMAGE_DEFAULTS if MODELS.get(name).input == "image" else TOKEN_DEFAULTS


def is_classifier(name: str) -> bool:
    return MODELS.get(name).input == "image" or "num_classes" in (MODELS.get(name).accepts() or ())


def example_input(name: str, device: str = "cpu") -> torch.Tensor:
    if MODELS.get(name).input == "image":
        return torch.randn(B, 3, 32, 32, device=device)
    # tokens 0/1 only: valid in every vocabulary and never the classifiers' pad id (2)
    return torch.randint(0, 2, (B, T), device=device)


def expected_shape(name: str, model: nn.Module) -> tuple[int, ...]:
    if MODELS.get(name).input == "image":
        return (B, NUM_CLASSES)
    if is_classifier(name):
        return (B, model.head.out_features)
    return (B, T, VOCAB)


def build(name: str, preset: str = "cpu", **args) -> nn.Module:
    return build_model(name, {"preset": preset, **args}, defaults(name))


def test_registry_has_every_model_with_paper_and_cpu_presets():
    assert EXPECTED <= set(NAMES)
    for name in NAMES:
        assert {"paper", "cpu"} <= set(MODELS.get(name).presets), name
    assert {"copy_paste", "lm"} <= set(MODELS.get("rnn").presets)
    assert {"copy_paste", "lm"} <= set(MODELS.get("lstm").presets)
    assert {"copy_paste", "lm"} <= set(MODELS.get("transformer_decoder").presets)


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_matches_eager(name):
    torch.manual_seed(0)
    model = build(name).eval()
    traced = fx.symbolic_trace(model)
    x = example_input(name)
    expected = model(x)
    torch.testing.assert_close(traced(x), expected)
    with torch.no_grad():  # also the inference fast paths (e.g. TransformerEncoderLayer)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_meta_build_and_shape_prop(name):
    with torch.device("meta"):
        model = build(name)
    assert all(p.is_meta for p in model.parameters())
    traced = fx.symbolic_trace(model)
    ShapeProp(traced).propagate(example_input(name, device="meta"))
    out = next(n for n in traced.graph.nodes if n.op == "output").args[0]
    assert tuple(out.meta["tensor_meta"].shape) == expected_shape(name, model)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = build(name).train()
    out = model(example_input(name))
    assert tuple(out.shape) == expected_shape(name, model)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name", NAMES)
def test_paper_preset_builds_on_meta(name):
    with torch.device("meta"):
        model = build(name, "paper")
    assert sum(p.numel() for p in model.parameters()) > 0


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_paper_sizes_fcn():
    with torch.device("meta"):
        deep = build("deep_fcn", "paper")
        wide = build("wide_fcn", "paper")
    assert len(linears(deep)) == 51 and len(deep.blocks) == 50
    assert deep.blocks[0].linear.in_features == 3072 and deep.blocks[3].linear.out_features == 2048
    expected = (3072 * 2048 + 2048) + 49 * (2048 * 2048 + 2048) + 50 * 2 * 2048 + (2048 * 10 + 10)
    assert n_params(deep) == expected  # ~212M
    assert [m.out_features for m in linears(wide)] == [8192, 8192, 8192, 10]
    assert dict(deep.named_modules()).keys() >= {"blocks.3.linear", "blocks.3.norm", "blocks.3.act", "head"}


def test_paper_sizes_resnets_and_deep_convnet():
    with torch.device("meta"):
        r18 = build_model("resnet18", {"preset": "paper", "num_classes": 1000})
        r50 = build_model("resnet50", {"preset": "paper", "num_classes": 1000})
        plain = build_model("deep_convnet", {"preset": "paper", "num_classes": 1000})
    assert n_params(r18) == 11_689_512
    assert n_params(r50) == 25_557_032
    downsample = sum(p.numel() for n, p in r50.named_parameters() if ".downsample." in n)
    assert n_params(plain) == n_params(r50) - downsample  # same convs and BNs, no shortcut
    r50_names = {n for n, _ in r50.named_modules()}
    plain_names = {n for n, _ in plain.named_modules()}
    assert plain_names == {n for n in r50_names if "downsample" not in n}
    with torch.device("meta"):  # the cpu-sized pair keeps the same one-to-one layout
        small_r50 = build("resnet50", "cpu")
        small_plain = build("deep_convnet", "cpu_resnet50")
    assert {n for n, _ in small_plain.named_modules()} == {
        n for n, _ in small_r50.named_modules() if "downsample" not in n
    }
    conv = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(conv) == 49  # ResNet-50's 49 convs + fc = 50 weight layers; the 4 shortcut convs are gone


def test_paper_sizes_sequence_models():
    with torch.device("meta"):
        rnn_cp = build("rnn", "copy_paste")
        rnn_lm = build("rnn", "lm")
        dec_cp = build("transformer_decoder", "copy_paste")
        dec_lm = build("transformer_decoder", "lm")
        parity_t = build("transformer_classifier", "paper")
        parity_r = build("rnn_classifier", "paper")
    assert [(m.hidden_size, m.nonlinearity) for m in rnn_cp.layers] == [(768, "tanh")] * 4
    assert [m.hidden_size for m in rnn_lm.layers] == [512] * 5
    assert len(dec_cp.blocks) == 4 and dec_cp.blocks[0].self_attn.num_heads == 12
    assert dec_cp.blocks[0].self_attn.embed_dim == 768 and dec_cp.blocks[0].norm_first
    assert len(dec_lm.blocks) == 4 and dec_lm.blocks[0].self_attn.num_heads == 16
    assert dec_lm.blocks[0].self_attn.embed_dim == 512
    assert len(parity_t.blocks) == 1 and parity_t.blocks[0].self_attn.num_heads == 4
    assert parity_t.blocks[0].self_attn.embed_dim == 64 and parity_t.head.out_features == 2
    assert len(parity_r.layers) == 1 and parity_r.layers[0].hidden_size == 64


def _last_block_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = model.layer4[-1].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    model(x)
    handle.remove()
    return seen["out"]


@pytest.mark.parametrize(
    ("name", "args", "last_bn"),
    [
        ("deep_convnet", {"preset": "cpu"}, "bn2"),
        ("deep_convnet", {"layers": [1, 1, 1, 1], "width_per_group": 16}, "bn3"),
        ("plain_resnet18", {"preset": "cpu"}, "bn2"),
    ],
)
def test_deep_convnet_has_no_residual(name, args, last_bn):
    torch.manual_seed(0)
    model = build_model(name, args, IMAGE_DEFAULTS).eval()
    assert not [n for n, _ in model.named_modules() if "downsample" in n]
    bn = getattr(model.layer4[-1], last_bn)
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()
        out = _last_block_output(model, torch.randn(2, 3, 32, 32))
    assert torch.count_nonzero(out) == 0
    # the same surgery on a ResNet leaves the identity path: its block output is not zero
    resnet = build_model("resnet18", {"preset": "cpu"}, IMAGE_DEFAULTS).eval()
    with torch.no_grad():
        resnet.layer4[-1].bn2.weight.zero_()
        resnet.layer4[-1].bn2.bias.zero_()
        assert torch.count_nonzero(_last_block_output(resnet, torch.randn(2, 3, 32, 32))) > 0


@pytest.mark.parametrize("name", ["rnn_classifier", "transformer_classifier"])
@pytest.mark.parametrize("grad", [True, False])
def test_classifiers_are_pad_invariant(name, grad):
    torch.manual_seed(0)
    model = build(name).eval()
    pad = model.pad_id
    lengths = [5, 9, 2, 12]
    seqs = [torch.randint(0, 2, (n,)) for n in lengths]
    padded = torch.full((len(seqs), 16), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    with torch.set_grad_enabled(grad):
        batch = model(padded)
        for i, s in enumerate(seqs):
            torch.testing.assert_close(batch[i], model(s[None])[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["transformer_decoder", "rnn", "lstm"])
def test_sequence_models_are_causal(name):
    torch.manual_seed(0)
    model = build(name).eval()
    x = torch.randint(0, VOCAB, (2, T))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % VOCAB
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_image_args_stem_and_channels():
    torch.manual_seed(0)
    fcn = build_model("deep_fcn", {"preset": "cpu", "image_size": 28, "in_channels": 1})
    assert fcn(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    net = build_model("resnet18", {"preset": "cpu", "stem": "cifar", "in_channels": 1}, {"num_classes": 7})
    assert net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, nn.Identity)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    plain = build_model("deep_convnet", {"preset": "cpu", "in_channels": 1}, IMAGE_DEFAULTS)
    assert plain.conv1.kernel_size == (7, 7) and plain.conv1.in_channels == 1
    # taps on BatchNorm outputs must not be overwritten by an in-place ReLU
    for model in (net, plain, build("resnet50")):
        assert not [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    with pytest.raises(PairgraphError, match="stem"):
        build_model("resnet18", {"stem": "tiny"})
    with pytest.raises(PairgraphError, match="block"):
        build_model("deep_convnet", {"block": "wide"})


def test_defaults_are_filtered_and_unknown_args_rejected():
    model = build_model("rnn", {"preset": "cpu"}, {"vocab_size": 20, "pad_id": 0, "max_len": 99, "num_classes": 3})
    assert model.head.out_features == 20
    with pytest.raises(PairgraphError, match="does not take"):
        build_model("rnn", {"preset": "cpu", "nhead": 4})


def test_paper_vit_is_vit_b_16():
    from torchvision.models import vit_b_16

    with torch.device("meta"):
        ours = build_model("vit", {"preset": "paper"}, {"num_classes": 1000, "image_size": (224, 224)})
        ref = vit_b_16()
    assert n_params(ours) == n_params(ref)
    assert len(ours.blocks) == 12 and ours.pos.shape == (1, 197, 768)


def test_vit_on_one_dimensional_images_uses_one_row_patches():
    model = build_model("vit", {"preset": "cpu"}, {"num_classes": 10, "in_channels": 1, "image_size": (1, 40)})
    assert model.pos.shape == (1, 11, 128)
    assert model(torch.randn(3, 1, 1, 40)).shape == (3, 10)
    with pytest.raises(PairgraphError, match="not a multiple of the patch"):
        build_model("vit", {"preset": "cpu"}, {"num_classes": 10, "image_size": (30, 30)})


@pytest.mark.parametrize("name", ["deep_fcn", "wide_fcn"])
def test_fcn_dropout_after_each_relu_and_never_a_tap(name):
    from pairgraph.config import LayerSelection
    from pairgraph.core.trace import trace

    def fcn(**args):
        with torch.device("meta"):
            return build_model(name, {"num_blocks": 3, "width": 8, **args}, IMAGE_DEFAULTS)

    def taps(model):
        return trace(model, torch.empty(2, 3, 32, 32, device="meta"), LayerSelection(), notify=None).names

    plain, zero, drop = fcn(), fcn(dropout=0.0), fcn(dropout=0.1)
    dropouts = [m for m in drop.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and all(m.p == 0.1 for m in dropouts)
    assert [type(m).__name__ for m in drop.blocks[0]] == ["Linear", "BatchNorm1d", "ReLU", "Dropout"]
    assert not [m for m in zero.modules() if isinstance(m, nn.Dropout)]  # 0: no module at all
    assert [n for n, _ in zero.named_modules()] == [n for n, _ in plain.named_modules()]
    assert list(drop.state_dict()) == list(zero.state_dict()) == list(plain.state_dict())
    assert taps(drop) == taps(zero) == taps(plain)  # Dropout is not a tap type
    with pytest.raises(PairgraphError, match="dropout"):
        fcn(dropout=1.0)
