"""Where each tap of a ``LayerGraph`` goes in a drawing: a row, a lane and a block.

Rows follow the network's tap order (data flows top to bottom, one tap per row, so labels never
collide); a tap that does not continue the tap above it — a parallel branch such as a ResNet's
downsample — moves to a side lane, and a tap where several inputs meet (a residual add) goes back to
the main lane. Taps that share a repeated block (``layer2.0``, ``blocks.3``: the module path up to
its last numbered part) form a group that the drawings box and the HTML page collapses.
The PNG/SVG (:mod:`pairgraph.compiler.render`) and the HTML page
(:mod:`pairgraph.compiler.mapping_html`) draw the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from pairgraph.core.layer_graph import LayerGraph

MAX_LANE = 3


@dataclass
class NodePlace:
    """One tap in a drawing: its row (tap order), lane (0 = main path) and block ("" when none)."""

    name: str
    row: int
    lane: int
    block: str
    merge: bool  # several taps feed it: a residual add or a concatenation lies just above


@dataclass
class GraphLayout:
    """A layer graph placed for drawing: nodes in tap order, edges, and the blocks as row ranges."""

    nodes: list[NodePlace]
    edges: list[tuple[str, str]]
    blocks: dict[str, tuple[int, int]] = field(default_factory=dict)  # block → (first row, last row)

    def __getitem__(self, name: str) -> NodePlace:
        return self.nodes[self._index[name]]

    def __post_init__(self) -> None:
        self._index = {n.name: i for i, n in enumerate(self.nodes)}

    def lanes(self) -> int:
        return 1 + max((n.lane for n in self.nodes), default=0)


def block_of(name: str) -> str:
    """The repeated block a tap belongs to: its module path up to the last numbered part before the
    tap's own name (``layer2.0.downsample.0`` → ``layer2.0``; ``blocks.3`` → ``""``: the tap is a block)."""
    parts = name.split(".")
    numbered = [k for k, p in enumerate(parts[:-1]) if p.isdigit()]
    return ".".join(parts[: numbered[-1] + 1]) if numbered else ""


def drawn_inputs(graph: nx.DiGraph, names: list[str]) -> dict[str, list[str]]:
    """The inputs of each tap worth drawing: its direct inputs (those no other input of it depends on),
    plus the latest of the rest — the skip connection. A tap graph links a tap to every tap whose
    output reaches it through parameter-free steps, so after a chain of residual adds a tap has every
    earlier block's output as an input; drawn, that is one arc per block, not a fan of them all."""
    row = {n: i for i, n in enumerate(names)}
    ancestors = {n: nx.ancestors(graph, n) if n in graph else set() for n in names}
    out: dict[str, list[str]] = {}
    for v in names:
        preds = [p for p in graph.predecessors(v) if p in row] if v in graph else []
        upstream = {p for p in preds if any(p in ancestors[q] for q in preds if q != p)}
        keep = [p for p in preds if p not in upstream]
        if upstream:
            keep.append(max(upstream, key=row.__getitem__))
        out[v] = sorted(keep, key=row.__getitem__)
    return out


def layout(graph: LayerGraph) -> GraphLayout:
    """Rows, lanes and blocks for ``graph`` (see the module docstring)."""
    names = graph.names
    inputs = drawn_inputs(graph.graph, names)
    nodes: list[NodePlace] = []
    for row, name in enumerate(names):
        preds = inputs[name]
        merge = len(preds) > 1
        if row == 0 or not preds:
            lane = 0
        elif names[row - 1] not in preds:
            lane = min(nodes[row - 1].lane + 1, MAX_LANE)  # starts from further up: a parallel branch
        else:
            lane = 0 if merge else nodes[row - 1].lane  # paths meet on the main lane; else continue the tap above
        nodes.append(NodePlace(name, row, lane, block_of(name), merge))
    blocks: dict[str, tuple[int, int]] = {}
    for n in nodes:
        if n.block:
            first, _ = blocks.get(n.block, (n.row, n.row))
            blocks[n.block] = (first, n.row)
    edges = [(u, v) for v in names for u in inputs[v]]
    return GraphLayout(nodes, edges, blocks)


def short_name(name: str, block: str) -> str:
    """The tap's name inside its block (``layer2.0.conv1`` in ``layer2.0`` → ``conv1``)."""
    return name[len(block) + 1:] if block and name.startswith(block + ".") else name


def to_json(graph: LayerGraph) -> dict[str, Any]:
    """The layout with each tap's type and shape: what the HTML page draws from."""
    lay = layout(graph)
    taps = {t.name: t for t in graph.taps}
    return {
        "method": graph.method,
        "nodes": [{"name": n.name, "row": n.row, "lane": n.lane, "block": n.block, "merge": n.merge,
                   "type": taps[n.name].type, "shape": list(taps[n.name].shape[1:]), "depth": taps[n.name].depth}
                  for n in lay.nodes],
        "edges": [list(e) for e in lay.edges],
        "blocks": {b: list(r) for b, r in lay.blocks.items()},
    }
