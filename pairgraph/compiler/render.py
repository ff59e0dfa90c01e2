"""Rendering a correspondence: the files ``pairgraph compile`` writes, and the terminal tables.

:func:`render_mapping` writes ``mapping.png``/``mapping.svg`` (both layer graphs as DAGs with the
mapping between them, :mod:`pairgraph.compiler.graph_drawing`; a mapping chosen from data —
``info["matrix"]``, the ``learned`` mapper — gets its similarity matrix beside them with the chosen
cells boxed) and ``mapping.html`` (:mod:`pairgraph.compiler.mapping_html`). :func:`print_mapping` is
the terminal view (rich), with, for ``learned``, why each pair was chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pairgraph.compiler.graph_drawing import draw_mapping, figure_size, shape_text
from pairgraph.compiler.mapping import Correspondence
from pairgraph.compiler.mapping_html import mapping_page
from pairgraph.core.layer_graph import LayerGraph
from pairgraph.paths import atomic_write


def render_mapping(guide: LayerGraph, target: LayerGraph, corr: Correspondence, path: str | Path,
                   title: str = "", training: dict[str, Any] | None = None) -> list[Path]:
    """Draw the mapping; writes ``<path>.png``, ``<path>.svg`` and ``<path>.html``; returns the files written.

    ``training`` (from :func:`pairgraph.compiler.mapping_html.training_curves`) adds each pair's
    1 − similarity over a run to the page.
    """
    from matplotlib.figure import Figure  # no pyplot: a caller's (a notebook's) backend is left alone

    width, height, fs = figure_size(guide, target)
    matrix = corr.info.get("matrix")
    extra = min(max(4.5, 0.18 * len(target) + 2.8), 12.0) if matrix else 0.0
    fig = Figure(figsize=(width + extra, height))
    ax = fig.add_axes((0.0, 0.0, width / fig.get_figwidth(), 1.0 - 0.3 / height))
    draw_mapping(ax, guide, target, corr, fs)
    fig.text(0.01, 1.0 - 0.06 / height, title or f"{corr.kind} mapping: {len(corr)} pairs", ha="left", va="top",
             fontsize=fs + 3.5, weight="bold")
    if matrix:  # the similarity matrix that chose the mapping, beside the graphs; its scale colours their edges
        w, side = fig.get_figwidth(), min(extra - 2.6, height - 2.2)
        ax_m = fig.add_axes(((width + 1.9) / w, (height - side - 1.0) / height, side / w, side / height))
        _matrix_panel(ax_m, guide, target, corr, matrix)
    base = Path(path)
    written = []
    for ext in ("png", "svg"):
        out = base.with_suffix(f".{ext}")
        fig.savefig(out, dpi=130 if ext == "png" else None)
        written.append(out)
    html = base.with_suffix(".html")
    atomic_write(html, mapping_page(guide, target, corr, title or f"{corr.kind} mapping", training))
    return [*written, html]


def _matrix_panel(ax: Any, guide: LayerGraph, target: LayerGraph, corr: Correspondence, matrix: list[list[Any]]) -> None:
    """Heatmap of ``corr.info['matrix']`` (rows guide taps, columns target taps), chosen cells boxed."""
    gi = {name: i for i, name in enumerate(guide.names)}
    tj = {name: j for j, name in enumerate(target.names)}
    shape = (len(matrix), len(matrix[0]) if matrix else 0)
    names = max(shape) <= 40  # tick labels with tap names while they fit, indices beyond
    im = draw_similarity_matrix(ax, matrix, guide.names if names else range(shape[0]),
                                target.names if names else range(shape[1]),
                                [(gi[g], tj[t]) for g, t, _ in corr.pairs],
                                fontsize=7 if max(shape) <= 30 else 5, family="monospace")
    ax.set_ylabel("guide taps", fontsize=8)
    ax.set_xlabel("target taps", fontsize=8)
    info = corr.info
    order = "order-preserving (monotone)" if info.get("monotone", True) else "argmax per guide tap"
    ax.set_title(f"{info.get('measure', 'similarity')} on {info.get('batches', '?')}×{info.get('batch_size', '?')} "
                 f"calibration examples\nred: chosen, {order}; the mapping edges use this scale", fontsize=9)
    ax.figure.colorbar(im, ax=ax, shrink=0.7, pad=0.02)


def draw_similarity_matrix(ax: Any, matrix: Any, rows: Iterable[Any], cols: Iterable[Any],
                           chosen: Iterable[tuple[int, int]], *, fontsize: float = 7, family: str | None = None,
                           box_lw: float = 1.8, bad: str | None = None) -> Any:
    """A guide × target similarity matrix on ``ax``; returns the image (for a colorbar).

    Rows are guide taps, columns target taps; ``None``/NaN cells are masked (drawn in ``bad``, default
    transparent). Colours: viridis from min(0, smallest value) to 1. The ``chosen`` (row, column) cells
    are boxed in red; ``rows``/``cols`` label the ticks. The mapping render and
    :func:`pairgraph.analysis.similarity_heatmap` both draw with it.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    m = np.array([[np.nan if v is None else v for v in r] for r in matrix], dtype=float)
    finite = m[np.isfinite(m)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    cmap = colormaps["viridis"] if bad is None else colormaps["viridis"].with_extremes(bad=bad)
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, norm=Normalize(lo, 1.0), aspect="auto",
                   interpolation="nearest")
    for i, j in chosen:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#ff1f1f", lw=box_lw, zorder=3))
    font: dict[str, Any] = {"fontsize": fontsize} if family is None else {"fontsize": fontsize, "family": family}
    ax.set_yticks(range(m.shape[0]), list(rows), **font)
    ax.set_xticks(range(m.shape[1]), list(cols), rotation=60, ha="right", rotation_mode="anchor", **font)
    return im


