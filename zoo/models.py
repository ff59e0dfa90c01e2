"""The zoo's built-in architectures: the paper's targets and guides, at paper and CPU sizes.

Image models take ``(B, C, H, W)`` floats and return ``(B, num_classes)`` logits. Token models
take ``(B, T)`` longs; sequence models return ``(B, T, vocab_size)`` logits, classifiers
``(B, num_classes)``. Classifiers over padded batches expect right padding with ``pad_id`` and
derive their masks from the input, so every forward is one tensor in, one tensor out, and
traceable by ``torch.fx.symbolic_trace`` (also on the meta device).

Sizes follow appendix D of "Training the Untrainable" (Subramaniam et al., NeurIPS 2025):
preset ``paper`` is the paper's size, ``cpu`` a small one for 2-core machines.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tvr

from pairgraph.errors import PairgraphError
from pairgraph.zoo import register_model

Stem = Literal["imagenet", "cifar"]
ResNetT = TypeVar("ResNetT", bound=tvr.ResNet)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


# --------------------------------------------------------------------------------------------
# Fully connected networks (Deep FCN, Wide/"Shallow" FCN)
# --------------------------------------------------------------------------------------------


class FCN(nn.Module):
    """Flatten, then ``num_blocks`` blocks of Linear → BatchNorm1d → ReLU at ``width``, then a Linear head."""

    def __init__(self, in_features: int, num_classes: int, num_blocks: int, width: int):
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(
                    OrderedDict(
                        linear=nn.Linear(in_features if i == 0 else width, width),
                        norm=nn.BatchNorm1d(width),
                        act=nn.ReLU(),
                    )
                )
                for i in range(num_blocks)
            ]
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x.flatten(1)))


def _fcn(num_classes: int, in_channels: int, image_size: int | Sequence[int], num_blocks: int, width: int) -> FCN:
    h, w = _pair(image_size)
    return FCN(in_channels * h * w, num_classes, num_blocks, width)


@register_model(
    "deep_fcn",
    input="image",
    presets={"paper": {"num_blocks": 50, "width": 2048}, "cpu": {"num_blocks": 16, "width": 256}},
    description="Deep FCN target: 50 blocks of Linear-BN-ReLU, 2048 wide (paper); overfits, vanishing gradients.",
)
def deep_fcn(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | Sequence[int] = (32, 32),
    num_blocks: int = 16,
    width: int = 256,
) -> FCN:
    """Deep fully connected network (paper: 50 blocks × 2048)."""
    return _fcn(num_classes, in_channels, image_size, num_blocks, width)


@register_model(
    "wide_fcn",
    input="image",
    presets={"paper": {"num_blocks": 3, "width": 8192}, "cpu": {"num_blocks": 3, "width": 1024}},
    description="Wide ('Shallow') FCN target: 3 blocks of Linear-BN-ReLU, 8192 wide (paper); saturates.",
)
def wide_fcn(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | Sequence[int] = (32, 32),
    num_blocks: int = 3,
    width: int = 1024,
) -> FCN:
    """Wide, shallow fully connected network (paper: 3 blocks × 8192)."""
    return _fcn(num_classes, in_channels, image_size, num_blocks, width)


# --------------------------------------------------------------------------------------------
# Vision Transformer (the second guide of the paper's Fig. 4)
# --------------------------------------------------------------------------------------------


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2020): patches → [cls] + tokens → pre-norm blocks → head on [cls]."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], patch: int, dim: int,
                 depth: int, heads: int, mlp_dim: int):
        super().__init__()
        h, w = image_size
        ph, pw = min(patch, h), min(patch, w)  # a 1-D "image" (MNIST-1D: 1 × 40) gets 1 × patch patches
        if h % ph or w % pw:
            raise PairgraphError(f"vit: image size {h}×{w} is not a multiple of the patch {ph}×{pw}",
                                 "pick guide.args.patch dividing the image size")
        self.patch = nn.Conv2d(in_channels, dim, kernel_size=(ph, pw), stride=(ph, pw))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.empty(1, (h // ph) * (w // pw) + 1, dim).normal_(std=0.02))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True, layer_norm_eps=1e-6)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        for block in self.blocks:
            t = block(t)
        return self.head(self.norm(t[:, 0]))


@register_model(
    "vit",
    input="image",
    presets={
        "paper": {"patch": 16, "dim": 768, "depth": 12, "heads": 12, "mlp_dim": 3072},  # ViT-B/16
        "cpu": {"patch": 4, "dim": 128, "depth": 4, "heads": 4, "mlp_dim": 256},
    },
    description="ViT guide (paper Fig. 4: ViT-B/16); cpu: 4×4 patches, 4 pre-norm blocks of width 128.",
)
def vit(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | Sequence[int] = (32, 32),
    patch: int = 4,
    dim: int = 128,
    depth: int = 4,
    heads: int = 4,
    mlp_dim: int = 256,
) -> ViT:
    """Vision Transformer classifier on the [cls] token."""
    return ViT(num_classes, in_channels, _pair(image_size), patch, dim, depth, heads, mlp_dim)


# --------------------------------------------------------------------------------------------
# ResNets (guides) and the Deep ConvNet (ResNet without residual connections)
# --------------------------------------------------------------------------------------------


def _finish_resnet(model: ResNetT, in_channels: int, stem: str) -> ResNetT:
    """Swap the stem for ``in_channels``/``stem`` and make every ReLU out-of-place.

    Out-of-place ReLUs keep tapped BatchNorm outputs intact (torchvision's in-place ReLU would
    overwrite them); the numbers are unchanged.
    """
    if stem not in ("imagenet", "cifar"):
        raise PairgraphError(f"unknown stem {stem!r}", "use stem: imagenet or stem: cifar")
    width = model.conv1.out_channels
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


@register_model(
    "resnet18",
    input="image",
    presets={"paper": {"stem": "imagenet"}, "cpu": {"stem": "imagenet"}},
    description="ResNet-18 guide (torchvision, untrained); stem 'imagenet' (7x7/2 + maxpool) or 'cifar' (3x3/1).",
)
def resnet18(num_classes: int = 10, in_channels: int = 3, stem: Stem = "imagenet") -> tvr.ResNet:
    """torchvision's ResNet-18 with an adjustable stem."""
    return _finish_resnet(tvr.resnet18(weights=None, num_classes=num_classes), in_channels, stem)


