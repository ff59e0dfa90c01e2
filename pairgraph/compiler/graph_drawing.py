"""Two layer graphs drawn as DAGs with the mapping between them (matplotlib; ``mapping.png``/``.svg``).

The guide's graph is on the left, the target's on the right, data flowing top to bottom
(:mod:`pairgraph.compiler.graph_layout` places the taps). Each side has, from the outside in: tap
labels (name inside its block, type, shape), skip connections as arcs, the main lane, branch lanes.
Repeated blocks are shaded boxes named on their first row; a ⊕ marks a tap where several paths meet
(a residual add just above it). Mapping edges join the two graphs, their width by weight and, where
the similarity at initialisation was measured (``info["matrix"]``), their colour by it.
"""

from __future__ import annotations

from typing import Any

from pairgraph.compiler.graph_layout import GraphLayout, layout, short_name
from pairgraph.compiler.mapping import Correspondence
from pairgraph.core.layer_graph import LayerGraph

TYPE_COLOURS = {
    "Conv2d": "#4c78a8", "Conv1d": "#4c78a8", "Linear": "#f58518", "BatchNorm1d": "#72b7b2",
    "BatchNorm2d": "#72b7b2", "LayerNorm": "#54a24b", "RNN": "#e45756", "LSTM": "#e45756", "GRU": "#e45756",
    "TransformerEncoderLayer": "#b279a2", "TransformerDecoderLayer": "#b279a2", "EncoderBlock": "#b279a2",
    "MultiheadAttention": "#9d755d", "Block": "#b279a2", "ConvNeXtBlock": "#4c78a8", "GPT2Block": "#b279a2",
    "BertLayer": "#b279a2", "ViTLayer": "#b279a2", "LlamaDecoderLayer": "#b279a2",
}
LABEL_W, ARC_W, LANE_W, GAP_W = 3.4, 0.55, 0.28, 3.2  # inches: label area, arc area, one lane, mapping gap


def shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape[1:]) or "scalar"


class Side:
    """One graph's geometry: x of each lane, y of each row; ``outward`` is −1 for the left graph, +1 for the right."""

    def __init__(self, graph: LayerGraph, lay: GraphLayout, x0: float, outward: int, rows: int):
        self.graph, self.lay, self.x0, self.out = graph, lay, x0, outward
        k = len(lay.nodes)
        self.step = (rows - 1) / max(k - 1, 1) if k > 1 else 0.0
        self.offset = 0.0 if k > 1 else (rows - 1) / 2

    def x(self, name: str) -> float:
        return self.x0 - self.out * LANE_W * self.lay[name].lane

    def y(self, name: str) -> float:
        return self.offset + self.lay[name].row * self.step

    def inner(self) -> float:  # the x of the innermost lane: where mapping edges leave
        return self.x0 - self.out * LANE_W * (self.lay.lanes() - 1)


def _arc(ax: Any, side: Side, u: str, v: str, colour: str) -> None:
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MPath

    (x1, y1), (x2, y2) = (side.x(u), side.y(u)), (side.x(v), side.y(v))
    bulge = min(ARC_W * 0.95, 0.12 + 0.035 * abs(y2 - y1))
    bx = (min(x1, x2) if side.out < 0 else max(x1, x2)) + side.out * bulge
    path = MPath([(x1, y1), (bx, y1 + 0.3 * (y2 - y1)), (bx, y1 + 0.7 * (y2 - y1)), (x2, y2)],
                 [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4])
    ax.add_patch(PathPatch(path, fill=False, lw=0.6, ec=colour, alpha=0.8, zorder=1))


