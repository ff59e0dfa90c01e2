"""Tracing: a network → a ``LayerGraph`` of tap points, by one of three tap providers.

* ``fx`` — torch.fx: the whole data flow, taps at leaf modules (:class:`LeafTracer`);
* ``timm`` — timm's ``forward_intermediates``: the model's feature levels, where fx cannot go;
* ``hooks`` — forward hooks on leaf modules and whole blocks, in call order (transformers' models).

``layers.provider: auto`` (the default) tries them in that order (timm only for models that have
it) and says when it falls back. Node names are module qualified names (``layer1.0.conv1``), the
names torch.fx and ``named_modules`` use. Shapes come from running a task-built example input on
the meta device, so a paper-size model costs no memory. Which modules fx treats as leaves is
pairgraph's policy (:func:`register_leaf_module`), like timm's ``_fx.py``; which leaves become
tap points and what element of a tuple output is the activation is said per type
(:func:`register_tap_type`). Where each tap's batch axis lies is followed from the input, never
guessed from sizes: the example runs twice, with one more row the second time, and the axis that
grew is the batch axis (a LayerNorm on ``(T, b, d)`` has it at 1; a module whose output does not
depend on the batch, e.g. a positional embedding, has none and is not a tap point). Where the second
run is impossible (a model that hard-codes its batch size) the type's registered axis is used.

Generated code must behave as the model does in training and in eval mode: fx traces both, and a model whose two
graphs differ falls to the next provider (:class:`ModeDependentError`). Hooks record the eval-mode path and tap
only modules that other probe inputs run too (a forward that branches on the data).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import torch
from torch import fx, nn

from pairgraph.core.intermediates import has_intermediates, trace_intermediates
from pairgraph.core.layer_graph import (
    NOT_PROBED,
    LayerGraph,
    TapPoint,
    finish_graph,
    grow,
    leaf_types_of,
    make_candidate,
    select_taps,
    shapes_of,
)
from pairgraph.core.policy import (
    before_blocks,
    block_types,
    expected_input,
    head_names,
    in_head,
    is_default_tap,
    is_leaf,
)
from pairgraph.errors import PairgraphError, first_line, one_line


class LeafTracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn's own modules, the registered leaf modules and tap types,
    and the classes a spec names in ``layers.leaf_types``."""

    def __init__(self, extra_leaves: frozenset[str] = frozenset()):
        super().__init__()
        self.extra_leaves = extra_leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_leaf(m, self.extra_leaves) or super().is_leaf_module(m, qualname)


