"""After training: which pairs of the mapping the target learned to match, when, and which never.

:func:`inspect_run` reads a run folder — its ``build/mapping.json`` (the two layer graphs and the
correspondence it trained with; a study's stored run has none, and its ``spec.yaml`` is compiled
again) and ``metrics.jsonl`` (each guided step's ``terms``: every pair's
1 − similarity) — and writes ``mapping.html`` (the mapping page with the curves added) and
``mapping_training.png``: the curves, and a pair × step map of 1 − similarity with the step at
which each pair was first matched (1 − similarity ≤ ``threshold``) marked.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from pairgraph.analysis.runs import load_run
from pairgraph.compiler.mapping import Correspondence
from pairgraph.compiler.mapping_html import MATCHED, mapping_page, training_curves
from pairgraph.compiler.pipeline import compile as compile_pair
from pairgraph.core.layer_graph import LayerGraph, TapPoint
from pairgraph.errors import PairgraphError
from pairgraph.paths import atomic_write


@dataclass
class Inspection:
    """What :func:`inspect_run` found and wrote."""

    curves: dict[str, Any]  # :func:`pairgraph.compiler.mapping_html.training_curves`
    files: list[Path]
    pairs: int  # pairs in the mapping (a pair never logged has no curve)


def graph_from_json(data: dict[str, Any]) -> LayerGraph:
    """A :class:`LayerGraph` back from ``mapping.json``'s ``guide``/``target`` (taps and edges; no module)."""
    taps = [TapPoint(t["name"], t["type"], tuple(t["shape"]), depth=int(t.get("depth", 0)), index=i)
            for i, t in enumerate(data["taps"])]
    g = nx.DiGraph()
    g.add_nodes_from(t.name for t in taps)
    g.add_edges_from(tuple(e) for e in data.get("edges", []))
    return LayerGraph(taps, g, data.get("method", "?"))


def _read_mapping(run: Path) -> tuple[LayerGraph, LayerGraph, Correspondence] | None:
    """The graphs and correspondence of ``<run>/build/mapping.json``; None when the run has none."""
    path = run / "build" / "mapping.json"
    if not path.is_file():
        return None
    try:
        mapping = json.loads(path.read_text())
        return graph_from_json(mapping["guide"]), graph_from_json(mapping["target"]), Correspondence.from_json(mapping)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise PairgraphError(f"{path} is not a mapping pairgraph wrote ({type(e).__name__}: {e})",
                             "delete it: `pairgraph inspect` then compiles the run's spec.yaml again") from None


def _compiled(run: Path) -> tuple[LayerGraph, LayerGraph, Correspondence]:
    """The run's spec compiled again (a study's stored run keeps spec.yaml and metrics, not build/)."""
    if not (run / "spec.yaml").is_file():
        raise PairgraphError(f"{run} has neither build/mapping.json nor spec.yaml, so its mapping is unknown",
                             "pass a run folder written by `pairgraph train` or `pairgraph study`")
    with tempfile.TemporaryDirectory() as tmp:
        cp = compile_pair(run / "spec.yaml", Path(tmp), render=False, notify=None)
    return cp.guide, cp.target, cp.correspondence


def inspect_run(run: str | Path, out: str | Path | None = None, threshold: float = MATCHED) -> Inspection:
    """Write ``mapping.html`` and ``mapping_training.png`` for a run (into ``out``, default the run folder).

    The mapping is the run's ``build/mapping.json``, or its ``spec.yaml`` compiled again when there is
    none; a pair the run never logged (a mapping that has changed since) has no curve.
    """
    if not 0 <= threshold <= 2:  # 1 − CKA lies in [0, 1], 1 − RSA in [0, 2]; also refuses NaN
        raise PairgraphError(f"threshold must be between 0 and 2 (got {threshold!r})", "pass e.g. --threshold 0.1")
    data = load_run(run)
    guide, target, corr = _read_mapping(data.path) or _compiled(data.path)
    curves = training_curves(data.steps, corr.pairs, threshold)
    if not curves["pairs"]:
        raise PairgraphError(f"run {data.path} logged no guidance term of its mapping's {len(corr)} pairs (a baseline "
                             "run, no guided step yet, or a mapping that has changed since)",
                             "inspect a guided run whose metrics.jsonl records carry `terms` for these pairs")
    folder = Path(out) if out is not None else data.path
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{data.name}: {corr.kind} mapping, {len(corr)} pairs, trained ({data.path})"
    atomic_write(folder / "mapping.html", mapping_page(guide, target, corr, title, curves))
    png = folder / "mapping_training.png"
    draw_training(curves, png, title)
    return Inspection(curves, [folder / "mapping.html", png], len(corr))


def draw_training(curves: dict[str, Any], path: Path, title: str) -> None:
    """Left: each pair's 1 − similarity over steps. Right: pairs × steps, first matched step marked."""
    import numpy as np
    from matplotlib.figure import Figure

    pairs = curves["pairs"]
    steps = sorted({s for p in pairs for s in p["steps"]})
    col = {s: k for k, s in enumerate(steps)}
    grid = np.full((len(pairs), len(steps)), np.nan)
    for i, p in enumerate(pairs):
        for s, v in zip(p["steps"], p["values"]):
            grid[i, col[s]] = v
    height = max(3.5, 0.16 * len(pairs) + 1.6)
    fig = Figure(figsize=(14, height))
    ax, ax_m = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for i, p in enumerate(pairs):
        ax.plot(p["steps"], p["values"], lw=1, color=cmap(i / max(len(pairs) - 1, 1)),
                label=f"{p['guide']} → {p['target']}" if len(pairs) <= 12 else None)
    ax.axhline(curves["threshold"], ls="--", color="#888", lw=0.8)
    ax.set(xlabel="step", ylabel="1 − similarity", ylim=(0, max(1.0, float(np.nanmax(grid)))),
           title=f"each pair (colour: guide order); dashed: matched at ≤ {curves['threshold']:g}")
    if len(pairs) <= 12:
        ax.legend(fontsize=7)
    im = ax_m.imshow(grid, aspect="auto", cmap="magma_r", vmin=0, vmax=max(float(np.nanmax(grid)), curves["threshold"]),
                     interpolation="nearest")
    for i, p in enumerate(pairs):
        if p["matched_at"] is not None:
            ax_m.plot([col[p["matched_at"]]], [i], "|", color="#00e5ff", ms=7, mew=2)
    ticks = np.linspace(0, len(steps) - 1, min(6, len(steps))).round().astype(int)
    ax_m.set_xticks(ticks, [str(steps[k]) for k in ticks], fontsize=7)
    ax_m.set_yticks(range(len(pairs)), [f"{p['guide']} → {p['target']}" + ("" if p["matched_at"] is not None
                                        else "  (never)") for p in pairs], fontsize=6 if len(pairs) > 20 else 7)
    ax_m.set(xlabel="step", title="1 − similarity per pair (cyan: first matched)")
    fig.colorbar(im, ax=ax_m, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