def draw_side(ax: Any, side: Side, mapped: set[str], fs: float, title: str) -> None:
    """One graph: block boxes, edges (arcs for skips and branches), tap markers, labels."""
    from matplotlib.patches import FancyBboxPatch

    lay, out = side.lay, side.out
    label_x = side.x0 + out * (ARC_W + 0.05)
    for block, (first, last) in lay.blocks.items():
        y0, y1 = side.offset + first * side.step - 0.45, side.offset + last * side.step + 0.45
        left, right = sorted((label_x + out * LABEL_W, side.inner() - out * 0.12))
        ax.add_patch(FancyBboxPatch((left, y0), right - left, y1 - y0, boxstyle="round,pad=0,rounding_size=0.08",
                                    fc="#f1f3f7", ec="#c5cad3", lw=0.5, zorder=0))
        ax.text(label_x + out * (LABEL_W - 0.05), y0 + 0.5, block, ha="left" if out < 0 else "right", va="center",
                fontsize=fs, weight="bold", color="#5a6270", zorder=2)
    for u, v in lay.edges:
        nu, nv = lay[u], lay[v]
        if nv.row == nu.row + 1 and nv.lane == nu.lane:
            ax.plot([side.x(u), side.x(v)], [side.y(u), side.y(v)], color="#8a8f99", lw=0.7, zorder=1)
        else:
            _arc(ax, side, u, v, "#8a8f99" if nu.lane == nv.lane else "#c0504d")
    for t in side.graph.taps:
        n, x, y = lay[t.name], side.x(t.name), side.y(t.name)
        live = t.name in mapped
        colour = TYPE_COLOURS.get(t.type, "#888888")
        ax.plot([x], [y], "o", ms=4.2, mfc=colour if live else "white", mec=colour, mew=1.0, zorder=3)
        if n.merge:
            ax.text(x + out * 0.13, y - 0.42, "⊕", ha="center", va="center", fontsize=fs + 1, color="#c0504d", zorder=3)
        label = f"{short_name(t.name, n.block)}  ·  {t.type}  ·  {shape_text(t.shape)}" + ("" if live else "  (no term)")
        ax.text(label_x, y, label, ha="right" if out < 0 else "left", va="center", fontsize=fs, family="monospace",
                color="black" if live else "#999999", zorder=2)
    ax.text((label_x + out * LABEL_W + side.inner()) / 2, -1.6, title, ha="center", va="center",
            fontsize=fs + 2.5, weight="bold")


def draw_mapping(ax: Any, guide: LayerGraph, target: LayerGraph, corr: Correspondence, fs: float) -> None:
    """Both graphs and the mapping edges on ``ax`` (x in inches)."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    gl, tl = layout(guide), layout(target)
    rows = max(len(guide), len(target))
    left = Side(guide, gl, LABEL_W + ARC_W + 0.2, -1, rows)
    tx = left.inner() + 2 * LANE_W + GAP_W + LANE_W * (tl.lanes() - 1)
    right = Side(target, tl, tx, +1, rows)
    mapped_g = {g for g, _, _ in corr.pairs}
    draw_side(ax, left, mapped_g, fs, f"guide ({guide.method}, {len(guide)} taps)")
    draw_side(ax, right, set(target.names), fs, f"target ({target.method}, {len(target)} taps)")
    matrix = corr.info.get("matrix")
    norm = cmap = None
    if matrix:
        cells = [v for r in matrix for v in r if v is not None]
        norm, cmap = Normalize(min(0.0, min(cells, default=0.0)), 1.0), colormaps["viridis"]
    gi, tj = {n: i for i, n in enumerate(guide.names)}, {n: j for j, n in enumerate(target.names)}
    weighted = any(w != 1.0 for _, _, w in corr.pairs)
    for g, t, w in corr.pairs:
        value = matrix[gi[g]][tj[t]] if matrix else None
        colour = cmap(norm(value)) if cmap is not None and value is not None else "#555555"
        x1, y1, x2, y2 = left.inner() + 0.1, left.y(g), right.inner() - 0.1, right.y(t)
        ax.plot([x1, x2], [y1, y2], "--" if w == 0 else "-", color=colour, lw=0.5 + 0.8 * min(w, 3.0), alpha=0.75,
                zorder=1)
        if weighted:
            ax.text(x1 + 0.25 * (x2 - x1), y1 + 0.25 * (y2 - y1), f"w={w:g}", ha="center", va="center",
                    fontsize=fs - 0.5, color="#333333", zorder=2,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
    ax.set_xlim(0, total_width(gl, tl))
    ax.set_ylim(rows - 0.2, -2.4)
    ax.axis("off")


def total_width(gl: GraphLayout, tl: GraphLayout) -> float:
    """Inches from the guide's outer label edge to the target's (the x range :func:`draw_mapping` uses)."""
    return 2 * (LABEL_W + ARC_W + 0.2) + 2 * LANE_W + GAP_W + LANE_W * (gl.lanes() + tl.lanes() - 2)


def figure_size(guide: LayerGraph, target: LayerGraph) -> tuple[float, float, float]:
    """(width, height) in inches and the font size: one row per tap of the longer graph."""
    rows = max(len(guide), len(target))
    row_h = 0.2 if rows <= 50 else 0.15 if rows <= 120 else 0.12
    return total_width(layout(guide), layout(target)), max(3.0, rows * row_h + 1.0), 6.5 if rows <= 50 else 5.5 if rows <= 120 else 4.8