@register_model(
    "resnet50",
    input="image",
    presets={"paper": {"stem": "imagenet"}, "cpu": {"stem": "imagenet", "width_per_group": 16}},
    description="ResNet-50 guide (torchvision, untrained); cpu preset narrows the bottlenecks (width_per_group=16).",
)
def resnet50(
    num_classes: int = 10, in_channels: int = 3, stem: Stem = "imagenet", width_per_group: int = 64
) -> tvr.ResNet:
    """torchvision's ResNet-50 with an adjustable stem and bottleneck width."""
    model = tvr.resnet50(weights=None, num_classes=num_classes, width_per_group=width_per_group)
    return _finish_resnet(model, in_channels, stem)


class PlainBasicBlock(tvr.BasicBlock):
    """torchvision's BasicBlock without its residual: ``relu(bn2(conv2(relu(bn1(conv1(x))))))``."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Any = None, *args: Any, **kwargs: Any):
        super().__init__(inplanes, planes, stride, None, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


class PlainBottleneck(tvr.Bottleneck):
    """torchvision's Bottleneck without its residual: three conv-BN-ReLU, no identity or downsample."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Any = None, *args: Any, **kwargs: Any):
        super().__init__(inplanes, planes, stride, None, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)))


class DeepConvNet(tvr.ResNet):
    """A torchvision ResNet built from plain (residual-free) blocks; module names match torchvision's."""


_PLAIN_BLOCKS: dict[str, type[tvr.BasicBlock | tvr.Bottleneck]] = {
    "bottleneck": PlainBottleneck,
    "basic": PlainBasicBlock,
}


