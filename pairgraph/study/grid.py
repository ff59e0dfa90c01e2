"""The report's section for ``grid: true`` studies (every seed at every lr): per cell the Δ (guided − baseline)
at every lr with its Welch interval, a figure of Δ against lr for all cells, the baseline's trainability per
cell (its best validation metric and its train–validation gap) and the reading of the study's rule
(``untrainable_below``, written in the study file before running)."""

from __future__ import annotations

import gzip
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from pairgraph.analysis import new_figure, save_figure
from pairgraph.study.formatting import mean_se, num, pm, scale, signed, table
from pairgraph.study.plan import ArmState
from pairgraph.study.results import UNRESOLVED, CellView, StoredRun
from pairgraph.study.schema import Study, lr_tag
from pairgraph.study.stats import Delta, welch


def _ce_tail(run: StoredRun, last: int = 50) -> float | None:
    """The run's mean training task loss over its last ``last`` logged steps (metrics.jsonl.gz)."""
    path = run.path / "metrics.jsonl.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    losses = [float(r.get("task_loss", r.get("loss"))) for r in rows
              if r.get("split") is None and isinstance(r.get("task_loss", r.get("loss")), int | float)]
    return statistics.fmean(losses[-last:]) if losses else None


def _trainability_row(v: CellView) -> list[str] | None:
    """The baseline at its chosen lr: test metric, best validation metric, final training CE, best validation
    loss, and the gap between them (validation − training: positive when it overfits)."""
    ar = v.arms.get("baseline")
    if ar is None or not ar.seeds:
        return None
    val = [scale(v.metric, float(x)) for r in ar.seeds if isinstance(x := ((r.summary or {}).get("val") or {})
                                                                    .get(v.metric), int | float)]
    tails = [t for r in ar.seeds if (t := _ce_tail(r)) is not None]
    best = [float((r.summary or {})["best_val_loss"]) for r in ar.seeds if (r.summary or {}).get("best_val_loss")]
    test = v.values("baseline")
    gap = statistics.fmean(best) - statistics.fmean(tails) if tails and best else None
    return [v.label, lr_tag(ar.chosen) if ar.chosen is not None else "—", str(len(ar.seeds)), pm(*mean_se(test)),
            pm(*mean_se(val)) if val else "—", num(statistics.fmean(tails)) if tails else "—",
            num(statistics.fmean(best)) if best else "—", signed(gap) if gap is not None else "—"]


def _word(d: Delta) -> str:
    if not d.resolved:
        return UNRESOLVED
    return "guide better" if d.d > 0 else "guide worse"


def _read(study: Study, views: list[CellView], guided: str) -> tuple[list[str], str | None]:
    """The rule applied cell by cell (a line each) and the reading it gives overall (None before any data)."""
    below = study.untrainable_below
    replaced = {v.cell.when_unconverged for v in views if v.cell.when_unconverged and v.values("baseline")}
    lines, untrainable, primary = [], [], []
    for v in views:
        base, arm = v.stat("baseline"), v.stat(guided)
        if v.cell.name in replaced or base is None or arm is None:
            continue
        d = welch(arm, base)
        flag = below is not None and base[0] < below
        untrainable += [v.label] if flag else []
        primary += [(_word(d), flag)]
        lines.append(f"- {v.label}: baseline {num(base[0], 1)} % at its best lr ({'untrainable' if flag else 'trains'}"
                     f" by the rule, whose bar is {below:g} %); best-vs-best Δ {signed(d.d)}: {_word(d)}.")
    if not lines:
        return ["No cell has both arms' seeds at a chosen lr yet."], None
    for v in views:  # a gated cell the rule calls for that has not run yet: say which cell stands in for it
        gate = v.cell.when_unconverged
        if gate and not v.values("baseline") and ArmState(study, v.cell, v.cell.arms[0]).gate_open():
            lines.append(f"- {v.label}: due by the rule ({gate}'s baseline was still improving at its last "
                         f"evaluation) but not run yet; {gate} is read in its place.")
    words = [w for w, flag in primary if flag]
    if not untrainable:
        result = (f"no untrainable depth (baseline below {below:g} %): the question is not tested at CPU scale; "
                  "the matched-lr Δ above are reported, not read as rescue")
    elif "guide better" in words:
        result = "rescue at CPU scale: where the baseline is untrainable the guided arm is better"
    elif all(w == "guide worse" for w in words):
        result = "the paper's claim contradicted at CPU scale: the guided arm is worse at every untrainable depth"
    else:
        result = UNRESOLVED
    return lines, result


