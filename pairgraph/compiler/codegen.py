"""Codegen: fx graphs + correspondence → a readable, importable ``guided_pair.py``.

The generated module imports torch, what the fx code refers to, ``GuidedPair``, ``PairSpec`` and
``build_pair`` from ``pairgraph``, the network base its networks need (``TappedNetwork``, ``hooked``
or ``intermediates``), and the user's class of a ``guidance.mode: package.module:ClassName``.
Each network becomes a :class:`~pairgraph.core.taps.TappedNetwork` subclass whose ``forward``
is the fx graph's code with its output changed to ``(output, {tap: activation})``; a network fx
could not trace becomes a hook-based network instead. ``build()`` returns the
:class:`~pairgraph.core.loss.GuidedPair` (:func:`pairgraph.build_pair` on the module's ``SPEC``).
"""

from __future__ import annotations

import ast
import builtins
import math
import operator
import pprint
import textwrap
import types
from typing import Any

import torch
from torch import fx

from pairgraph.compiler.mapping import Correspondence
from pairgraph.config import PairSpec
from pairgraph.core.layer_graph import LayerGraph
from pairgraph.core.objectives import objective_class
from pairgraph.core.taps import select_logits
from pairgraph.version import __version__


def tapped_graph(graph: LayerGraph) -> fx.Graph:
    """A copy of ``graph.gm``'s graph whose output is ``(output, {tap name: activation})``."""
    assert graph.gm is not None
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = new.graph_copy(graph.gm.graph, env)
    for node in new.nodes:  # a string annotation ("Tensor" under postponed annotations) becomes the real type
        if node.op == "placeholder" and isinstance(node.type, str):
            node.type = torch.Tensor if node.type.rsplit(".", 1)[-1] == "Tensor" else None
    by_name = {n.name: n for n in env.values()}
    taps: dict[str, fx.Node] = {}
    for t in graph.taps:  # graph_copy left no output node, so these append at the end
        node = by_name[t.fx_node]
        if t.output_index is not None:
            node = new.call_function(operator.getitem, (node, t.output_index))
        if t.batch_axis:
            node = new.call_method("movedim", (node, t.batch_axis, 0))
        taps[t.name] = node
    if graph.output_type not in ("Tensor", "Parameter") or graph.output_key is not None:
        out = new.call_function(select_logits, (out, graph.output_key))  # the logits of a dict/tuple output
    new.output((out, taps))
    new.lint()
    return new


#: what a generated module calls to build a network whose taps a provider other than fx found
_FACTORY = {"hooks": "hooked", "timm": "intermediates"}


def _import_line(name: str, obj: Any) -> str | None:
    """How the generated module gets a global that fx code refers to."""
    if name in vars(builtins) and getattr(builtins, name) is obj:
        return None
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return f"{name} = float({str(obj)!r})"
    if isinstance(obj, str | int | bool):  # e.g. string annotations under `from __future__ import annotations`
        return f"{name} = {obj!r}"
    if obj is type(None):
        return f"{name} = type(None)"
    if isinstance(obj, types.ModuleType):
        return f"import {obj.__name__}" if name == obj.__name__ else f"import {obj.__name__} as {name}"
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if mod and qual and "." not in qual and "<" not in qual:
        return f"from {mod} import {qual}" + ("" if qual == name else f" as {name}")
    raise ValueError(f"cannot emit an import for global {name!r} ({obj!r})")


