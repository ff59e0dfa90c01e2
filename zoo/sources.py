"""Model sources named by a ``prefix:`` in a spec's ``model:`` — registered in ``MODEL_SOURCES``.

``torchvision:<name>`` builds ``torchvision.models.get_model(name, weights=None, ...)``;
``timm:<name>`` builds ``timm.create_model(name, pretrained=False, num_classes=…, in_chans=…,
img_size=… where the model takes it, **args)`` (``pip install 'pairgraph[timm]'``);
``package.module:factory`` (the ``python`` source) imports ``package.module`` and calls
``factory(**args)`` — it runs that code, so only use specs you trust.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pairgraph.config.names import MODEL_SOURCES, import_reference
from pairgraph.errors import PairgraphError, first_line
from pairgraph.zoo import ModelEntry


@MODEL_SOURCES.register("torchvision")
def torchvision_source(ref: str) -> ModelEntry:
    """``torchvision:<name>``: any model torchvision lists, untrained unless ``weights`` is passed."""
    import torchvision.models as tvm

    name = ref.split(":", 1)[1]
    available = tvm.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = ("did you mean " + " or ".join(f"'torchvision:{c}'" for c in close) + "?") if close else (
            "run `python -c 'import torchvision; print(torchvision.models.list_models())'`"
        )
        raise PairgraphError(f"unknown torchvision model {name!r}", hint)

    def tv_factory(**kwargs: Any) -> nn.Module:
        kwargs.setdefault("weights", None)
        size = kwargs.pop("image_size", None)
        if size is not None and name.startswith("maxvit"):  # MaxVit takes input_size=(H, W)
            kwargs["input_size"] = tuple(size) if isinstance(size, list | tuple) else (size, size)
        elif size is not None:  # torchvision's ViT takes image_size, one int
            kwargs["image_size"] = size[0] if isinstance(size, list | tuple) else size
        model = tvm.get_model(name, **kwargs)
        model.pairgraph_input_size = _torchvision_input(tvm, name)  # for a message when an input does not fit
        return model

    # the task's image size goes only to the models whose constructor takes it (not Swin's)
    keys = {"num_classes", "image_size"} if name.startswith(("vit", "maxvit")) else {"num_classes"}
    return ModelEntry(ref, tv_factory, "image", {}, f"torchvision {name}", default_keys=keys,
                      pretrained=lambda args: {**args, "weights": args.get("weights") or "DEFAULT"})


def _torchvision_input(tvm: Any, name: str) -> str | None:
    """The input sizes torchvision's weights record for ``name`` (``meta["min_size"]``, the transforms' crop)."""
    try:
        weights = list(tvm.get_model_weights(name))
    except (ValueError, KeyError):
        return None
    if not weights:
        return None
    crop = getattr(weights[0].transforms, "keywords", {}).get("crop_size")
    low = weights[0].meta.get("min_size")
    said = [f"at least {low[0]}×{low[1]} px (torchvision's weights: min_size)"] if low else []
    return ", ".join([*said, *([f"{crop} px as its weights were trained"] if crop else [])]) or None


@MODEL_SOURCES.register("python")
def python_source(ref: str) -> ModelEntry:
    """``package.module:factory``: a user's factory, imported (and so run) by
    :func:`~pairgraph.config.names.import_reference` (sys.path, the working directory, the spec files' folders)."""
    factory = import_reference(ref, "model")
    if not callable(factory):
        raise PairgraphError(f"{ref!r} is not callable", "name a factory as 'package.module:function'")
    return ModelEntry(ref, factory, "image", {}, f"user factory {ref}")


def _optional(module: str, extra: str, ref: str) -> Any:
    """Import an optional dependency, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PairgraphError(f"model {ref!r} needs {module}, which is not installed",
                             f"pip install 'pairgraph[{extra}]' (or pip install {module})") from None


@MODEL_SOURCES.register("timm")
def timm_source(ref: str) -> ModelEntry:
    """``timm:<name>``: any architecture timm lists, built untrained unless ``args`` say ``pretrained: true``
    (timm's own loading code: the hub, or ``pretrained_cfg_overlay: {file: local.safetensors}``)."""
    timm = _optional("timm", "timm", ref)
    name = ref.split(":", 1)[1]
    available = timm.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = ("did you mean " + " or ".join(f"'timm:{c}'" for c in close) + "?") if close else (
            "run `python -c 'import timm; print(timm.list_models(\"*vit*\"))'`")
        raise PairgraphError(f"unknown timm model {name!r}", hint)

    def create(**kwargs: Any) -> nn.Module:
        size = kwargs.pop("image_size", None)
        if size is None:
            return timm.create_model(name, **kwargs)
        try:  # transformers take the image size; convolutional networks do not
            return timm.create_model(name, img_size=tuple(size) if isinstance(size, list) else size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
            return timm.create_model(name, **kwargs)

    def timm_factory(**kwargs: Any) -> nn.Module:
        kwargs.setdefault("pretrained", False)
        if "in_channels" in kwargs:
            kwargs["in_chans"] = kwargs.pop("in_channels")
        overlay = kwargs.get("pretrained_cfg_overlay")
        file = overlay.get("file") if isinstance(overlay, dict) and kwargs["pretrained"] else None
        if file is not None and not Path(str(file)).expanduser().is_file():
            raise PairgraphError(f"timm weights file {file!r} (pretrained_cfg_overlay.file) not found",
                                 "point pretrained_cfg_overlay.file at a local .safetensors or .pth file")
        try:
            return create(**kwargs)
        except (pickle.UnpicklingError, RuntimeError) as e:  # timm loads with torch.load(weights_only=True)
            if file is None or "weights_only" not in str(e):
                raise
            raise PairgraphError(f"timm weights file {file!r} is refused: {first_line(e, 160)}",
                                 "use a .safetensors file, or a .pth holding only tensors") from None

    return ModelEntry(ref, timm_factory, "image", {}, f"timm {name}",
                      default_keys={"num_classes", "in_channels", "image_size"},
                      pretrained=lambda args: {**args, "pretrained": True},
                      starter_args=lambda: _small_timm_args(lambda **kw: timm.create_model(name, **kw)))


def _small_timm_args(create: Callable[..., nn.Module]) -> dict[str, Any]:
    """A CPU-sized model of a timm architecture, in the size arguments its class takes: 2 blocks of width 64 for a
    ViT-like (``depth``, ``embed_dim``, ``num_heads``), one block a stage and narrow stages for a staged one
    (``depths``, ``dims``, ``embed_dims``, ``num_heads`` per stage). Kept only when it builds and is smaller (tried
    on the meta device, no memory); else the depths alone; else none (``{}``: the architecture's own size)."""
    def built(**kwargs: Any) -> nn.Module:
        with torch.device("meta"):
            return create(**kwargs)

    def params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    try:
        model = built()
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta keeps its own size
        return {}
    small: dict[str, Any] = {}
    for key, p in inspect.signature(type(model).__init__).parameters.items():
        default = p.default
        if key in _VIT_SIZE and isinstance(default, int) and not isinstance(default, bool):
            small[key] = _VIT_SIZE[key]
        elif isinstance(default, tuple | list) and default and (key == "layers" or key.endswith("depths")):
            small[key] = [1] * len(default)
        elif isinstance(default, tuple | list) and default and key in ("dims", "embed_dims", "num_heads"):
            small[key] = [(1 if key == "num_heads" else 32) * 2**i for i in range(len(default))]
    depths = {k: v for k, v in small.items() if k in ("depth", "layers") or k.endswith("depths")}
    for args in (small, depths):
        try:
            smaller = bool(args) and params(built(**args)) < params(model)
        except Exception:  # noqa: BLE001 - the class's own checks refuse this size: try a smaller change
            smaller = False
        if smaller:
            return args
    return {}


#: the size of a CPU ViT-like (as the unseen-model script shrinks timm's ViT, DeiT, BEiT, EVA)
_VIT_SIZE = {"depth": 2, "embed_dim": 64, "num_heads": 2}