def reading(study: Study, views: list[CellView]) -> str | None:
    """The reading the study's rule (``untrainable_below``) gives; None without a rule or before any data."""
    guided = _guided(views)
    if study.untrainable_below is None or guided is None:
        return None
    return _read(study, views, guided)[1]


def grid_section(study: Study, views: list[CellView], fig_dir: Path, link: Callable[[Path], str]) -> list[str]:
    """The markdown (and the Δ-against-lr figure) of a grid study; nothing for other studies."""
    if not study.grid:
        return []
    compared = _compared(views)
    names = list(dict.fromkeys(arm for _, arm in compared))
    guided = _guided(views)
    if guided is None:
        return []
    md = ["## Δ against lr (every seed at every lr)", "",
          (f"Δ = {guided if len(names) == 1 else 'arm'} − baseline, test metric, both arms at the same lr, with its "
           "Welch t 95% interval over the seeds (arm/baseline seeds in brackets); best-vs-best (each arm at its own "
           "chosen lr) is the cell tables' verdict."), ""]
    rows, series = [], []
    for v, arm in compared:
        pts = v.matched(arm)
        label = v.label if len(names) == 1 else f"{v.label}: {arm}"
        series.append((label, pts))
        rows += [[label, t, f"{signed(d.d)}" + (f" [{signed(d.lo)}, {signed(d.hi)}]" if d.lo is not None else ""),
                  f"{na}/{nb}", _word(d)] for t, d, na, nb in pts]
    md += table(["cell", "lr", "Δ [95% CI]", "seeds", "reading"], rows, "lrrrl") if rows else ["No lr has both arms yet."]
    if any(pts for _, pts in series):
        path = _delta_figure(series, fig_dir / f"{study.name}-delta-vs-lr.png", guided if len(names) == 1 else "arm")
        md += ["", f"![Δ against lr]({link(path)})"]
    trn = [r for v in views if (r := _trainability_row(v)) is not None]
    md += ["", ("**The baseline's trainability** (at its chosen lr; training CE: mean of the last 50 logged steps; "
                "gap: best validation loss − training CE, positive when it overfits)."), ""]
    md += table(["cell", "lr", "seeds", "test (%)", "best validation (%)", "training CE", "best validation loss",
                 "gap"], trn) if trn else ["No baseline seeds yet."]
    if study.untrainable_below is None:  # the reading of a trainability rule, for a study that declares one
        return md + [""]
    lines, result = _read(study, views, guided)
    return md + ["", *lines] + (["", f"**Reading (the study file's rule):** {result}."] if result else []) + [""]


def _compared(views: list[CellView]) -> list[tuple[CellView, str]]:
    """Each cell's own swept arms against its baseline (cells of one study may have different arms)."""
    return [(v, a.name) for v in views for a in v.cell.arms
            if a.name != "baseline" and a.swept and a.name in v.arms and "baseline" in v.arms]


def _guided(views: list[CellView]) -> str | None:
    """The first swept arm compared with a baseline: the arm the study's rule reads."""
    return next((arm for _, arm in _compared(views)), None)


def _delta_figure(series: list[tuple[str, list[tuple[str, Delta, int, int]]]], path: Path, guided: str) -> Path:
    fig = new_figure((7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (label, pts) in enumerate(series):
        if not pts:
            continue
        x = [float(t) for t, *_ in pts]
        y = [d.d for _, d, *_ in pts]
        err = [[d.d - d.lo if d.lo is not None else 0 for _, d, *_ in pts],
               [d.hi - d.d if d.hi is not None else 0 for _, d, *_ in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{i % 10}", label=label)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (both arms)")
    ax.set_ylabel(f"Δ test metric ({guided} − baseline)")
    ax.set_title("Δ against lr, 95% Welch intervals", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
