"""The layer graph: a network's tap points and the data flow between them, and how tracers build it.

A tracer (a *tap provider*, :mod:`pairgraph.core.trace`) records each candidate module's output shapes
on the example input and on the example grown by one row; :func:`make_candidate` turns them into a
:class:`TapPoint` whose batch axis is the axis that grew (followed from the input, never guessed
from sizes), :func:`select_taps` applies the spec's ``layers`` selection and :func:`finish_graph`
computes depths.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import networkx as nx
import torch
from torch import fx, nn

from pairgraph.core.policy import class_names, default_tap_types, is_default_tap, rule_for
from pairgraph.errors import PairgraphError


def leaf_types_of(selection: Any) -> frozenset[str]:
    return frozenset(getattr(selection, "leaf_types", None) or ())


@dataclass
class TapPoint:
    """One place whose activation can be compared: a module output, batch on axis 0."""

    name: str
    type: str
    shape: tuple[int, ...]
    depth: int = 0
    index: int = 0
    output_index: int | None = None
    batch_axis: int = 0
    fx_node: str = ""
    is_output: bool = False  # its output reaches the network's output through parameter-free steps only
    is_head: bool = False  # part of the output head its library declares (timm's classifier, transformers' heads)
    calls: int = 1  # calls of its module per forward: the name is "module@k" when more than one
    feature: int | None = None  # timm provider: the index of this tap in forward_intermediates' list
    batched: bool = True  # False: the output has no batch axis (it does not change with the input's rows)
    kinds: frozenset[str] = frozenset()  # short and qualified names of its classes: what layers.types matches
    default: bool = False  # of a default tap type (or a subclass of one)

    def spec(self) -> tuple[Any, ...]:
        """(name, output index, batch axis[, calls]) — how hooks find this tap; (name, feature index) for
        timm's intermediates (:mod:`pairgraph.core.taps`)."""
        if self.feature is not None:
            return (self.name, self.feature)
        base = (self.name, self.output_index, self.batch_axis)
        return (*base, self.calls) if self.calls > 1 else base

    def label(self) -> str:
        return f"{self.name} · {self.type} · {'×'.join(map(str, self.shape))}"

    def features(self) -> int:
        n = 1
        for s in self.shape[1:]:
            n *= s
        return n


@dataclass
class LayerGraph:
    """The tap points of a network and the data flow between them (a networkx DiGraph)."""

    taps: list[TapPoint]
    graph: nx.DiGraph
    method: str  # the tap provider that found the taps: "fx", "timm" (forward_intermediates) or "hooks"
    gm: fx.GraphModule | None = None
    candidates: list[TapPoint] = field(default_factory=list)
    output_type: str = "Tensor"  # what forward returns (pairgraph needs a tensor of outputs)
    output: Any = None  # forward's return on the example (meta tensors under fx); None when not kept
    output_key: str | int | None = None  # which entry of a dict/tuple output is the logits (set by compile)
    notes: list[str] = field(default_factory=list)  # what the provider wants the user told (a notice each)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.taps]

    def __len__(self) -> int:
        return len(self.taps)

    def __getitem__(self, name: str) -> TapPoint:
        for t in self.taps:
            if t.name == name:
                return t
        raise KeyError(name)

    def max_depth(self) -> int:
        return max((t.depth for t in self.taps), default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "taps": [
                {"name": t.name, "type": t.type, "shape": list(t.shape), "depth": t.depth,
                 "output_index": t.output_index, "batch_axis": t.batch_axis}
                for t in self.taps
            ],
            "edges": [list(e) for e in self.graph.edges],
        }


NOT_PROBED = object()  # the grown-batch run was impossible: batch axes come from the tap rules


def grow(example: torch.Tensor) -> torch.Tensor:
    """The example with one more row (a copy of its first): a run on it shows where the batch axis goes."""
    return torch.cat([example, example[:1]])


