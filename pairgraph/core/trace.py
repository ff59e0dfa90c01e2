"""Tracing: a network → a ``LayerGraph`` of tap points (torch.fx, forward hooks as fallback).

Node names are module qualified names (``layer1.0.conv1``), the names torch.fx and
``named_modules`` use. Shapes come from shape propagation of a task-built example input on the
meta device, so a paper-size model costs no memory. Which modules fx treats as leaves is
pairgraph's policy (:func:`register_leaf_module`), like timm's ``_fx.py``; which leaves become
tap points and what element of a tuple output is the activation is said per type
(:func:`register_tap_type`). Where each tap's batch axis lies is followed from the input, never
guessed from sizes: the example runs twice, with one more row the second time, and the axis that
grew is the batch axis (a LayerNorm on ``(T, b, d)`` has it at 1; a module whose output does not
depend on the batch, e.g. a positional embedding, has none and is not a tap point). Where the second
run is impossible (a model that hard-codes its batch size) the type's registered axis is used.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import networkx as nx
import torch
from torch import fx, nn

from pairgraph.core.policy import default_tap_types, is_default_tap, is_leaf, rule_for
from pairgraph.errors import PairgraphError, first_line, one_line


class LeafTracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn's own modules, the registered leaf modules and tap types,
    and the classes a spec names in ``layers.leaf_types``."""

    def __init__(self, extra_leaves: frozenset[str] = frozenset()):
        super().__init__()
        self.extra_leaves = extra_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_leaf(m, self.extra_leaves) or super().is_leaf_module(m, qualname)


def _leaf_types(selection: Any) -> frozenset[str]:
    return frozenset(getattr(selection, "leaf_types", None) or ())


# ---------------------------------------------------------------- the layer graph


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
    is_output: bool = False
    calls: int = 1  # calls of its module per forward: the name is "module@k" when more than one
    batched: bool = True  # False: the output has no batch axis (it does not change with the input's rows)

    def spec(self) -> tuple[Any, ...]:
        """(name, output index, batch axis[, calls]) — how hooks find this tap (:mod:`pairgraph.core.taps`)."""
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
    method: str  # "fx" or "hooks"
    gm: fx.GraphModule | None = None
    candidates: list[TapPoint] = field(default_factory=list)
    output_type: str = "Tensor"  # what forward returns (pairgraph needs a tensor of outputs)
    output: Any = None  # forward's return on the example (meta tensors under fx); None when not kept
    output_key: str | int | None = None  # which entry of a dict/tuple output is the logits (set by compile)

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


# ---------------------------------------------------------------- tracing


_NOT_PROBED = object()  # the grown-batch run was impossible: batch axes come from the tap rules


def _grow(example: torch.Tensor) -> torch.Tensor:
    """The example with one more row (a copy of its first): a run on it shows where the batch axis goes."""
    return torch.cat([example, example[:1]])


def _meta_shape(meta: Any, output_index: int | None) -> tuple[int, ...] | None:
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


