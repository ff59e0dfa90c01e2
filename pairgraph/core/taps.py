"""Networks that return their taps: what generated ``guided_pair.py`` modules build on.

* :class:`TappedNetwork` — base of the generated networks: it adopts an eager model's
  submodules, so the generated ``forward`` (from the fx graph) returns ``(output, taps)`` and
  the state dict keys are the eager model's.
* :class:`HookedNetwork` — the same contract for a model fx cannot trace, from forward hooks.
* :class:`IntermediatesNetwork` — the same from timm's ``forward_intermediates``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pairgraph.errors import PairgraphError

#: a tap as generated modules list it: (name, output index, batch axis[, calls of its module per forward])
TapSpec = tuple[Any, ...]


def disable_inplace(module: nn.Module) -> nn.Module:
    """Turn off in-place activations (e.g. torchvision's ``ReLU(inplace=True)``): they would
    overwrite a tapped BatchNorm output after it was captured."""
    for m in module.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return module


class TappedNetwork(nn.Module):
    """A network whose forward returns ``(output, {tap name: activation with batch first})``.

    Generated subclasses set ``TAPS`` and define ``forward``; the constructor adopts ``root``'s
    children, parameters and buffers under their own names.
    """

    TAPS: tuple[str, ...] = ()

    def __init__(self, root: nn.Module):
        super().__init__()
        disable_inplace(root)
        for name, child in root.named_children():
            self.add_module(name, child)
        for name, p in root.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in root.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in root._non_persistent_buffers_set)
        for name, value in vars(root).items():
            if isinstance(value, Tensor) and not hasattr(self, name):
                setattr(self, name, value)


class HookedNetwork(nn.Module):
    """The fallback for models fx cannot trace: forward hooks (registered once) collect the taps."""

    def __init__(self, root: nn.Module, taps: Sequence[TapSpec], output: str | int | None = None):
        super().__init__()
        self.root = disable_inplace(root)
        self.output = output
        self.TAPS = tuple(t[0] for t in taps)
        self._captured: dict[str, Tensor] = {}
        capture_hooks(root, taps, self._captured)

    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        self._captured.clear()
        out = select_logits(self.root(x), self.output)
        taps = dict(self._captured)
        self._captured.clear()
        return out, taps

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # same keys as the eager model
        return self.root.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.root.load_state_dict(state_dict, strict=strict, assign=assign)


class IntermediatesNetwork(nn.Module):
    """A timm model tapped at its feature levels: ``forward_intermediates`` gives the taps (the levels
    ``indices`` names, in order) and the features ``forward_head`` turns into the logits."""

    def __init__(self, root: nn.Module, taps: Sequence[TapSpec], output: str | int | None = None):
        super().__init__()
        self.root = disable_inplace(root)
        self.output = output
        self.TAPS = tuple(t[0] for t in taps)
        self.indices = [int(t[1]) for t in taps]

    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        final, inter = self.root.forward_intermediates(x, indices=self.indices)
        return select_logits(self.root.forward_head(final), self.output), dict(zip(self.TAPS, inter, strict=True))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # same keys as the eager model
        return self.root.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.root.load_state_dict(state_dict, strict=strict, assign=assign)


def keyword_inputs(model: nn.Module, inputs: Mapping[str, str], mask_fn: Callable[[Tensor], Tensor | None]) -> nn.Module:
    """Make ``model(x)`` call its own forward with keyword inputs: each name in ``inputs`` gets the task's
    input (``"input"``) or its padding mask (``"mask"``: ``mask_fn(x)`` as 1/0, all ones where the task pads
    nothing). The model's class is subclassed in place, so module names and state dict keys stay its own."""
    cls = type(model)
    feeds = dict(inputs)

    def forward(self: nn.Module, x: Tensor) -> Any:
        mask = mask_fn(x) if "mask" in feeds.values() else None
        mask = torch.ones_like(x, dtype=torch.long) if mask is None else mask.long()
        return cls.forward(self, **{name: x if source == "input" else mask for name, source in feeds.items()})

    return _with_forward(model, forward)


def _with_forward(model: nn.Module, forward: Callable[..., Any]) -> nn.Module:
    """``model`` as an instance of a subclass of its class (same name, module and qualified name, so the
    tracing policy and state dict keys are unchanged) whose forward is ``forward``."""
    cls = type(model)
    model.__class__ = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                                 "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    return model


def transformed_input(model: nn.Module, transform: Callable[[Tensor], Tensor]) -> nn.Module:
    """Make ``model(x)`` compute its own forward on ``transform(x)`` (the class is subclassed in place, so names
    and state dict keys stay its own, and torch.fx traces the transform as part of the network)."""
    cls = type(model)

    def forward(self: nn.Module, x: Tensor) -> Any:
        return cls.forward(self, transform(x))

    return _with_forward(model, forward)


def select_logits(value: Any, key: str | int | None = None) -> Tensor:
    """The network's outputs (logits) from what its forward returns: the tensor itself; from a dict or a
    transformers ``ModelOutput``, entry ``key`` (default ``logits``, else the first tensor); from a tuple,
    element ``key`` (default the first tensor)."""
    if isinstance(value, Tensor) and key is None:
        return value
    if isinstance(value, Mapping):
        if key is None:
            key = "logits" if "logits" in value else next((k for k, v in value.items() if isinstance(v, Tensor)), None)
        if key in value and isinstance(value[key], Tensor):
            return value[key]
        raise PairgraphError(f"forward returned a {_kind(value)} without a tensor entry {key!r} "
                             f"(entries: {', '.join(map(str, value))})", "name the logits with output: <entry>")
    if isinstance(value, tuple | list):
        if key is None:
            key = next((i for i, v in enumerate(value) if isinstance(v, Tensor)), None)
        if isinstance(key, int) and 0 <= key < len(value) and isinstance(value[key], Tensor):
            return value[key]
        raise PairgraphError(f"forward returned a {_kind(value)} of {len(value)} without a tensor at {key!r}",
                             "name the logits with output: <index>")
    raise PairgraphError(f"forward returned a {_kind(value)}, not tensors of outputs",
                         "make forward return the logits (a tensor, or a dict/tuple holding them)")


def _kind(value: Any) -> str:
    return type(value).__name__.removeprefix("immutable_")  # fx's immutable_dict / immutable_list


def select_output(value: Any, index: int | None, batch_axis: int) -> Tensor:
    """A tap's activation from a module output: tuple element ``index``, batch moved to axis 0."""
    if index is not None:
        value = value[index]
    if batch_axis:
        value = value.movedim(batch_axis, 0)
    return value


def split_call(tap: str) -> tuple[str, int | None]:
    """``"blocks.0@2"`` → (``"blocks.0"``, 2): the third call of a module used several times; a plain
    name → (name, None)."""
    module, sep, call = tap.rpartition("@")
    return (module, int(call)) if sep and call.isdigit() else (tap, None)


def capture_hooks(root: nn.Module, taps: Sequence[TapSpec], store: dict[str, Tensor],
                  first_only: bool = True) -> list[Any]:
    """Forward hooks on ``root``'s modules that record each tap in ``store``; returns the handles.

    A tap is ``(name, output index, batch axis[, calls])``; ``name@k`` is the k-th of the ``calls``
    calls of a module in one forward (weight sharing). A tap without ``@k`` of a module called
    several times keeps the first call (``first_only``) or the last. Activations are cloned: eager
    code may modify a module's output in place after the hook ran (torchvision's ``out += identity``).
    """
    modules = dict(root.named_modules())
    groups: dict[str, list[tuple[str, int | None, int | None, int, int]]] = {}
    for tap in taps:
        name, index, axis, *rest = tap
        module, call = split_call(name)
        groups.setdefault(module, []).append((name, call, index, axis, int(rest[0]) if rest else 1))
    return [modules[module].register_forward_hook(_hook(store, entries, first_only))
            for module, entries in groups.items()]


def _hook(store: dict[str, Tensor], entries: list[tuple[str, int | None, int | None, int, int]],
          first_only: bool) -> Callable[..., None]:
    calls = max(e[4] for e in entries)
    count = [0]

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        k = count[0] % calls  # the module's k-th call in this forward
        count[0] += 1
        for name, call, index, axis, _ in entries:
            if (call == k) or (call is None and not (first_only and name in store)):
                store[name] = select_output(output, index, axis).clone()

    return hook


def hooked(taps: Sequence[TapSpec], output: str | int | None = None) -> Callable[[nn.Module], HookedNetwork]:
    """Class-like factory used by generated modules for networks traced with hooks."""

    def make(root: nn.Module) -> HookedNetwork:
        return HookedNetwork(root, taps, output)

    return make


def intermediates(taps: Sequence[TapSpec], output: str | int | None = None) -> Callable[[nn.Module], IntermediatesNetwork]:
    """Class-like factory used by generated modules for timm networks tapped at their feature levels."""

    def make(root: nn.Module) -> IntermediatesNetwork:
        return IntermediatesNetwork(root, taps, output)

    return make


def tap_network(method: str, taps: Sequence[TapSpec], output: str | int | None = None) -> Callable[[nn.Module], nn.Module]:
    """A network class for taps found by a provider without generated code: timm's intermediates for
    ``method == "timm"``, else hooks (fx taps are module outputs too)."""
    return intermediates(taps, output) if method == "timm" else hooked(taps, output)
