"""``pairgraph.compile``: spec → traced layer graphs → correspondence → generated module + renders; and
:func:`build_pair`, which the generated module calls to build the pair it describes."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml
from torch import nn

from pairgraph.compiler.build import adapt_inputs, build_networks, model_kwargs
from pairgraph.compiler.calibration import CompileContext
from pairgraph.compiler.codegen import generate
from pairgraph.compiler.guide_weights import resolve_guide_weights
from pairgraph.compiler.mapping import Correspondence, build_mapping
from pairgraph.compiler.render import render_mapping
from pairgraph.config import PairSpec, as_spec
from pairgraph.core.layer_graph import LayerGraph
from pairgraph.core.loss import Balance, Feed, GuidedPair, Objective, WeightSchedule
from pairgraph.core.objectives import objective_class
from pairgraph.core.taps import select_logits
from pairgraph.core.trace import trace
from pairgraph.core.weights import check_fits, read_state
from pairgraph.errors import PairgraphError, check_type, one_line
from pairgraph.paths import atomic_write, refuse_replacing
from pairgraph.tasks import get_task
from pairgraph.zoo import build_model


@dataclass
class CompiledPair:
    """The compiler's product: layer graphs, correspondence and the generated module on disk."""

    spec: PairSpec
    guide: LayerGraph
    target: LayerGraph
    correspondence: Correspondence
    out_dir: Path
    module: ModuleType

    def build(self, device: str | torch.device = "cpu", guide_weights: str | None = None) -> GuidedPair:
        """A fresh :class:`~pairgraph.core.loss.GuidedPair` (seeded init) on ``device``: the generated module's
        ``build()``. Train it with :func:`pairgraph.train`."""
        return self.module.build(device=device, guide_weights=guide_weights)


def _model(spec: PairSpec, side: str, task: Any, device: str = "meta") -> nn.Module:
    net = getattr(spec, side)
    try:
        with torch.device(device):
            model = build_model(net.model, net.args, model_kwargs(net, task))
    except PairgraphError as e:
        raise PairgraphError(f"{side}: {e.message}", e.hint) from None
    except Exception as e:  # noqa: BLE001 - any failure of user model code becomes one line
        if device == "meta":  # pairgraph's shortcut failed (init code that reads values), not the args: the CPU
            return _model(spec, side, task, "cpu")
        raise PairgraphError(
            f"{side}: building {net.model!r} with args {net.args} failed: {one_line(e)}",
            f"fix {side}.args (see `pairgraph zoo` for presets)",
        ) from None
    if net.inputs:
        _check_inputs(model, side, net.inputs, task)
    return adapt_inputs(model, net, task, side)


_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _forward_params(model: nn.Module) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None


def _check_one_input(model: nn.Module, side: str, ref: str) -> None:
    """pairgraph feeds a network one tensor: a forward that needs more inputs is said so, not traced."""
    params = _forward_params(model)
    required = [p.name for p in params or [] if p.kind in _KINDS and p.default is inspect.Parameter.empty]
    if len(required) > 1:
        feeds = ", ".join(f"{n}: {'mask' if 'mask' in n else 'input'}" for n in required)
        raise PairgraphError(f"{side} {ref!r}: forward needs {len(required)} inputs ({', '.join(required)}), but "
                             "pairgraph feeds it one tensor (the task's input)",
                             f"say what feeds each with {side}.inputs: {{{feeds}}}, or give the others defaults")


def _check_inputs(model: nn.Module, side: str, inputs: dict[str, str], task: Any) -> None:
    """``inputs`` names forward's parameters (did-you-mean), covers the required ones, and asks for a mask
    only of a task whose inputs are token sequences."""
    params = _forward_params(model)
    if params is None:
        return
    names = [p.name for p in params if p.kind in _KINDS]
    for name in inputs:
        if name not in names and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            close = difflib.get_close_matches(name, names, n=1)
            raise PairgraphError(f"{side}.inputs names {name!r}, which {type(model).__name__}.forward does not take "
                                 f"(it takes {', '.join(names) or 'no named inputs'})",
                                 f"did you mean {close[0]!r}?" if close else f"name one of {', '.join(names)}")
    missing = [p.name for p in params if p.kind in _KINDS and p.default is inspect.Parameter.empty and p.name not in inputs]
    if missing:
        raise PairgraphError(f"{side}.inputs does not feed forward's required input(s) {', '.join(missing)}",
                             f"add them to {side}.inputs (input or mask), or give them defaults")
    if "mask" in inputs.values() and task.example_input(1, device="meta").is_floating_point():
        raise PairgraphError(f"{side}.inputs asks for a padding mask, but the task's inputs are not token sequences",
                             f"feed only the input (drop the mask entries of {side}.inputs)")


