"""Model sources named by a ``prefix:`` in a spec's ``model:`` — registered in ``MODEL_SOURCES``.

``torchvision:<name>`` builds ``torchvision.models.get_model(name, weights=None, ...)``;
``package.module:factory`` (the ``python`` source) imports ``package.module`` and calls
``factory(**args)`` — it runs that code, so only use specs you trust.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from torch import nn

from pairgraph.config.names import MODEL_SOURCES
from pairgraph.errors import PairgraphError
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
        size = kwargs.get("image_size")
        if isinstance(size, list | tuple):  # torchvision's ViT takes one int
            kwargs["image_size"] = size[0]
        return tvm.get_model(name, **kwargs)

    keys = {"num_classes", "image_size"} if name.startswith(("vit", "swin", "maxvit")) else {"num_classes"}
    return ModelEntry(ref, tv_factory, "image", {}, f"torchvision {name}", default_keys=keys)


@MODEL_SOURCES.register("python")
def python_source(ref: str) -> ModelEntry:
    """``package.module:factory``: a user's factory, imported (and so run) from the import path."""
    mod_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise PairgraphError(
            f"cannot import module {mod_name!r} for model {ref!r} ({e})",
            "check the module is installed or on PYTHONPATH",
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise PairgraphError(f"module {mod_name!r} has no callable {attr!r}", "name a factory as 'package.module:function'")
    return ModelEntry(ref, factory, "image", {}, f"user factory {ref}")