def _elided(n: int, limit: int | None) -> list[int | None]:
    """Row numbers to show: all of ``n``, or the first and last ``limit // 2`` with ``None`` between."""
    if limit is None or n <= limit:
        return list(range(n))
    return [*range(limit // 2), None, *range(n - limit // 2, n)]


def mapping_table(guide: LayerGraph, target: LayerGraph, corr: Correspondence, limit: int | None = 40) -> Table:
    """Rows of ``#  guide tap (type, shape) → target tap (type, shape)``; long mappings elided."""
    unmapped = len(set(guide.names) - {g for g, _, _ in corr.pairs})
    table = Table(title=f"{corr.kind} mapping: {len(corr)} pairs (guide {len(guide)} taps → target {len(target)} taps"
                  + (f"; {unmapped} guide tap{'s' * (unmapped != 1)} without a term)" if unmapped else ")"))
    table.add_column("#", justify="right")
    table.add_column("guide tap")
    table.add_column("")
    table.add_column("target tap")
    weighted = any(w != 1.0 for _, _, w in corr.pairs)
    if weighted:
        table.add_column("weight", justify="right")
    for i in _elided(len(corr.pairs), limit):
        if i is None:
            table.add_row("…", f"[dim]{len(corr.pairs) - 2 * (limit // 2)} more pairs (--all shows them)[/dim]", "", "",
                          *([""] if weighted else []))
            continue
        p = corr.pairs[i]
        g, t = guide[p[0]], target[p[1]]
        table.add_row(str(i), f"{g.name} [dim]{g.type} {shape_text(g.shape)}[/dim]", "→",
                      f"{t.name} [dim]{t.type} {shape_text(t.shape)}[/dim]", *([f"{p[2]:g}"] if weighted else []))
    return table


def _why(row: list[Any], chosen: int, by_depth: int) -> str:
    """Why column ``chosen`` of a similarity ``row`` was taken, against its best and the depth mapping's."""
    values = [v if v is not None else -np.inf for v in row]
    best = int(np.argmax(values))
    if chosen == best:
        return "most similar"
    gap = f"best +{values[best] - values[chosen]:.3f}"
    return f"depth's choice, {gap}" if chosen == by_depth else f"keeps depth order, {gap}"


def learned_table(guide: LayerGraph, target: LayerGraph, corr: Correspondence, limit: int | None = 40) -> Table:
    """Why each pair of a ``learned`` mapping was chosen: its similarity against the row's best and ``depth``'s."""
    info = corr.info
    m, chosen, by_depth = info["matrix"], info["chosen"], info["depth_chosen"]
    measure = info.get("measure", "similarity")
    table = Table(title=f"why each pair: {measure} against the most similar target tap (depth prior "
                  f"{info.get('depth_prior', 0):g}; docs/mapping.md)")
    for name in ("#", "guide tap", f"chosen ({measure})", f"most similar ({measure})", "why"):
        table.add_column(name, justify="right" if name == "#" else "left")

    def cell(i: int, j: int) -> str:
        v = m[i][j]
        return f"{target.names[j]} ({'nan' if v is None else f'{v:.3f}'})"

    for i in _elided(len(chosen), limit):
        if i is None:
            table.add_row("…", f"[dim]{len(chosen) - 2 * (limit // 2)} more (--all shows them)[/dim]", "", "", "")
            continue
        best = int(np.argmax([v if v is not None else -np.inf for v in m[i]]))
        table.add_row(str(i), guide.names[i], cell(i, chosen[i]), cell(i, best), _why(m[i], chosen[i], by_depth[i]))
    return table


def print_mapping(guide: LayerGraph, target: LayerGraph, corr: Correspondence, console: Console | None = None,
                  limit: int | None = 40) -> None:
    """The mapping as a table; for a ``learned`` one (monotone), also why each pair was chosen."""
    console = console or Console()
    console.print(mapping_table(guide, target, corr, limit))
    if corr.kind == "learned" and "depth_chosen" in corr.info:
        console.print(learned_table(guide, target, corr, limit))