def _check_checkpoint(guide: nn.Module, path: str) -> None:
    """The guide checkpoint must have the guide's keys and shapes (checked on the meta model)."""
    check_fits(guide, read_state(path, "guide"), path, "guide")


def module_name(spec: PairSpec) -> str:
    """The name a pair's generated module is imported under: ``guided_pair_<pair name>``."""
    return "guided_pair_" + re.sub(r"\W", "_", spec.name)


def import_generated(path: Path, name: str) -> ModuleType:
    """Import the generated module at ``path`` as ``name`` (``name_2``, … when another file holds that name)."""
    path = path.resolve()
    base, n = name, 1
    while getattr(sys.modules.get(name), "__file__", str(path)) != str(path):
        n += 1
        name = f"{base}_{n}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_pair(
    spec: PairSpec,
    guide_cls: Callable[[nn.Module], nn.Module],
    target_cls: Callable[[nn.Module], nn.Module],
    pairs: Sequence[tuple[str, str, float]],
    device: str | torch.device = "cpu",
    guide_weights: str | Path | None = None,
    objective: type[Objective] | None = None,
) -> GuidedPair:
    """Build the :class:`~pairgraph.core.loss.GuidedPair` of a resolved spec: both networks seeded (guide
    ``train.seed``, target ``train.seed + 1``) and wrapped by the generated classes, the guide's weights loaded,
    the objective ``guidance.mode`` names, the weight schedule, the balance rule and the task's loss.

    Args:
        spec: the resolved spec (a generated module's ``SPEC``).
        guide_cls, target_cls: the generated network classes (or :func:`pairgraph.core.taps.tap_network`'s).
        pairs: the correspondence, (guide tap, target tap, weight) per pair.
        device: where the pair lives.
        guide_weights: a checkpoint overriding ``guide.weights``, which is otherwise resolved by
            :func:`~pairgraph.compiler.guide_weights.resolve_guide_weights` (never trains: a ``weights: train``
            guide not cached yet is a one-line error; ``pairgraph.train`` trains it first).
        objective: the objective's class; default: the one ``guidance.mode`` names (a generated module passes
            the user's class of a ``package.module:ClassName`` mode, which it imports).

    Example (what ``build/<name>/guided_pair.py`` does)::

        pair = build_pair(SPEC, Guide, Target, MAPPING, device="cuda")
        out = pair(x, y, step)           # out.loss: task + weight · alignment
    """
    task = get_task(spec.task)
    weights = guide_weights or resolve_guide_weights(spec, purpose="building the pair")
    guide, target = build_networks(spec, guide_cls, target_cls, task, device, weights)
    kind = objective or objective_class(spec.guidance.mode)
    return GuidedPair(guide, target, pairs, kind.from_spec(spec, guide, target, pairs, task, device),
                      task_loss=task.loss, schedule=WeightSchedule.from_spec(spec), balance=Balance.from_spec(spec),
                      feed=Feed.from_spec(spec, task))


def trace_pair(spec: PairSpec, notify: Callable[[str], None] | None = print) -> dict[str, LayerGraph]:
    """Both networks built on the meta device (no memory, no data) and traced to layer graphs; a
    guide checkpoint is checked against the guide's keys and shapes."""
    task = get_task(spec.task)
    example = task.example_input(2, device="meta")
    graphs = {}
    for side in ("guide", "target"):
        model = _model(spec, side, task)
        if not getattr(spec, side).inputs:
            _check_one_input(model, side, getattr(spec, side).model)
        if side == "guide" and spec.guide.checkpoint:
            _check_checkpoint(model, spec.guide.checkpoint)  # fail now, not after data loading at train time
        real = lambda side=side: (_model(spec, side, task, "cpu"), task.example_input(2, device="cpu"))
        on_meta = next(iter(model.parameters()), torch.empty(0, device="meta")).is_meta
        graphs[side] = trace(model, example if on_meta else real()[1], getattr(spec, side).layers, side, notify, real)
        _check_output(graphs[side], side, getattr(spec, side), task.model_kwargs().get("num_classes"))
    return graphs


