"""``mapping.html``: the mapping page, one self-contained file that works offline.

The page draws both layer graphs as DAGs (the layout of :mod:`pairgraph.compiler.graph_layout`,
blocks collapsible), the mapping between them, and — where they were measured — the similarity
matrix at initialisation as a heatmap with the mapping drawn over it and each pair's 1 − similarity
over a training run (:func:`training_curves`, ``pairgraph inspect``). Pan with the mouse, zoom with
the wheel, hover a tap for its module path, type, output shape, provider and mapped partners,
search by name. Everything the page shows is in the JSON of ``<script id="pairgraph-data">``
(:func:`page_data`); the script and styles (``mapping_page.js``/``.css`` beside this module) are
inlined, so the file needs no network and no server.
"""

from __future__ import annotations

import html
import json
import math
from importlib.resources import files
from typing import Any

from pairgraph.compiler import graph_layout
from pairgraph.compiler.graph_drawing import TYPE_COLOURS
from pairgraph.compiler.mapping import Correspondence
from pairgraph.core.layer_graph import LayerGraph

MATCHED = 0.1  # a pair counts as matched once its 1 − similarity is at most this


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def page_data(guide: LayerGraph, target: LayerGraph, corr: Correspondence, title: str,
              training: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the page draws: both layouts, the pairs (with similarity where measured), matrix, curves."""
    matrix = corr.info.get("matrix")
    gi, tj = {n: i for i, n in enumerate(guide.names)}, {n: j for j, n in enumerate(target.names)}
    pairs = [{"guide": g, "target": t, "weight": w,
              "similarity": _finite(matrix[gi[g]][tj[t]]) if matrix else None} for g, t, w in corr.pairs]
    sides = {"guide": graph_layout.to_json(guide), "target": graph_layout.to_json(target)}
    for side in sides.values():
        for node in side["nodes"]:
            node["colour"] = TYPE_COLOURS.get(node["type"], "#888888")
    return {"title": title, "kind": corr.kind, "measure": corr.info.get("measure", "similarity"), **sides, "pairs": pairs,
            "matrix": matrix or None, "training": training}


def training_curves(records: list[dict[str, Any]], pairs: list[tuple[str, str, float]],
                    threshold: float = MATCHED) -> dict[str, Any]:
    """Each pair's 1 − similarity over a run, from metrics.jsonl records (``step`` and ``terms``).

    ``terms`` maps ``"guide->target"`` to the pair's 1 − similarity at that step; ``matched_at`` is
    the first logged step where it is at most ``threshold`` (``None``: never).
    """
    out = []
    for g, t, _ in pairs:
        key = f"{g}->{t}"
        steps, values = [], []
        for r in records:
            v = (r.get("terms") or {}).get(key)
            if isinstance(r.get("step"), int) and _finite(v) is not None:
                steps.append(r["step"])
                values.append(float(v))
        if steps:
            matched = next((s for s, v in zip(steps, values) if v <= threshold), None)
            out.append({"guide": g, "target": t, "steps": steps, "values": values, "matched_at": matched})
    return {"threshold": threshold, "pairs": out}


def mapping_page(guide: LayerGraph, target: LayerGraph, corr: Correspondence, title: str,
                 training: dict[str, Any] | None = None) -> str:
    """The whole page as one string (script, styles and data inlined)."""
    here = files("pairgraph.compiler")
    script = here.joinpath("mapping_page.js").read_text(encoding="utf-8")
    style = here.joinpath("mapping_page.css").read_text(encoding="utf-8")
    data = json.dumps(page_data(guide, target, corr, title, training), allow_nan=False).replace("<", "\\u003c")  # no tag can start inside
    heat = ("<section id=\"matrix\"><h2>" + html.escape(corr.info.get("measure", "similarity"))
            + " at initialisation (rows: guide taps, columns: target taps; red: the mapping)</h2>"
            "<svg id=\"heatmap\" xmlns=\"http://www.w3.org/2000/svg\"></svg></section>") if corr.info.get("matrix") else ""
    curves = ("<section id=\"training\"><h2>1 − similarity of each pair over training</h2>"
              "<svg id=\"curves\" width=\"660\" height=\"270\" xmlns=\"http://www.w3.org/2000/svg\"></svg>"
              "<table id=\"matched\"><thead><tr><th>pair</th><th>first</th><th>last</th><th>matched</th></tr></thead>"
              "<tbody></tbody></table></section>") if training else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{style}</style></head>
<body>
<header><h1>{html.escape(title)}</h1>
<input id="search" type="search" placeholder="search taps by name"> <span id="hits"></span>
<button id="collapse">collapse blocks</button><button id="expand">expand blocks</button><button id="fit">fit</button>
<span id="counts"></span></header>
<svg id="graph" xmlns="http://www.w3.org/2000/svg"><g id="graph-root"></g></svg>
<div id="tip"></div>
{heat}
{curves}
<script id="pairgraph-data" type="application/json">{data}</script>
<script>{script}</script>
</body></html>
"""
