"""pairgraph.zoo — every architecture of the paper, behind one registry.

A model is a factory registered with :func:`register_model`; its named presets are keyword
arguments (``paper`` sizes and CPU sizes). :func:`build_model` resolves a spec's ``model:``
reference: a zoo name, or a source prefix (:mod:`pairgraph.zoo.sources`: ``torchvision:<name>``,
``package.module:factory``).

Contract for every zoo model (what tasks, tracing and training rely on):

* ``forward`` takes ONE tensor: images ``(B, C, H, W)`` float, or tokens ``(B, T)`` long.
* Classifiers return logits ``(B, num_classes)``; sequence models return ``(B, T, vocab)``.
* Token models that see padding know their ``pad_id`` and derive masks from the input.
* torch.fx ``symbolic_trace`` works with pairgraph's leaf set, on CPU and on the meta device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from pairgraph.config.names import MODELS, resolve_model
from pairgraph.errors import PairgraphError


@dataclass
class ModelEntry:
    """A registered model: its factory, named presets and what it consumes."""

    name: str
    factory: Callable[..., nn.Module]
    input: Literal["image", "tokens"]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    default_keys: set[str] | None = None
    #: the arguments that make the factory load its source's pretrained weights (None: it has none)
    pretrained: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    #: the ``args`` a starter spec (``pairgraph init``) gives the model: a CPU-sized one where the source knows how
    #: (called only by ``init``: a source may build models to find them)
    starter_args: Callable[[], dict[str, Any]] = dict

    def accepts(self) -> set[str] | None:
        """Keyword arguments the factory takes (None when it takes ``**kwargs``)."""
        params = inspect.signature(self.factory).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params}

    def named_params(self) -> set[str]:
        """Keyword arguments the factory names explicitly (task defaults go only to these)."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name for p in inspect.signature(self.factory).parameters.values() if p.kind in kinds}


def register_model(
    name: str,
    *,
    input: Literal["image", "tokens"],
    presets: dict[str, dict[str, Any]] | None = None,
    description: str = "",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` with its presets (``@register_model("rnn", ...)``)."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
        presets_ = dict(presets or {})
        starter = {"preset": "cpu"} if "cpu" in presets_ else {}
        MODELS.register(name)(ModelEntry(name, factory, input, presets_, doc, starter_args=lambda: dict(starter)))
        return factory

    return deco


def list_models(include: str = "*", exclude: str | list[str] = ()) -> list[str]:
    """Registered zoo model names matching the fnmatch ``include``/``exclude`` patterns."""
    return MODELS.names(include, exclude)


def resolve(ref: str) -> ModelEntry:
    """Find the factory a spec's ``model:`` names (a zoo name, ``torchvision:<name>`` or ``package.module:factory``)."""
    return resolve_model(ref)


def build_model(ref: str, args: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
                pretrained: bool = False) -> nn.Module:
    """Build the model ``ref`` from ``args`` (may hold ``preset``), filling ``defaults`` it accepts.

    ``defaults`` come from the task (``vocab_size``, ``num_classes``, …); they are passed only
    when the factory takes them and the user did not set them. ``pretrained`` asks the model's
    source for its own weights (``guide.weights: pretrained``).
    """
    entry = resolve(ref)
    kwargs = dict(args or {})
    if pretrained:
        if entry.pretrained is None:
            raise PairgraphError(f"model {ref!r} has no pretrained weights of its own",
                                 "give guide.weights a checkpoint path, or use a timm:, hf: or torchvision: model")
        kwargs = entry.pretrained(kwargs)
    preset = kwargs.pop("preset", None)
    if preset is not None:
        if preset not in entry.presets:
            raise PairgraphError(
                f"model {ref!r} has no preset {preset!r}",
                "choose one of " + ", ".join(sorted(entry.presets)) if entry.presets else "remove 'preset'",
            )
        kwargs = {**entry.presets[preset], **kwargs}
    accepted = entry.accepts()
    if entry.default_keys is not None:
        default_keys = entry.default_keys
    else:  # a factory taking **kwargs gets every task argument; others those they name
        default_keys = set(defaults or {}) if accepted is None else entry.named_params()
    for key, value in (defaults or {}).items():
        if key not in kwargs and key in default_keys:
            kwargs[key] = value
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise PairgraphError(
                f"model {ref!r} does not take argument(s) {', '.join(unknown)}",
                "valid arguments: " + ", ".join(sorted(accepted)),
            )
    try:
        model = entry.factory(**kwargs)
    except TypeError as e:
        raise PairgraphError(f"model {ref!r} rejected its arguments: {e}", "check the model's args in the spec") from None
    if not isinstance(model, nn.Module):
        raise PairgraphError(f"model {ref!r}: its factory returned a {type(model).__name__}, not a torch.nn.Module",
                             "return the model itself (an nn.Module) from the factory")
    return model