class _ShapeRecorder(fx.Interpreter):
    """Shape propagation that records each node's output shapes in ``shapes`` and stays quiet."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.extra_traceback = False
        self.shapes: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = shapes_of(result)
        return result


class ForeignConstantError(Exception):
    """The traced graph reads a tensor the model does not hold (a constant fx captured from forward's code):
    the generated network could not find it, so another provider taps the model."""


def _check_attributes(gm: fx.GraphModule, model: nn.Module) -> None:
    """fx stores tensors that forward's code creates as ``_tensor_constantN`` attributes of the traced model;
    a freshly built model has none, so such a graph cannot be generated code (they are removed again)."""
    constants = [str(n.target) for n in gm.graph.nodes if n.op == "get_attr"
                 and re.fullmatch(r"_tensor_constant\d+", str(n.target))]
    for name in constants:
        if hasattr(model, name):
            delattr(model, name)
    if constants:
        raise ForeignConstantError(f"the graph reads {constants[0]}, a tensor forward's code creates, which the "
                                   "generated network could not hold")


def _grown_shapes(gm: fx.GraphModule, example: torch.Tensor) -> dict[fx.Node, Any] | None:
    """Each node's output shapes on the example grown by one row; None when the model cannot run on it."""
    recorder = _ShapeRecorder(gm)
    try:
        recorder.run(grow(example))
    except Exception:  # noqa: BLE001 - e.g. a batch size written into the model: the tap rules decide
        return None
    return recorder.shapes


class ShapePropError(Exception):
    """The graph traced, but running it on the example input failed (``cause`` says why)."""

    def __init__(self, cause: BaseException):
        self.cause = cause
        super().__init__(str(cause))


class ModeDependentError(Exception):
    """fx's graph differs between training and eval mode (``self.training`` read in forward's code): code
    generated from one graph would run it in both modes, so another provider taps the model."""


def _traced(model: nn.Module, selection: Any) -> fx.GraphModule:
    """fx's graph of ``model``, traced in training and in eval mode; :class:`ModeDependentError` when the two
    differ (functional dropout, stochastic depth or an auxiliary head that forward switches on ``self.training``)."""
    modes = [(m, m.training) for m in model.modules()]
    graphs = []
    try:
        for training in (True, False):
            model.train(training)
            gm = fx.GraphModule(model, LeafTracer(leaf_types_of(selection)).trace(model), type(model).__name__)
            _check_attributes(gm, model)
            graphs.append(gm)
    finally:
        for m, training in modes:
            m.training = training
    train, evaluation = graphs[0].code.splitlines(), graphs[1].code.splitlines()
    if train != evaluation:
        line = next((a for a, b in zip(train, evaluation, strict=False) if a != b), train[-1]).strip()
        raise ModeDependentError(f"its graph differs between training and eval mode, at `{line[:100]}`")
    return graphs[0]


def trace_fx(model: nn.Module, example: torch.Tensor, selection: Any = None, side: str = "model") -> LayerGraph:
    """Trace with torch.fx (in both modes, :func:`_traced`) and propagate shapes; raises whatever fx raises on
    untraceable code."""
    gm = _traced(model, selection)
    recorder = _ShapeRecorder(gm)
    try:
        result = recorder.run(example)
    except Exception as e:  # noqa: BLE001 - traced fine, but the model does not run on this input
        raise ShapePropError(e) from None
    grown = _grown_shapes(gm, example)
    modules = dict(model.named_modules())
    heads = head_names(model)
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
        cand = make_candidate(name, modules[node.target], recorder.shapes.get(node), len(candidates), node.name,
                          grown.get(node) if grown is not None else NOT_PROBED)
        cand.calls = calls[node.target]
        cand.is_output = node in feeds_output or _reaches_output_unweighted(node, output_node, gm)
        cand.is_head = in_head(name, heads)
        candidates.append(cand)
        by_node[node] = cand
    chosen = select_taps(candidates, selection, side)
    chosen_nodes = {n: c for n, c in by_node.items() if c in chosen}
    edges = _tap_edges(gm, chosen_nodes)
    graph = finish_graph(chosen, edges, "fx", gm, candidates)
    graph.output_type = type(result).__name__.removeprefix("immutable_")  # fx's immutable_dict/_list
    graph.output = result
    return graph


def _reaches_output_unweighted(node: fx.Node, output_node: fx.Node, gm: fx.GraphModule) -> bool:
    """True when ``node`` reaches the output through parameter-free steps only: indexing, reshapes,
    arithmetic, pooling, ``nn.Identity``/``Flatten``/``Dropout`` (``out[0]``, timm's ``head.fc`` → flatten,
    LeViT's averaged heads) — no module or function with weights of its own between it and the logits."""
    frontier, seen = [node], {node}
    while frontier:
        n = frontier.pop()
        for u in n.users:
            if u is output_node:
                return True
            if u not in seen and not _has_weights(u, gm):
                seen.add(u)
                frontier.append(u)
    return False


def _has_weights(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return any(True for _ in gm.get_submodule(str(node.target)).parameters())
    return any(a.op == "get_attr" for a in node.all_input_nodes)  # e.g. F.linear(x, self.weight)


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

    Data flow is unknown here, so edges follow call order (a chain) and depth is the call index. Under
    ``layers.preset: paper`` every module is hooked, nested ones too, as the authors' code hooks every module
    of its types: a decoder layer and its attention, linears and norms (in the order their calls finish).
    """
    records: list[tuple[str, nn.Module, Any]] = []
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            records.append((name, mod, out))  # every call: a shared module gets one tap per call
        return hook

    leaf_prefixes: list[str] = []
    nested = getattr(selection, "preset", None) == "paper"
    for name, mod in model.named_modules():  # parents come before children
        if not name or any(name.startswith(p) for p in leaf_prefixes):
            continue
        if nested or is_leaf(mod, leaf_types_of(selection)) or is_default_tap(mod) or not list(mod.children()):
            if not nested:
                leaf_prefixes.append(name + ".")
            handles.append(mod.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            model.eval()  # the taps of inference (no auxiliary heads); the caller's modes are restored by trace()
            out = model(example)
            first = list(records)
            unstable = _unstable_modules(model, example, records, first)
            records.clear()
            try:
                model(grow(example))
                grown: list[Any] | None = [shapes_of(o) for _, _, o in records]
            except Exception:  # noqa: BLE001 - e.g. a batch size written into the model: the tap rules decide
                grown = None
    finally:
        for h in handles:
            h.remove()
    if grown is not None and [n for n, _, _ in records] != [n for n, _, _ in first]:
        grown = None  # the grown batch took another path through the model
    if unstable:
        keep = [i for i, (n, _, _) in enumerate(first) if n not in unstable]
        first = [first[i] for i in keep]
        grown = [grown[i] for i in keep] if grown is not None else None
    heads = head_names(model)
    calls = Counter(name for name, _, _ in first)
    seen: Counter[str] = Counter()
    candidates: list[TapPoint] = []
    for i, (name, mod, o) in enumerate(first):
        k, seen[name] = seen[name], seen[name] + 1
        cand = make_candidate(name if calls[name] == 1 else f"{name}@{k}", mod, o, i, "",
                          grown[i] if grown is not None else NOT_PROBED)
        cand.calls = calls[name]
        cand.is_output = o is out or (isinstance(o, tuple) and any(x is out for x in o))
        cand.is_head = in_head(cand.name, heads)
        candidates.append(cand)
    chosen = select_taps(candidates, selection, side)
    edges = [(a.name, b.name) for a, b in itertools.pairwise(chosen)]
    graph = finish_graph(chosen, edges, "hooks", None, candidates)
    if unstable:
        graph.notes.append(f"the {side}'s forward runs other modules for other inputs ({', '.join(sorted(unstable)[:3])} "
                           "…): only modules every input passes through are tapped")
    graph.output_type = type(out).__name__
    graph.output = out
    return graph


def _unstable_modules(model: nn.Module, example: torch.Tensor, records: list[tuple[str, nn.Module, Any]],
                      first: list[tuple[str, nn.Module, Any]]) -> set[str]:
    """Hooked modules not called the same number of times for other inputs (zeros, ones, noise; the tokens reversed):
    a path that depends on the data. Taps on it would be missing from some batches. Empty on the meta device."""
    if example.device.type == "meta":
        return set()
    probes = [example.flip(-1)] if not example.is_floating_point() else [
        torch.zeros_like(example), torch.ones_like(example), torch.randn_like(example) * 2]
    calls = Counter(n for n, _, _ in first)
    unstable: set[str] = set()
    for probe in probes:
        records.clear()
        model(probe)
        other = Counter(n for n, _, _ in records)
        unstable |= {n for n in calls.keys() | other.keys() if calls[n] != other[n]}
    return unstable


#: the tap providers (:func:`trace` tries them in this order under ``layers.provider: auto``)
PROVIDERS: dict[str, Callable[[nn.Module, torch.Tensor, Any, str], LayerGraph]] = {
    "fx": trace_fx, "timm": trace_intermediates, "hooks": trace_hooks}
_FALLBACK = {"timm": "falling back to timm's forward_intermediates — taps are the model's feature levels",
             "hooks": "falling back to forward hooks — taps are module outputs in call order"}


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
    """Trace ``model`` on ``example`` (meta tensors welcome) with ``selection.provider`` (default auto:
    fx, else timm's forward_intermediates where the model has it, else hooks).

    The model is left as it was (:func:`preserved_state`): tracing a user's pretrained guide in
    training mode must not move its BatchNorm statistics. ``materialize`` builds a real (CPU) model
    and example for the hook fallback when the model cannot even run on the meta device (e.g. it
    reads tensor values to decide what to do).
    """
    with preserved_state(model):
        return _trace(model, example, _with_blocks(model, selection), side, notify, materialize)


def _with_blocks(model: nn.Module, selection: Any) -> Any:
    """``selection`` with the blocks a library declares (:func:`block_types`) kept whole, and a transformers
    text model's embedding norms left out (:func:`before_blocks`), unless it names the types to tap itself."""
    blocks = block_types(model)
    if not blocks or getattr(selection, "types", None) is not None:
        return selection
    update: dict[str, Any] = {"leaf_types": sorted({*leaf_types_of(selection), *blocks})}
    if list(getattr(selection, "include", ["*"])) == ["*"]:
        update["exclude"] = [*getattr(selection, "exclude", []), *before_blocks(model, blocks)]
    if selection is None:
        return SimpleNamespace(**update)
    return selection.model_copy(update=update)


def _trace(model: nn.Module, example: torch.Tensor, selection: Any, side: str,
           notify: Callable[[str], None] | None,
           materialize: Callable[[], tuple[nn.Module, torch.Tensor]] | None) -> LayerGraph:
    provider = getattr(selection, "provider", None) or "auto"
    if getattr(selection, "preset", None) == "paper":
        provider = "hooks"  # the authors' code hooks modules, nested ones included
    chain = ["fx", *(["timm"] if has_intermediates(model) else []), "hooks"] if provider == "auto" else [provider]
    attempts: list[Callable[[], tuple[nn.Module, torch.Tensor]]] = [lambda: (model, example)]
    if example.device.type == "meta" and materialize is not None:
        attempts.append(materialize)  # build a real model only if the meta run fails
    error: BaseException | None = None
    for attempt in attempts:
        m, x = attempt()
        try:
            return _first_that_taps(m, x, selection, side, chain, notify)
        except PairgraphError:
            raise
        except ShapePropError as e:
            error = e.cause
        except Exception as e:  # noqa: BLE001 - any failure of the user model is reported below
            error = e
    assert error is not None
    expects = expected_input(model)
    raise PairgraphError(
        f"the {side} ({type(model).__name__}) fails on the example input of shape {tuple(example.shape)}: "
        f"{one_line(error)}" + (f"; the model expects {expects}" if expects else ""),
        f"check {side}.args match the task (input size, channels, vocabulary)"
        + (", or give the task inputs of that size" if expects else ""),
    ) from None


def _first_that_taps(model: nn.Module, example: torch.Tensor, selection: Any, side: str, chain: list[str],
                     notify: Callable[[str], None] | None) -> LayerGraph:
    """The graph of the first provider in ``chain`` that can tap ``model``; a provider that cannot is dropped
    from ``chain`` (so a materialized retry does not try it again). The last one's failure is the model's."""
    while True:
        name = chain[0]
        try:
            graph = PROVIDERS[name](model, example, selection, side)
            for note in graph.notes if notify else ():
                notify(f"notice: {note}")
            return graph
        except (PairgraphError, ShapePropError):
            raise
        except Exception as e:  # any kind: fx raises TraceError, TypeError on Proxy bools, NotImplementedError, …
            if len(chain) == 1:
                if name == "fx":
                    raise PairgraphError(f"torch.fx cannot trace the {side} ({type(model).__name__}): "
                                         f"{one_line(e)}", f"set {side}.layers.provider: auto (it falls back to "
                                         "timm's forward_intermediates or forward hooks)") from None
                raise
            chain.pop(0)
            if notify:
                reason = (f"{type(e).__name__}: {first_line(e)}" if first_line(e) else type(e).__name__)[:160]
                what = "torch.fx cannot trace" if name == "fx" else "forward_intermediates fails on"
                notify(f"notice: {what} the {side} ({type(model).__name__}: {reason}); {_FALLBACK[chain[0]]}")