def _select(candidates: list[TapPoint], selection: Any, side: str) -> list[TapPoint]:
    include = list(getattr(selection, "include", ["*"]))
    exclude = list(getattr(selection, "exclude", []))
    types = getattr(selection, "types", None)
    types = (set(types) if types is not None else default_tap_types()) | {t.rsplit(".", 1)[-1] for t in _leaf_types(selection)}
    exclude_types = set(getattr(selection, "exclude_types", []))
    drop_output = getattr(selection, "drop_output", True)
    chosen = [
        c for c in candidates
        if c.batched and c.type in types and c.type not in exclude_types
        and any(fnmatch.fnmatchcase(c.name, p) for p in include)
        and not any(fnmatch.fnmatchcase(c.name, p) for p in exclude)
    ]
    if drop_output and chosen and chosen[-1].is_output:
        chosen = chosen[:-1]
    if not chosen:
        raise PairgraphError(
            f"{side}.layers selects no tap points (include={include}, exclude={exclude}, types={sorted(types)})",
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
    """The one axis that grew when the input batch grew by a row; None when none or several did."""
    if raw is None or grown is None or len(raw) != len(grown):
        return None
    axes = [i for i, (a, b) in enumerate(zip(raw, grown, strict=True)) if a != b]
    return axes[0] if len(axes) == 1 else None


def _candidate(name: str, module: nn.Module, meta: Any, order: int, fx_node: str,
               grown: Any = _NOT_PROBED) -> TapPoint:
    """A tap point from a module and its output's shapes on the example (``meta``) and on the example
    grown by one row (``grown``; ``_NOT_PROBED`` when that run was impossible)."""
    rule = rule_for(module)
    index = rule.output_index
    if index is None and isinstance(meta, list | tuple) and meta and getattr(meta[0], "shape", None) is not None:
        index = 0  # a tuple whose first element is a tensor: the activation (transformers' blocks put it first)
    raw = _meta_shape(meta, index)
    if grown is _NOT_PROBED:
        axis: int | None = rule.batch_axis(module)
    else:
        axis = _grown_axis(raw, _meta_shape(grown, index))
    shape = _batch_first(raw, axis) if raw is not None and axis is not None else None
    tap = TapPoint(name, type(module).__name__, shape, index=order, output_index=index,  # type: ignore[arg-type]
                   batch_axis=axis if axis is not None else 0, fx_node=fx_node)
    tap.batched = raw is None or axis is not None
    return tap


def _finish(chosen: list[TapPoint], edges: list[tuple[str, str]], method: str, gm: fx.GraphModule | None,
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


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return SimpleNamespace(shape=tuple(value.shape))
    if isinstance(value, list | tuple):
        return type(value)(_shapes(v) for v in value) if isinstance(value, list) else tuple(_shapes(v) for v in value)
    return None


class _ShapeRecorder(fx.Interpreter):
    """Shape propagation that records each node's output shapes in ``shapes`` and stays quiet."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.extra_traceback = False
        self.shapes: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = _shapes(result)
        return result


def _grown_shapes(gm: fx.GraphModule, example: torch.Tensor) -> dict[fx.Node, Any] | None:
    """Each node's output shapes on the example grown by one row; None when the model cannot run on it."""
    recorder = _ShapeRecorder(gm)
    try:
        recorder.run(_grow(example))
    except Exception:  # noqa: BLE001 - e.g. a batch size written into the model: the tap rules decide
        return None
    return recorder.shapes


class ShapePropError(Exception):
    """The graph traced, but running it on the example input failed (``cause`` says why)."""

    def __init__(self, cause: BaseException):
        self.cause = cause
        super().__init__(str(cause))


def trace_fx(model: nn.Module, example: torch.Tensor, selection: Any = None, side: str = "model") -> LayerGraph:
    """Trace with torch.fx and propagate shapes; raises whatever fx raises on untraceable code."""
    gm = fx.GraphModule(model, LeafTracer(_leaf_types(selection)).trace(model), type(model).__name__)
    recorder = _ShapeRecorder(gm)
    try:
        result = recorder.run(example)
    except Exception as e:  # noqa: BLE001 - traced fine, but the model does not run on this input
        raise ShapePropError(e) from None
    grown = _grown_shapes(gm, example)
    modules = dict(model.named_modules())
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    feeds_output = set(output_node.all_input_nodes)
    candidates: list[TapPoint] = []
    by_node: dict[fx.Node, TapPoint] = {}
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    seen: Counter[str] = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        k, seen[node.target] = seen[node.target], seen[node.target] + 1  # a shared module: one tap per call
        name = node.target if calls[node.target] == 1 else f"{node.target}@{k}"
        cand = _candidate(name, modules[node.target], recorder.shapes.get(node), len(candidates), node.name,
                          grown.get(node) if grown is not None else _NOT_PROBED)
        cand.calls = calls[node.target]
        cand.is_output = node in feeds_output or _only_reshapes_to_output(node, output_node)
        candidates.append(cand)
        by_node[node] = cand
    chosen = _select(candidates, selection, side)
    chosen_nodes = {n: c for n, c in by_node.items() if c in chosen}
    edges = _tap_edges(gm, chosen_nodes)
    graph = _finish(chosen, edges, "fx", gm, candidates)
    graph.output_type = type(result).__name__.removeprefix("immutable_")  # fx's immutable_dict/_list
    graph.output = result
    return graph


def _only_reshapes_to_output(node: fx.Node, output_node: fx.Node) -> bool:
    """True when ``node`` reaches the output through reshaping/indexing only (e.g. ``out[0]``)."""
    passthrough = {"getitem", "view", "reshape", "flatten", "squeeze", "contiguous", "float"}
    frontier = [node]
    while frontier:
        n = frontier.pop()
        for u in n.users:
            if u is output_node:
                return True
            name = u.target if isinstance(u.target, str) else getattr(u.target, "__name__", "")
            if name in passthrough:
                frontier.append(u)
    return False


def _tap_edges(gm: fx.GraphModule, taps: dict[fx.Node, TapPoint]) -> list[tuple[str, str]]:
    """Edges from each tap to the nearest taps it feeds (through non-tap nodes)."""
    nearest: dict[fx.Node, set[str]] = {}
    edges: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        srcs: set[str] = set()
        for inp in node.all_input_nodes:
            srcs |= {taps[inp].name} if inp in taps else nearest.get(inp, set())
        if node in taps:
            edges.extend((s, taps[node].name) for s in sorted(srcs))
            nearest[node] = {taps[node].name}
        else:
            nearest[node] = srcs
    return edges


def trace_hooks(model: nn.Module, example: torch.Tensor, selection: Any = None, side: str = "model") -> LayerGraph:
    """Fallback for models fx cannot trace: forward hooks on leaf modules, in call order.

    Data flow is unknown here, so edges follow call order (a chain) and depth is the call index.
    """
    records: list[tuple[str, nn.Module, Any]] = []
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            records.append((name, mod, out))  # every call: a shared module gets one tap per call
        return hook

    leaf_prefixes: list[str] = []
    for name, mod in model.named_modules():  # parents come before children
        if not name or any(name.startswith(p) for p in leaf_prefixes):
            continue
        if is_leaf(mod, _leaf_types(selection)) or is_default_tap(mod) or not list(mod.children()):
            leaf_prefixes.append(name + ".")
            handles.append(mod.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            out = model(example)
            first = list(records)
            records.clear()
            try:
                model(_grow(example))
                grown: list[Any] | None = [_shapes(o) for _, _, o in records]
            except Exception:  # noqa: BLE001 - e.g. a batch size written into the model: the tap rules decide
                grown = None
    finally:
        for h in handles:
            h.remove()
    if grown is not None and [n for n, _, _ in records] != [n for n, _, _ in first]:
        grown = None  # the grown batch took another path through the model
    calls = Counter(name for name, _, _ in first)
    seen: Counter[str] = Counter()
    candidates: list[TapPoint] = []
    for i, (name, mod, o) in enumerate(first):
        k, seen[name] = seen[name], seen[name] + 1
        cand = _candidate(name if calls[name] == 1 else f"{name}@{k}", mod, o, i, "",
                          grown[i] if grown is not None else _NOT_PROBED)
        cand.calls = calls[name]
        cand.is_output = o is out or (isinstance(o, tuple) and any(x is out for x in o))
        candidates.append(cand)
    chosen = _select(candidates, selection, side)
    edges = [(a.name, b.name) for a, b in itertools.pairwise(chosen)]
    graph = _finish(chosen, edges, "hooks", None, candidates)
    graph.output_type = type(out).__name__
    graph.output = out
    return graph


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run a forward of a caller's model without changing it: buffers (BatchNorm statistics,
    ``num_batches_tracked``), every submodule's train/eval flag and the global RNG (dropout) are
    as before afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers() if b.device.type != "meta"]
    devices = [d for d in range(torch.cuda.device_count())] if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def trace(model: nn.Module, example: torch.Tensor, selection: Any = None, side: str = "model",
          notify: Callable[[str], None] | None = print,
          materialize: Callable[[], tuple[nn.Module, torch.Tensor]] | None = None) -> LayerGraph:
    """Trace ``model`` on ``example`` (meta tensors welcome); hooks when fx cannot trace it.

    The model is left as it was (:func:`preserved_state`): tracing a user's pretrained guide in
    training mode must not move its BatchNorm statistics. ``materialize`` builds a real (CPU) model
    and example for the hook fallback when the model cannot even run on the meta device (e.g. it
    reads tensor values to decide what to do).
    """
    with preserved_state(model):
        return _trace(model, example, selection, side, notify, materialize)


def _trace(model: nn.Module, example: torch.Tensor, selection: Any, side: str,
           notify: Callable[[str], None] | None,
           materialize: Callable[[], tuple[nn.Module, torch.Tensor]] | None) -> LayerGraph:
    attempts: list[Callable[[], tuple[nn.Module, torch.Tensor]]] = [lambda: (model, example)]
    if example.device.type == "meta" and materialize is not None:
        attempts.append(materialize)  # build a real model only if the meta run fails
    error: BaseException | None = None
    use_hooks = False
    for attempt in attempts:
        m, x = attempt()
        try:
            if not use_hooks:
                try:
                    return trace_fx(m, x, selection, side)
                except (PairgraphError, ShapePropError):
                    raise
                except Exception as e:  # noqa: BLE001 - fx raises many kinds (TraceError, TypeError on Proxy bools, …)
                    use_hooks = True
                    reason = first_line(e) or type(e).__name__
                    if notify:
                        notify(f"notice: torch.fx cannot trace the {side} ({type(model).__name__}: {reason[:160]}); "
                               "falling back to forward hooks — taps are module outputs in call order")
            return trace_hooks(m, x, selection, side)
        except PairgraphError:
            raise
        except ShapePropError as e:
            error = e.cause
        except Exception as e:  # noqa: BLE001 - any failure of the user model is reported below
            error = e
    assert error is not None
    raise PairgraphError(
        f"the {side} ({type(model).__name__}) fails on the example input of shape {tuple(example.shape)}: "
        f"{one_line(error)}",
        f"check {side}.args match the task (input size, channels, vocabulary)",
    ) from None
