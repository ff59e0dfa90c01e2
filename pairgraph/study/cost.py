"""The dry-run's GPU-hour estimate: per (cell, arm), the runs left × their optimizer steps × the seconds a
step took in the cell's benchmark record (``cost.bench``: ``pairgraph bench --device cuda``), times the
cell's stated ``cost.scale``. Guide training, evaluation and data loading are not counted. The functions take
:class:`~pairgraph.study.plan.ArmPlan` s (typed Any: plan imports this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pairgraph.core.objectives import objective_class
from pairgraph.errors import PairgraphError
from pairgraph.study.records import read_json


def step_seconds(p: Any) -> float | None:
    """Seconds one optimizer step of this arm takes on the benchmarked GPU (None: the cell gives no cost)."""
    cost = p.cell.cost
    if cost is None:
        return None
    path = Path(cost.bench)
    if not path.is_absolute() and not path.exists():
        path = p.study.file.parent.parent / path  # relative to the repository (studies/ is one level down)
    seconds = (read_json(path) or {}).get("seconds")
    kind = "guided" if objective_class(p.base.guidance.mode).calls_guide else "target"
    if not isinstance(seconds, dict) or not isinstance(seconds.get(kind), int | float):
        raise PairgraphError(f"cell {p.cell.name!r}: cost.bench {cost.bench!r} is not a bench record with "
                             f"seconds.{kind}", "point it at a `pairgraph bench --device cuda` JSON record")
    return float(seconds[kind]) * cost.scale


def run_steps(p: Any) -> int | None:
    """Optimizer steps of one run: train.steps, else train.epochs × cost.steps_per_epoch."""
    t = p.base.train
    if t.steps is not None:
        return int(t.steps)
    per_epoch = p.cell.cost.steps_per_epoch if p.cell.cost is not None else None
    return None if per_epoch is None else int((t.epochs or 1) * per_epoch)


def gpu_hours_left(p: Any, runs_left: int) -> float | None:
    """GPU-hours of the arm's runs left; None when the cell gives no cost or the run length is unknown."""
    sec, steps = step_seconds(p), run_steps(p)
    return None if sec is None or steps is None else runs_left * steps * sec / 3600


def estimate_lines(plans: list[Any], left: dict[tuple[str, str], int]) -> list[str]:
    """The dry-run's estimate: the total and, per cell, its hours and where its cost comes from."""
    per_cell: dict[str, float] = {}
    missing: set[str] = set()
    for p in plans:
        h = gpu_hours_left(p, left[(p.cell.name, p.arm.name)])
        if h is None:
            missing.add(p.cell.name)
        else:
            per_cell[p.cell.name] = per_cell.get(p.cell.name, 0.0) + h
    if not per_cell:
        return []
    lines = [(f"estimated GPU time left: {sum(per_cell.values()):,.0f} GPU-hours (optimizer steps only: guide "
              "training, evaluation and data loading not counted)")]
    for p in plans:
        if p.cell.name in per_cell and p.cell.cost is not None:
            lines.append(f"  {p.cell.name}: {per_cell.pop(p.cell.name):,.1f} h — {p.cell.cost.bench} × "
                         f"{p.cell.cost.scale:g}: {' '.join(p.cell.cost.why.split())}")
    if missing:
        lines.append("  no estimate for: " + ", ".join(sorted(missing)) + " (no cost, or epochs without "
                     "cost.steps_per_epoch)")
    return lines
