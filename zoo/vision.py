"""The zoo's built-in image architectures: the paper's FCNs, ViT, ResNets and Deep ConvNets.

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
    """Flatten, then ``num_blocks`` blocks of Linear → BatchNorm1d → ReLU [→ Dropout] at ``width``, then a Linear head.

    ``dropout`` > 0 appends ``drop = Dropout(dropout)`` to every block (the authors' Deep FCN uses 0.1);
    at 0 no module is added, so the graph, the tap points and the state_dict are those of a plain FCN.
    ``first_width`` makes the first block that wide (the authors' code: 2,048, then 1,024); None: ``width``.
    """

    def __init__(self, in_features: int, num_classes: int, num_blocks: int, width: int, dropout: float = 0.0,
                 first_width: int | None = None):
        super().__init__()
        if not 0 <= dropout < 1:
            raise PairgraphError(f"fcn: dropout must be in [0, 1), got {dropout}", "set args.dropout to e.g. 0.1")
        if first_width is not None and first_width < 1:
            raise PairgraphError(f"fcn: first_width must be at least 1, got {first_width}",
                                 "set args.first_width to e.g. 2048, or leave it out")
        widths = [first_width or width] + [width] * (num_blocks - 1)

        def block(i: int) -> nn.Sequential:
            layers = OrderedDict(linear=nn.Linear(in_features if i == 0 else widths[i - 1], widths[i]),
                                 norm=nn.BatchNorm1d(widths[i]), act=nn.ReLU())
            if dropout:
                layers["drop"] = nn.Dropout(dropout)
            return nn.Sequential(layers)

        self.blocks = nn.Sequential(*[block(i) for i in range(num_blocks)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x.flatten(1)))


def _fcn(num_classes: int, in_channels: int, image_size: int | Sequence[int], num_blocks: int, width: int,
         dropout: float, first_width: int | None = None) -> FCN:
    h, w = _pair(image_size)
    return FCN(in_channels * h * w, num_classes, num_blocks, width, dropout, first_width)


#: the Deep FCN of the authors' code (ImageNetNarrowMLP in their imagenet-comparison/mlp.py): one block of
#: 2,048, then 47 of 1,024, each Linear-BN-ReLU-Dropout(0.1); the paper's text says 50 × 2,048 (preset paper)
AUTHORS_DEEP_FCN = {"num_blocks": 48, "width": 1024, "first_width": 2048, "dropout": 0.1}


@register_model(
    "deep_fcn",
    input="image",
    presets={"paper": {"num_blocks": 50, "width": 2048}, "authors": AUTHORS_DEEP_FCN,
             "cpu": {"num_blocks": 16, "width": 256}},
    description="Deep FCN target: 50 blocks of Linear-BN-ReLU, 2048 wide (paper: the paper's text); authors: "
    "their code's 2048 then 47 × 1024 with Dropout 0.1; overfits, vanishing gradients; args.dropout adds Dropout "
    "after each ReLU.",
)
def deep_fcn(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | Sequence[int] = (32, 32),
    num_blocks: int = 16,
    width: int = 256,
    dropout: float = 0.0,
    first_width: int | None = None,
) -> FCN:
    """Deep fully connected network (paper: 50 blocks × 2048; authors' code: 2048 then 47 × 1024, dropout 0.1);
    ``dropout`` after each block's ReLU (0: none); ``first_width`` widens the first block."""
    return _fcn(num_classes, in_channels, image_size, num_blocks, width, dropout, first_width)


@register_model(
    "wide_fcn",
    input="image",
    presets={"paper": {"num_blocks": 3, "width": 8192}, "cpu": {"num_blocks": 3, "width": 1024}},
    description="Wide ('Shallow') FCN target: 3 blocks of Linear-BN-ReLU, 8192 wide (paper); saturates; "
    "args.dropout adds Dropout after each ReLU.",
)
def wide_fcn(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | Sequence[int] = (32, 32),
    num_blocks: int = 3,
    width: int = 1024,
    dropout: float = 0.0,
) -> FCN:
    """Wide, shallow fully connected network (paper: 3 blocks × 8192); ``dropout`` after each block's ReLU."""
    return _fcn(num_classes, in_channels, image_size, num_blocks, width, dropout)


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