@register_model(
    "deep_convnet",
    input="image",
    presets={
        "paper": {"block": "bottleneck", "layers": [3, 4, 6, 3], "stem": "imagenet"},
        "cpu": {"block": "basic", "layers": [2, 2, 2, 2], "stem": "imagenet"},
        "cpu_resnet50": {"block": "bottleneck", "layers": [3, 4, 6, 3], "stem": "imagenet", "width_per_group": 16},
    },
    description="Deep ConvNet target: ResNet-50 without residual connections (paper); vanishing gradients.",
)
def deep_convnet(
    num_classes: int = 10,
    in_channels: int = 3,
    layers: Sequence[int] = (3, 4, 6, 3),
    block: Literal["bottleneck", "basic"] = "bottleneck",
    stem: Stem = "imagenet",
    width_per_group: int = 64,
) -> DeepConvNet:
    """ResNet layout with residual connections removed (paper: ResNet-50 layout)."""
    if block not in _PLAIN_BLOCKS:
        raise PairgraphError(f"unknown block {block!r}", "use block: bottleneck or block: basic")
    model = DeepConvNet(_PLAIN_BLOCKS[block], list(layers), num_classes=num_classes, width_per_group=width_per_group)
    return _finish_resnet(model, in_channels, stem)


@register_model(
    "plain_resnet18",
    input="image",
    presets={"paper": {"stem": "imagenet"}, "cpu": {"stem": "imagenet"}},
    description="ResNet-18 layout without residual connections (basic blocks [2, 2, 2, 2]).",
)
def plain_resnet18(num_classes: int = 10, in_channels: int = 3, stem: Stem = "imagenet") -> DeepConvNet:
    """Deep ConvNet in the ResNet-18 layout."""
    return deep_convnet(num_classes, in_channels, layers=(2, 2, 2, 2), block="basic", stem=stem)


# --------------------------------------------------------------------------------------------
# Sequence models: stacked RNN/LSTM and a causal transformer decoder
# --------------------------------------------------------------------------------------------


class StackedRNN(nn.Module):
    """Embedding → ``num_layers`` separate single-layer RNNs/LSTMs (each its own module) → Linear to vocab."""

    def __init__(self, cell: Literal["rnn", "lstm"], vocab_size: int, num_layers: int, hidden: int):
        super().__init__()
        rnn_cls = nn.RNN if cell == "rnn" else nn.LSTM
        self.embed = nn.Embedding(vocab_size, hidden)
        self.layers = nn.ModuleList(rnn_cls(hidden, hidden, batch_first=True) for _ in range(num_layers))
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)[0]  # (output, state): keep the per-step outputs
        return self.head(h)


_RNN_PRESETS = {
    "copy_paste": {"num_layers": 4, "hidden": 768},
    "lm": {"num_layers": 5, "hidden": 512},
    "paper": {"num_layers": 4, "hidden": 768},
    "cpu": {"num_layers": 4, "hidden": 128},
}


@register_model(
    "rnn",
    input="tokens",
    presets=_RNN_PRESETS,
    description="Stacked vanilla (tanh) RNN LM target: 4 x 768 for copy-paste, 5 x 512 for language modeling.",
)
def rnn(vocab_size: int = 16, num_layers: int = 4, hidden: int = 128) -> StackedRNN:
    """Stacked vanilla tanh RNN language model."""
    return StackedRNN("rnn", vocab_size, num_layers, hidden)


@register_model(
    "lstm",
    input="tokens",
    presets=dict(_RNN_PRESETS),
    description="Stacked LSTM language model (same layout as 'rnn').",
)
def lstm(vocab_size: int = 16, num_layers: int = 4, hidden: int = 128) -> StackedRNN:
    """Stacked LSTM language model."""
    return StackedRNN("lstm", vocab_size, num_layers, hidden)


class TransformerDecoder(nn.Module):
    """Causal decoder-only transformer: token + learned position embeddings → pre-norm blocks → LayerNorm → head."""

    def __init__(self, vocab_size: int, num_layers: int, d_model: int, nhead: int, max_len: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=dropout, batch_first=True, norm_first=True)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        pos = torch.arange(x.size(1), device=x.device)
        causal = pos.unsqueeze(0) > pos.unsqueeze(1)  # (T, T), True where a query may not look (the future)
        h = self.embed(x) + self.pos(pos)
        for block in self.blocks:
            h = block(h, src_mask=causal, is_causal=True)
        return self.head(self.norm(h))