def meta_shape(meta: Any, output_index: int | None) -> tuple[int, ...] | None:
    if output_index is not None and isinstance(meta, list | tuple):
        meta = meta[output_index]
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _batch_first(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    if axis == 0 or len(shape) <= axis:
        return shape
    rest = list(shape)
    b = rest.pop(axis)
    return (b, *rest)


#: the module types the authors' code hooks (``layers.preset: paper``): no BatchNorm, the pooling layer in
PAPER_TYPES = frozenset({"Conv2d", "Linear", "AdaptiveAvgPool2d", "LSTM", "RNN", "TransformerDecoderLayer",
                         "LayerNorm", "MultiheadAttention"})


def select_taps(candidates: list[TapPoint], selection: Any, side: str, any_type: bool = False) -> list[TapPoint]:
    """The candidates ``selection`` (a spec's ``layers``) keeps; ``any_type``: with ``types`` unset, every
    type (timm's feature levels are stages and blocks of any class)."""
    include = list(getattr(selection, "include", ["*"]))
    exclude = list(getattr(selection, "exclude", []))
    types = getattr(selection, "types", None)
    leaves = leaf_types_of(selection)
    paper = getattr(selection, "preset", None) == "paper"
    wanted = set(types or ()) | leaves  # class names or dotted class paths; subclasses match (TapPoint.kinds)
    exclude_types = set(getattr(selection, "exclude_types", []))
    drop_output = getattr(selection, "drop_output", True)
    chosen = [
        c for c in candidates
        if c.batched and (c.type in PAPER_TYPES or bool(c.kinds & leaves) if paper and types is None  # exact types
                          else (types is None and (any_type or c.default)) or bool(c.kinds & wanted))
        and not c.kinds & exclude_types
        and any(fnmatch.fnmatchcase(c.name, p) for p in include)
        and not any(fnmatch.fnmatchcase(c.name, p) for p in exclude)
    ]
    if drop_output and paper:
        chosen = chosen[:-1]  # the authors' code drops the last hooked layer, whatever it is
    elif drop_output:
        chosen = [c for c in chosen if not c.is_head]
        if chosen and chosen[-1].is_output:
            chosen = chosen[:-1]
    if not chosen:
        raise PairgraphError(
            f"{side}.layers selects no tap points (include={include}, exclude={exclude}, "
            f"types={sorted(types or default_tap_types() | leaves)})",
            f"widen {side}.layers; candidate modules start with: " + ", ".join(c.name for c in candidates[:6]),
        )
    for c in chosen:
        if c.shape is None:
            raise PairgraphError(
                f"{side} tap {c.name!r} ({c.type}) returns a tuple and no rule says which element is the activation",
                f"call pairgraph.core.policy.register_tap_type({c.type}, output_index=0) or exclude it in {side}.layers",
            )
    return chosen


def _grown_axis(raw: tuple[int, ...] | None, grown: tuple[int, ...] | None) -> int | None:
    """The one axis that grew by one when the input batch grew by a row; None when none did, or several, or
    one grew by more (the batch merged with another axis, e.g. ``(b·T, d)``: no batch axis of its own)."""
    if raw is None or grown is None or len(raw) != len(grown):
        return None
    axes = [i for i, (a, b) in enumerate(zip(raw, grown, strict=True)) if a != b]
    return axes[0] if len(axes) == 1 and grown[axes[0]] - raw[axes[0]] == 1 else None


def make_candidate(name: str, module: nn.Module, meta: Any, order: int, fx_node: str,
               grown: Any = NOT_PROBED) -> TapPoint:
    """A tap point from a module and its output's shapes on the example (``meta``) and on the example
    grown by one row (``grown``; ``NOT_PROBED`` when that run was impossible)."""
    rule = rule_for(module)
    index = rule.output_index
    if index is None and isinstance(meta, list | tuple) and meta and getattr(meta[0], "shape", None) is not None:
        index = 0  # a tuple whose first element is a tensor: the activation (transformers' blocks put it first)
    raw = meta_shape(meta, index)
    if grown is NOT_PROBED:
        axis: int | None = rule.batch_axis(module)
    else:
        axis = _grown_axis(raw, meta_shape(grown, index))
    shape = _batch_first(raw, axis) if raw is not None and axis is not None else None
    tap = TapPoint(name, type(module).__name__, shape, index=order, output_index=index,  # type: ignore[arg-type]
                   batch_axis=axis if axis is not None else 0, fx_node=fx_node)
    tap.batched = raw is None or axis is not None
    tap.kinds, tap.default = class_names(module), is_default_tap(module)
    return tap


def finish_graph(chosen: list[TapPoint], edges: list[tuple[str, str]], method: str, gm: fx.GraphModule | None,
            candidates: list[TapPoint]) -> LayerGraph:
    g = nx.DiGraph()
    for i, t in enumerate(chosen):
        t.index = i
        g.add_node(t.name, type=t.type, shape=t.shape)
    g.add_edges_from(edges)
    for name in nx.topological_sort(g):
        preds = list(g.predecessors(name))
        g.nodes[name]["depth"] = 1 + max(g.nodes[p]["depth"] for p in preds) if preds else 0
    for t in chosen:
        t.depth = g.nodes[t.name]["depth"]
    return LayerGraph(chosen, g, method, gm, candidates)


def shapes_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return SimpleNamespace(shape=tuple(value.shape))
    if isinstance(value, list | tuple):
        return type(value)(shapes_of(v) for v in value) if isinstance(value, list) else tuple(shapes_of(v) for v in value)
    return None