def _check_output(graph: LayerGraph, side: str, net: Any, classes: int | None = None) -> None:
    """The task loss needs one tensor of outputs: the forward's tensor, or the entry ``net.output`` names
    (default ``logits`` / the first tensor) of a dict, ``ModelOutput`` or tuple; when that default is not the
    task's ``classes`` wide but another entry is, ``output:`` is named. Said at compile, not mid-training."""
    if graph.output_type in ("Tensor", "Parameter") and net.output is None:
        return
    try:
        if graph.output is None:
            raise PairgraphError(f"forward returned a {graph.output_type}", "make forward return the logits tensor")
        logits = select_logits(graph.output, net.output)
    except PairgraphError as e:
        raise PairgraphError(f"{side} {net.model!r}: {e.message}", e.hint) from None
    out = graph.output
    entries = out.items() if isinstance(out, dict) else enumerate(out) if isinstance(out, tuple | list) else []
    fits = [k for k, v in entries if isinstance(v, torch.Tensor) and v.shape[-1:] == (classes,)]
    if net.output is None and classes and logits.shape[-1:] != (classes,) and fits:
        raise PairgraphError(f"{side} {net.model!r}: forward returns several tensors, and the one taken as the logits "
                             f"has {logits.shape[-1]} values where the task has {classes} classes",
                             f"name the logits with {side}.output: {fits[0]!r}")
    graph.output_key = net.output


class _DataNeeded(Exception):
    """Raised by :class:`_NoDataContext` where a mapper would measure on data."""


@dataclass
class _NoDataContext:
    """A mapping context for checking a spec: the spec is there, data is not."""

    spec: PairSpec

    def activations(self, *args: Any, **kwargs: Any) -> Any:
        raise _DataNeeded


@dataclass
class CheckedSpec:
    """What :func:`check` found: the layer graphs, and the mapping when it needs no data."""

    spec: PairSpec
    guide: LayerGraph
    target: LayerGraph
    correspondence: Correspondence | None


def check(spec: PairSpec | str | Path | dict[str, Any], overrides: list[str] | None = None,
          notify: Callable[[str], None] | None = print) -> CheckedSpec:
    """Everything ``compile`` checks that needs no data: the spec, both models built and traced on the
    meta device, the guide checkpoint, the layer selections, and the mapping (a data-driven mapper's
    options are checked; its measurement is left to ``compile``). Writes nothing."""
    spec = as_spec(spec, overrides)
    graphs = trace_pair(spec, notify)
    try:
        corr = build_mapping(spec.mapping.kind, graphs["guide"], graphs["target"], _NoDataContext(spec),
                             **spec.mapping.options())
    except _DataNeeded:
        corr = None
    return CheckedSpec(spec, graphs["guide"], graphs["target"], corr)


def _write_outputs(out: Path, spec: PairSpec, graphs: dict[str, LayerGraph], corr: Correspondence, source: str,
                   render: bool) -> None:
    resolved = spec.resolved()
    mapping = {"name": spec.name, **corr.to_json(), "guide": graphs["guide"].to_json(),
               "target": graphs["target"].to_json()}
    files = {"guided_pair.py": generate(spec, graphs["guide"], graphs["target"], corr, source, module_name(spec)),
             "spec.yaml": yaml.safe_dump(resolved, sort_keys=False), "mapping.json": json.dumps(mapping, indent=2) + "\n"}
    for name, text in files.items():
        refuse_replacing(out / name, text, [source], "-o")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            atomic_write(out / name, text)
        if render:
            render_mapping(graphs["guide"], graphs["target"], corr, out / "mapping",
                           title=f"{spec.name}: {spec.guide.model} → {spec.target.model} ({corr.kind}, {len(corr)} pairs)")
    except OSError as e:
        raise PairgraphError(f"cannot write the compiled pair to {e.filename or out}: {e.strerror or e}",
                             "free disk space, make the folder writable, or pass another output folder (-o)") from None


def compile(
    spec: PairSpec | str | Path | dict[str, Any],
    out_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    render: bool = True,
    notify: Callable[[str], None] | None = print,
) -> CompiledPair:
    """Compile a spec: trace both networks on the meta device, map them, write ``out_dir``.

    Only a data-driven mapper (``learned``) builds the real models, to measure similarities on
    calibration batches of the task's training data.

    ``out_dir`` (default ``build/<name>``) receives ``guided_pair.py``, ``mapping.json``,
    ``spec.yaml`` (resolved) and, with ``render``, ``mapping.png``/``mapping.svg``.
    """
    check_type(out_dir, (str, os.PathLike, type(None)), "out_dir")
    source = str(spec) if isinstance(spec, str | Path) else "<python>"
    spec = as_spec(spec, overrides)
    graphs = trace_pair(spec, notify)
    context = CompileContext(spec, graphs["guide"], graphs["target"], notify)  # builds models only if a mapper asks
    corr = build_mapping(spec.mapping.kind, graphs["guide"], graphs["target"], context, **spec.mapping.options())
    out = Path(out_dir) if out_dir is not None else Path("build") / spec.name
    _write_outputs(out, spec, graphs, corr, source, render)
    module = import_generated(out / "guided_pair.py", module_name(spec))
    return CompiledPair(spec, graphs["guide"], graphs["target"], corr, out, module)
