"""The report's "Noise floor" section: how far results move with the seed and with float rounding alone
(``repeat`` arms: an arm's seed runs rerun with another thread count), which verdicts are close, and
the verdicts under the paper's checkpoint rule beside per-run selection."""

from __future__ import annotations

import gzip
import json
import statistics
from typing import Any

from pairgraph.study.formatting import mean_se, num, scale, table
from pairgraph.study.results import CellView, StoredRun, word
from pairgraph.study.stats import paper_rule


def curve(run: StoredRun, metric: str) -> dict[int, tuple[float, float]]:
    """A run's validation evaluations: step → (loss, metric in report units)."""
    path = run.path / "metrics.jsonl.gz"
    opener: Any = gzip.open if path.exists() else open
    path = path if path.exists() else run.path / "metrics.jsonl"
    out = {}
    with opener(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            if r.get("split") == "val" and isinstance(r.get(metric), int | float):
                out[int(r["step"])] = (float(r["loss"]), scale(metric, float(r[metric])))
    return out


def _stat(values: list[float]) -> tuple[float, float | None, int] | None:
    return (*mean_se(values), len(values)) if values else None


def _val_per_run(view: CellView, arm: str) -> tuple[float, float | None, int] | None:
    """The validation metric at each seed run's own best-validation step (what per-run selection keeps)."""
    runs = view.arms[arm].seeds
    vals = [scale(view.metric, float(v)) for r in runs if isinstance(v := ((r.summary or {}).get("val") or {})
                                                                      .get(view.metric), int | float)]
    return _stat(vals)


def _val_paper(view: CellView, arm: str) -> tuple[tuple[float, float | None, int] | None, int | None]:
    """The validation metric at the evaluation step with the lowest seed-averaged validation loss."""
    picked = paper_rule([curve(r, view.metric) for r in view.arms[arm].seeds])
    return (None, None) if picked is None else (_stat(picked[1]), picked[0])


def _stat_text(s: tuple[float, float | None, int] | None) -> str:
    return "—" if s is None else f"{num(s[0])} ± {num(s[1])}" if s[1] is not None else num(s[0])


def rule_rows(views: list[CellView]) -> tuple[list[list[str]], int]:
    """Per verdict: test (per run), validation (per run), validation (paper rule); and how many changed."""
    rows, changed = [], 0
    for v in views:
        for arm in (a.name for a in v.cell.arms):
            if not v.has_verdict(arm) or not v.arms[arm].seeds or not v.arms["baseline"].seeds:
                continue
            per_run = v.judge(arm, _val_per_run(v, arm), _val_per_run(v, "baseline"))
            (ours, step), (base, b_step) = _val_paper(v, arm), _val_paper(v, "baseline")
            by_rule = v.judge(arm, ours, base)
            moved = word(per_run) != word(by_rule)
            changed += moved
            rows.append([v.label, arm, word(v.verdict(arm)), word(per_run),
                         (f"{word(by_rule)} ({_stat_text(ours)} at step {step}; baseline {_stat_text(base)} at "
                         f"step {b_step})"), "**changed**" if moved else "no"])
    return rows, changed


def repeat_rows(views: list[CellView]) -> list[list[str]]:
    """Per repeat arm: its source's and its own values per seed, the seeds' s.d. and rounding's s.d."""
    rows = []
    for v in views:
        for a in v.cell.arms:
            if a.repeat is None:
                continue
            src, rep = ({r.seed: r for r in v.arms[n].seeds} for n in (a.repeat, a.name))
            seeds = sorted(set(src) & set(rep))
            if len(seeds) < 2:
                continue
            x = [v.values(a.repeat, (s,))[0] for s in seeds]
            y = [v.values(a.name, (s,))[0] for s in seeds]
            threads = {n: sorted({str(r.env.get("threads", "?")) for r in runs.values()})
                       for n, runs in ((a.repeat, src), (a.name, rep))}
            rows.append([v.label, a.repeat, ", ".join(seeds_txt(seeds)),
                         f"{'/'.join(threads[a.repeat])} → {'/'.join(threads[a.name])}",
                         ", ".join(num(t) for t in x), ", ".join(num(t) for t in y),
                         num(statistics.stdev(x)), num(statistics.stdev([b - c for b, c in zip(x, y)]) / 2 ** 0.5),
                         num(max(abs(b - c) for b, c in zip(x, y)))])
    return rows


def seeds_txt(seeds: list[int]) -> list[str]:
    return [str(s) for s in seeds]


def noise_section(views: list[CellView]) -> list[str]:
    """The markdown of the section."""
    md = ["## Noise floor: seeds, float rounding and the checkpoint rule", ""]
    rep = repeat_rows(views)
    md += [("How far a result moves with nothing but float rounding: an arm's seed runs rerun, same spec and "
           "seed, with another torch thread count (`repeat` arms), against how far it moves from seed to seed. "
           "A rerun also runs the code of its day, so any rounding-level change since (a stored run's "
           "`env.json` names its commit) is part of what it measures. Rounding s.d. is the s.d. of the paired "
           "differences / √2."), ""]
    md += table(["cell", "arm", "seeds", "threads", "values", "rerun", "seed s.d.", "rounding s.d.", "max |Δ|"],
                rep) if rep else ["(no repeat arm has finished)"]
    close = [(v.label, a.name) for v in views for a in v.cell.arms if v.has_verdict(a.name) and v.close(a.name)]
    md += ["", f"Verdicts whose |Δ| over the study's seeds is under {views[0].close_below if views else 3:g} "
           f"pooled s.d. ({len(close)}): " + ("; ".join(f"{c} / {a}" for c, a in close) or "none")
           + ". These arms and their baselines get the study's `close_seeds`; the cell tables say where a verdict "
           "changed with them.", ""]
    rows, changed = rule_rows(views)
    md += [("The checkpoint rule. Per run (this report's): each seed's own best-validation checkpoint. The paper's: "
           "the evaluation step with the lowest seed-averaged validation loss, the same step for every seed. "
           "Both are read on the validation split (the only split evaluated at every step); the verdict on the "
           f"test split is the cell tables'. {changed} of {len(rows)} verdicts change with the rule."), ""]
    md += table(["cell", "arm", "test, per run", "val, per run", "val, paper's rule", "rule changes it?"], rows)
    return md + [""]