def network_source(cls_name: str, graph: LayerGraph, title: str) -> tuple[str, list[str]]:
    """Source of one network class and the import lines it needs."""
    taps = tuple(graph.names)
    if graph.method != "fx":
        spec = [t.spec() for t in graph.taps]
        why = ("its taps are timm's forward_intermediates feature levels" if graph.method == "timm"
               else "torch.fx could not trace it, so its taps come from forward hooks")
        body = f"# {title}: {why}.\n"
        output = f", output={graph.output_key!r}" if graph.output_key is not None else ""
        body += f"{cls_name} = {_FACTORY[graph.method]}(\n{textwrap.indent(pprint.pformat(spec, width=100), '    ')}{output}\n)\n"
        return body, []
    code = tapped_graph(graph).python_code(root_module="self")
    src = textwrap.dedent(code.src).strip("\n")
    # fx.wrap'ed functions (torchvision's stochastic_depth, a user's own) are plain imported calls here: the
    # wrap statement fx writes above forward is for re-tracing, and fails inside a class body
    src = "\n".join(ln for ln in src.splitlines() if not ln.startswith("torch.fx._symbolic_trace.wrap("))
    used = {n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name)}  # names, not keyword arguments
    imports = [line for n, o in code.globals.items() if n in used and (line := _import_line(n, o))]
    doc = f'"""{title}: forward returns (output, taps) — {len(taps)} tap points."""'
    lines = [f"class {cls_name}(TappedNetwork):", f"    {doc}", ""]
    lines.append(f"    TAPS = {pprint.pformat(taps, width=100, indent=4)}".replace("\n", "\n    "))
    lines.append("")
    lines.append(textwrap.indent(src, "    "))
    return "\n".join(lines) + "\n", imports


def _user_objective(spec: PairSpec, taken: set[str]) -> tuple[list[str], str]:
    """The import line and ``build_pair`` argument of a ``package.module:ClassName`` guidance mode (none for a
    registered one): the generated module imports the user's class and hands it over, readably."""
    module, _, attr = spec.guidance.mode.partition(":")
    if not attr:
        return [], ""
    name = attr if attr not in taken else "UserObjective"
    line = f"from {module} import {attr}" + ("" if name == attr else f" as {name}")
    return ["", f"{line}  # guidance.mode: your objective (its package must be importable where this runs)"], \
        f", objective={name}"


def generate(spec: PairSpec, guide: LayerGraph, target: LayerGraph, corr: Correspondence, source: str,
             module_name: str) -> str:
    """The text of ``guided_pair.py`` (imported by training as ``module_name``)."""
    g_src, g_imp = network_source("Guide", guide, f"Guide `{spec.guide.model}`")
    t_src, t_imp = network_source("Target", target, f"Target `{spec.target.model}`")
    extra = sorted(set(g_imp + t_imp) - {"import torch"})
    bases = sorted({"TappedNetwork" if g.method == "fx" else _FACTORY[g.method] for g in (guide, target)})
    imports = ["import torch", *extra, "", "from pairgraph import GuidedPair, PairSpec, build_pair",
               f"from pairgraph.core.taps import {', '.join(bases)}"]
    taken = {"Guide", "Target", "SPEC", "MAPPING", "build", "GuidedPair", "PairSpec", "build_pair", *bases,
             *(line.split()[-1] for line in imports if line)}
    user_import, objective = _user_objective(spec, taken)
    header = f'''"""Guided pair {spec.name!r}, generated by pairgraph {__version__} from {source}.

Do not edit: re-run `pairgraph compile`. `pairgraph train` imports this file by its path, as module
{module_name!r}, and calls build(). Build it yourself with

    from guided_pair import build
    pair = build()                      # a pairgraph.GuidedPair
    out = pair(x, y, step)              # out.loss = {objective_class(spec.guidance.mode).describe(spec)}
"""
'''
    mapping = pprint.pformat([tuple(p) for p in corr.pairs], width=110)
    resolved = pprint.pformat(spec.resolved(), width=110, sort_dicts=False)
    return "\n".join([
        header,
        *imports,
        *user_import,
        "",
        "# The resolved spec this pair was compiled from (spec.yaml beside this file holds the same).",
        f"SPEC = PairSpec.model_validate(\n{textwrap.indent(resolved, '    ')}\n)",
        "",
        f"# The correspondence I ({corr.kind} mapping): (guide tap, target tap, weight).",
        f"MAPPING = {mapping}",
        "",
        "",
        g_src,
        "",
        t_src,
        "",
        "def build(device: str | torch.device = 'cpu', guide_weights: str | None = None) -> GuidedPair:",
        '    """Build both networks from SPEC (seeded) and wrap them as a GuidedPair on ``device``."""',
        f"    return build_pair(SPEC, Guide, Target, MAPPING, device=device, guide_weights=guide_weights{objective})",
        "",
    ])
