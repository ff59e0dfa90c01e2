"""Mappers: guide ``LayerGraph`` × target ``LayerGraph`` → ``Correspondence``.

Every guide tap is mapped (none is dropped); several guide taps may share a target tap, each
pair its own loss term. Register a mapper with ``@MAPPERS.register("name")`` on a function
``(guide, target, **options) -> Correspondence``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pairgraph.errors import PairgraphError
from pairgraph.registry import Registry
from pairgraph.trace import LayerGraph


@dataclass
class Correspondence:
    """The layer correspondence I: (guide tap, target tap, weight) triples."""

    pairs: list[tuple[str, str, float]]
    kind: str
    guide: list[str]
    target: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pairs": [{"guide": g, "target": t, "weight": w} for g, t, w in self.pairs],
            "guide_taps": self.guide,
            "target_taps": self.target,
            **({"info": self.info} if self.info else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Correspondence:
        pairs = [(p["guide"], p["target"], float(p["weight"])) for p in data["pairs"]]
        return cls(pairs, data["kind"], list(data["guide_taps"]), list(data["target_taps"]), data.get("info", {}))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


class Mapper(Protocol):
    def __call__(self, guide: LayerGraph, target: LayerGraph, **options: Any) -> Correspondence: ...


MAPPERS: Registry[Mapper] = Registry("mapper")


def uniform_indices(n_guide: int, n_target: int) -> list[int]:
    """The paper's Algorithm 1: guide tap i ↦ target tap min(round(i·step), t−1), step = (t−1)/(l−1).

    ``round`` is Python's (half to even), exactly as the published implementation computes it.
    """
    if n_guide < 1 or n_target < 1:
        raise PairgraphError("cannot map an empty layer list", "select at least one tap point on each side")
    step = (n_target - 1) / (n_guide - 1) if n_guide > 1 else 1
    return [min(round(i * step), n_target - 1) for i in range(n_guide)]


@MAPPERS.register("uniform")
def uniform(guide: LayerGraph, target: LayerGraph) -> Correspondence:
    """Spread the guide's taps evenly over the target's (paper §3.2, Algorithm 1)."""
    idx = uniform_indices(len(guide), len(target))
    pairs = [(g.name, target.taps[j].name, 1.0) for g, j in zip(guide.taps, idx)]
    return Correspondence(pairs, "uniform", guide.names, target.names)


@MAPPERS.register("depth")
def depth(guide: LayerGraph, target: LayerGraph) -> Correspondence:
    """Map each guide tap to the target tap of nearest relative depth in its DAG.

    Relative depth = longest-path depth / max depth, so parallel branches (a ResNet's
    downsample and the block it bypasses) get the depth of where they start; ties go to the
    earlier target tap.
    """
    gmax, tmax = max(guide.max_depth(), 1), max(target.max_depth(), 1)
    pairs = []
    for g in guide.taps:
        rel = g.depth / gmax
        best = min(target.taps, key=lambda t: (abs(t.depth / tmax - rel), t.index))
        pairs.append((g.name, best.name, 1.0))
    return Correspondence(pairs, "depth", guide.names, target.names)


def build_mapping(kind: str, guide: LayerGraph, target: LayerGraph, **options: Any) -> Correspondence:
    mapper = MAPPERS.get(kind)
    try:
        return mapper(guide, target, **options)
    except TypeError as e:
        raise PairgraphError(f"mapping {kind!r} rejected its options {sorted(options)}: {e}",
                             "remove the unknown mapping options") from None