@register_model(
    "transformer_decoder",
    input="tokens",
    presets={
        "copy_paste": {"num_layers": 4, "d_model": 768, "nhead": 12},
        "lm": {"num_layers": 4, "d_model": 512, "nhead": 16},
        "paper": {"num_layers": 4, "d_model": 768, "nhead": 12},
        "cpu": {"num_layers": 2, "d_model": 128, "nhead": 4},
    },
    description="Causal transformer decoder guide: 4 x 768 / 12 heads (copy-paste), 4 x 512 / 16 heads (LM).",
)
def transformer_decoder(
    vocab_size: int = 16,
    num_layers: int = 2,
    d_model: int = 128,
    nhead: int = 4,
    max_len: int = 512,
    dropout: float = 0.0,
) -> TransformerDecoder:
    """Causal decoder-only transformer language model; inputs may be at most ``max_len`` long."""
    return TransformerDecoder(vocab_size, num_layers, d_model, nhead, max_len, dropout)


# --------------------------------------------------------------------------------------------
# Parity classifiers: transformer encoder (target) and vanilla RNN (guide)
# --------------------------------------------------------------------------------------------


class TransformerClassifier(nn.Module):
    """Bidirectional transformer encoder over right-padded tokens, mean-pooled over non-pad positions."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        num_layers: int,
        d_model: int,
        nhead: int,
        pad_id: int,
        max_len: int,
        dropout: float,
    ):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=dropout, batch_first=True)
            for _ in range(num_layers)
        )
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        pad = x == self.pad_id  # (B, T) key-padding mask, True at padding
        pos = torch.arange(x.size(1), device=x.device)
        h = self.embed(x) + self.pos(pos)
        for block in self.blocks:
            h = block(h, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled)


@register_model(
    "transformer_classifier",
    input="tokens",
    presets={
        "paper": {"num_layers": 1, "d_model": 64, "nhead": 4},
        "cpu": {"num_layers": 1, "d_model": 64, "nhead": 4},
    },
    description="Parity target: 1-layer transformer encoder, d_model 64, 4 heads, mean-pooled over non-pad tokens.",
)
def transformer_classifier(
    num_layers: int = 1,
    d_model: int = 64,
    nhead: int = 4,
    num_classes: int = 2,
    vocab_size: int = 3,
    pad_id: int = 2,
    max_len: int = 64,
    dropout: float = 0.0,
) -> TransformerClassifier:
    """Transformer encoder classifier for right-padded sequences (padding at ``pad_id``)."""
    return TransformerClassifier(vocab_size, num_classes, num_layers, d_model, nhead, pad_id, max_len, dropout)


class RNNClassifier(nn.Module):
    """Vanilla tanh RNN read out at each sequence's last non-pad position (right padding)."""

    def __init__(self, vocab_size: int, num_classes: int, num_layers: int, hidden: int, pad_id: int):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, hidden)
        self.layers = nn.ModuleList(nn.RNN(hidden, hidden, batch_first=True) for _ in range(num_layers))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)[0]
        last = ((x != self.pad_id).sum(1) - 1).clamp(min=0)  # (B,) index of the last real token
        index = last.view(-1, 1, 1).expand(-1, 1, h.size(-1))
        return self.head(h.gather(1, index).squeeze(1))


@register_model(
    "rnn_classifier",
    input="tokens",
    presets={"paper": {"num_layers": 1, "hidden": 64}, "cpu": {"num_layers": 1, "hidden": 64}},
    description="Parity guide: 1-layer vanilla RNN, hidden 64, read out at the last non-pad token.",
)
def rnn_classifier(
    num_layers: int = 1,
    hidden: int = 64,
    num_classes: int = 2,
    vocab_size: int = 3,
    pad_id: int = 2,
) -> RNNClassifier:
    """Vanilla RNN classifier for right-padded sequences (padding at ``pad_id``)."""
    return RNNClassifier(vocab_size, num_classes, num_layers, hidden, pad_id)
