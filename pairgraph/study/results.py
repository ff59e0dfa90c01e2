"""The report's view of a study: the runs stored in its results folder (:func:`collect`), each arm's
chosen lr and finished seeds (:class:`ArmResult`), and per cell the numbers the tables show, with
the comparison against the paper's direction (:class:`CellView`). Reads results only: no training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairgraph.config import UNTRAINED, load_spec
from pairgraph.core.objectives import objective_class
from pairgraph.errors import PairgraphError
from pairgraph.study.formatting import higher_is_better, mean_se, num, pm, scale, signed
from pairgraph.study.plan import ArmState, chosen_lr, grid_score, judged
from pairgraph.study.records import best_val, read_json, read_spec_yaml
from pairgraph.study.schema import RUN_FOLDER, Arm, Cell, Study, lr_tag
from pairgraph.study.stats import LEVEL, PAPER_SEEDS, Delta, is_close, welch
from pairgraph.tasks import TASKS


@dataclass
class StoredRun:
    """One run folder of the results: its records (summary None when it diverged)."""

    path: Path
    lr: float
    seed: int
    summary: dict[str, Any] | None
    spec: dict[str, Any]
    env: dict[str, Any]
    record: dict[str, Any]
    diverged: dict[str, Any] | None

    @property
    def done(self) -> bool:
        return self.summary is not None


def _load_stored(d: Path) -> StoredRun | None:
    m = RUN_FOLDER.match(d.name)
    if not d.is_dir() or m is None:
        return None
    summary = read_json(d / "summary.json")
    diverged = read_json(d / "diverged.json")
    if summary is None and diverged is None:
        return None
    record = read_json(d / "study.json") or {}
    try:
        lr = float(record.get("lr", m.group(1)))
        seed = int(record.get("seed", m.group(2)))
    except (TypeError, ValueError):
        return None
    return StoredRun(d, lr, seed, summary, read_spec_yaml(d / "spec.yaml") or {}, read_json(d / "env.json") or {},
                     record, diverged)


@dataclass
class ArmResult:
    """One (cell, arm) as its results folder holds it."""

    cell: Cell
    arm: Arm
    sweep: dict[str, StoredRun | None]  # lr tag → the sweep run (None: not run)
    chosen: float | None
    seeds: list[StoredRun]  # completed seed runs at the chosen lr
    diverged_seeds: list[int]
    all_runs: list[StoredRun]
    n_seeds: int = 0
    grid: bool = False  # the study's ``grid: true``: every seed runs at every lr of the sweep

    @property
    def status(self) -> str:
        if not self.all_runs:
            return "not run"
        if self.chosen is None:
            ran = [r for r in self.sweep.values() if r is not None]
            if len(ran) == len(self.sweep) and not any(r.done for r in ran):
                return "every lr diverged"
            if self.grid:
                return f"grid {len(self.all_runs)}/{len(self.sweep) * self.n_seeds} runs"
            return f"sweep {len(ran)}/{len(self.sweep)}"
        finished = len(self.seeds) + len(self.diverged_seeds)
        return "done" if finished >= self.n_seeds else f"seeds {finished}/{self.n_seeds}"


def collect(study: Study) -> dict[tuple[str, str], ArmResult]:
    """Every (cell, arm) of the study as its results folder holds it: sweep, chosen lr, finished seeds."""
    out: dict[tuple[str, str], ArmResult] = {}
    for cell in study.cells:
        for arm in sorted(cell.arms, key=lambda a: a.source is not None):  # lr_from / repeat arms after their source
            out[(cell.name, arm.name)] = _arm_result(study, cell, arm, out)
    return out


def _arm_result(study: Study, cell: Cell, arm: Arm, done: dict[tuple[str, str], ArmResult]) -> ArmResult:
    d = study.results_path() / cell.name / arm.name
    runs = [r for r in (_load_stored(x) for x in sorted(d.iterdir())) if r is not None] if d.is_dir() else []
    by = {(lr_tag(r.lr), r.seed): r for r in runs}
    lrs = study.sweep_lrs(cell, arm)
    sweep = {lr_tag(lr): by.get((lr_tag(lr), study.sweep_seed)) for lr in lrs}
    score_seeds = study.seeds if study.grid else [study.sweep_seed]
    scores = {lr: grid_score(None if (r := by.get((lr_tag(lr), s))) is None else best_val(r.summary)
                             for s in score_seeds) for lr in lrs}
    chosen = chosen_lr(arm, scores, lambda: done[(cell.name, arm.source)].chosen)
    wanted = ArmState(study, cell, arm).seeds()
    seeds: list[StoredRun] = []
    div: list[int] = []
    if chosen is not None:
        for s in wanted:
            r = by.get((lr_tag(chosen), s))
            if r is not None and r.done:
                seeds.append(r)
            elif r is not None:
                div.append(s)
    return ArmResult(cell, arm, sweep, chosen, seeds, div, runs, len(wanted), study.grid)


@dataclass
class CellView:
    """A cell's resolved facts for the report."""

    cell: Cell
    arms: dict[str, ArmResult]
    base_spec: dict[str, Any]
    metric: str
    higher: bool
    base_seeds: tuple[int, ...] = ()  # the study's seeds (its close_seeds come on top where a verdict is close)
    close_below: float = 3.0
    more_seeds: bool = True  # does the study add close_seeds to close verdicts?

    @property
    def label(self) -> str:
        return self.cell.label or self.cell.name

    @property
    def task_kind(self) -> str:
        return str((self.base_spec.get("task") or {}).get("kind", "?"))

    def guide_label(self) -> str:
        return self.cell.guide_label or str((self.base_spec.get("guide") or {}).get("model", "guide"))

    def target_label(self) -> str:
        return self.cell.target_label or str((self.base_spec.get("target") or {}).get("model", "target"))

    def values(self, arm: str, seeds: tuple[int, ...] | None = None, metric: str | None = None) -> list[float]:
        """The arm's test metric (``metric`` when given) over its finished seeds (only ``seeds`` when given)."""
        ar = self.arms.get(arm)
        if ar is None:
            return []
        return _metric_values([(r.summary or {}) for r in ar.seeds if seeds is None or r.seed in seeds],
                              metric or self.metric)

    def trains_guide(self, arm: str) -> bool:
        """Whether the arm guides with trained (not seeded-init) weights, as its finished runs record it."""
        ar = self.arms.get(arm)
        return ar is not None and any(_trained_guide(r.summary or {}) for r in ar.seeds)

    def guide_values(self, arm: str = "trained", metric: str | None = None) -> list[float]:
        """The arm's trained guides' own test metric, one per seed run whose guide/summary.json recorded it
        (a guide trained by the run itself; a pretrained or cached-elsewhere guide records nothing)."""
        ar = self.arms.get(arm)
        if ar is None:
            return []
        return _metric_values([read_json(r.path / "guide" / "summary.json") or {} for r in ar.seeds],
                              metric or self.metric)

    def guide_text(self, arm: str) -> str:
        """`` — its guide alone: mean ± s.e. (n=k)`` beside a trained-guide arm's verdict; n/a when no run of it
        recorded its guide's training; empty for an arm whose guide is not trained."""
        if not self.trains_guide(arm):
            return ""
        vals = self.guide_values(arm)
        if not vals:
            return " — its guide alone: n/a (not recorded)"
        return f" — its guide alone: {pm(*mean_se(vals))} (n={len(vals)})"

    @property
    def second_metric(self) -> str | None:
        """top-5 beside top-1 (or top-1 beside top-5) where the finished runs record it; else None."""
        other = {"top1": "top5", "top5": "top1"}.get(self.metric)
        has = other is not None and any(self.values(a, metric=other) for a in self.arms)
        return other if has else None

    def stat(self, key: str, seeds: tuple[int, ...] | None = None,
             metric: str | None = None) -> tuple[float, float | None, int] | None:
        vals = (self.guide_values(metric=metric) if key == "guide" else [] if key == "untrained_guide"
                else self.values(key, seeds, metric))
        if not vals:
            return None
        m, se = mean_se(vals)
        return m, se, len(vals)

    def second_text(self, arm: str) -> str:
        """The arm on :attr:`second_metric`: ``mean ± s.e.``, and its Δ from the baseline with the Welch interval
        (no verdict: the verdicts stay on the cell's metric); — where the cell has none."""
        second = self.second_metric
        st = self.stat(arm, metric=second) if second else None
        if st is None:
            return "—"
        base = self.stat("baseline", metric=second) if arm != "baseline" else None
        return pm(st[0], st[1]) + (f"; {delta_text(welch(st, base))}" if base is not None else "")

    def _versus_source(self, arm: str) -> str:
        """``; vs <source>: Δ …`` for an arm that varies another (``lr_from``), when both have results."""
        src = next((a.source for a in self.cell.arms if a.name == arm), None)
        ours, ref = self.stat(arm), self.stat(src) if src else None
        if ours is None or ref is None:
            return ""
        return f"; vs {src}: " + delta_text(welch(ours, ref))

    def agreement(self, arm: str, lrs: str = "") -> str:
        """:meth:`verdict` over every finished seed, saying when it changed from the study's first seeds
        (``close_seeds`` added where the verdict was close), when a close verdict still lacks them, and for a
        trained-guide arm the guide's own accuracy (:meth:`guide_text`, after ``lrs``, the chosen lrs when given)."""
        text = self.verdict(arm)
        if arm == "baseline" or text.startswith("n/a"):
            return text + lrs + self.guide_text(arm)
        n = min(len(self.values(arm)), len(self.values("baseline")))
        if n > len(self.base_seeds):
            before = self.verdict(arm, self.base_seeds)
            if word(before) != word(text):
                text += f" — changed with {n} seeds: on {len(self.base_seeds)} it read \"{word(before)}\""
        elif self.more_seeds and self.close(arm):
            text += f" — close (|Δ| < {self.close_below:g} pooled s.d.): rests on {n} seeds, wants 5"
        return text + lrs + self.guide_text(arm)

    def close(self, arm: str) -> bool:
        """|Δ| from the baseline over the study's first seeds under ``close_below`` pooled s.d."""
        return bool(is_close(self.values(arm, self.base_seeds), self.values("baseline", self.base_seeds),
                             self.close_below))

    def verdict(self, arm: str, seeds: tuple[int, ...] | None = None) -> str:
        """Does (arm − baseline) point the way the paper's does? Metric-aware, with the sizes (:meth:`judge`)."""
        if arm == "baseline":
            return "reference"
        if not self.has_verdict(arm):
            return "n/a (no paper number)" + self._versus_source(arm)
        return self.judge(arm, self.stat(arm, seeds), self.stat("baseline", seeds))

    def has_verdict(self, arm: str) -> bool:
        return judged(self.cell, arm)

    def judge(self, arm: str, ours: tuple | None, base: tuple | None) -> str:
        """The verdict on two (mean, s.e., n) statistics of the arm and the baseline: "same direction" or
        "opposite direction" when the Welch 95 % interval of our Δ excludes 0 (the paper's Δ taken with its
        own interval, its s.e.s over :data:`PAPER_SEEDS` seeds), "not resolved at CPU scale" when ours does
        not; "… sign, the paper's Δ not resolved" when only the paper's interval includes 0."""
        paper = self.cell.paper
        assert paper is not None
        if ours is None or base is None:
            return "n/a (" + ("baseline" if base is None else "arm") + " not run)"
        d_ours = welch(ours, base)
        p_arm, p_base = paper.get(arm), paper.get("baseline")
        d_paper = welch((*p_arm, PAPER_SEEDS), (*p_base, PAPER_SEEDS))  # type: ignore[misc]
        size = f"{delta_text(d_ours)} vs paper {delta_text(d_paper, 'the paper gives no s.e.')}"
        better_ours = d_ours.d if self.higher else -d_ours.d
        better_paper = d_paper.d if paper.higher() else -d_paper.d
        if better_paper == 0 or better_ours == 0:
            return f"tie: {size}"
        if not d_ours.resolved:
            return f"{UNRESOLVED}: {size}"
        agree = (better_ours > 0) == (better_paper > 0)
        if d_paper.lo is not None and not d_paper.resolved:
            # the paper's own difference is inside its interval: there is no direction to agree with
            return f"{'same' if agree else 'opposite'} sign, the paper's Δ not resolved: {size}"
        return f"{'same' if agree else 'opposite'} direction: {size}"

    def matched(self, arm: str) -> list[tuple[str, Delta, int, int]]:
        """(arm − baseline) at every lr where both have finished runs: (lr tag, Δ with its Welch interval,
        the arm's seeds, the baseline's seeds), the lrs in increasing order."""
        by_lr: dict[str, dict[str, list[float]]] = {}
        for name in (arm, "baseline"):
            for r in self.arms[name].all_runs:
                v = ((r.summary or {}).get("test") or {}).get(self.metric)
                if isinstance(v, int | float):
                    by_lr.setdefault(lr_tag(r.lr), {}).setdefault(name, []).append(scale(self.metric, float(v)))
        out = []
        for tag in sorted(by_lr, key=float):
            a, b = by_lr[tag].get(arm), by_lr[tag].get("baseline")
            if a and b:
                out.append((tag, welch((*mean_se(a), len(a)), (*mean_se(b), len(b))), len(a), len(b)))
        return out

    def matched_text(self, arm: str) -> str:
        """:meth:`matched` as one cell of a table: ``lr: Δ [lo, hi] (n_arm/n_baseline)`` per lr."""
        rows = self.matched(arm) if arm != "baseline" and "baseline" in self.arms else []
        return "; ".join(f"{t}: {signed(dl.d)}" + (f" [{signed(dl.lo)}, {signed(dl.hi)}]" if dl.lo is not None else "")
                         + f" ({na}/{nb})" for t, dl, na, nb in rows) or "—"


def _metric_values(summaries: list[dict[str, Any]], metric: str) -> list[float]:
    """``metric`` of each summary's test section, in the report's units (those that record it)."""
    vals = [(s.get("test") or {}).get(metric) for s in summaries]
    return [scale(metric, float(v)) for v in vals if isinstance(v, int | float)]


def _trained_guide(summary: dict[str, Any]) -> bool:
    """A run whose objective calls a guide with weights other than the seeded init."""
    weights = summary.get("guide_weights")
    if weights is None or weights == UNTRAINED:
        return False
    try:
        return objective_class(str(summary.get("mode", "guidance"))).calls_guide
    except PairgraphError:  # a record of a mode this version does not know: no claim about its guide
        return False


#: the verdict when our Δ's interval includes 0
UNRESOLVED = "not resolved at CPU scale"


def word(verdict: str) -> str:
    """A verdict's answer without its sizes: "same direction", "not resolved at CPU scale", …"""
    return verdict.split(":")[0]


def delta_text(dl: Delta, why_none: str = "one seed") -> str:
    """``Δ +d, 95 % CI [lo, hi] (Welch df k)``; ``Δ +d (no interval: why_none)`` without one."""
    if dl.lo is None or dl.hi is None or dl.df is None:
        return f"Δ {signed(dl.d)} (no interval: {why_none})"
    return f"Δ {signed(dl.d)}, {LEVEL:.0%} CI [{signed(dl.lo)}, {signed(dl.hi)}] (Welch df {num(dl.df, 1)})"


def cell_views(study: Study, results: dict[tuple[str, str], ArmResult]) -> list[CellView]:
    """A :class:`CellView` per cell: its spec as the study resolves it (else a stored run's) and its metric."""
    views = []
    for cell in study.cells:
        arms = {a.name: results[(cell.name, a.name)] for a in cell.arms}
        base: dict[str, Any] = {}
        try:
            base = load_spec(study.spec_path(cell), [*study.overrides, *cell.overrides]).resolved()
        except PairgraphError:
            stored = [r.spec for ar in arms.values() for r in ar.all_runs if r.spec]
            base = stored[0] if stored else {}
        metric = cell.metric
        if metric is None:
            prim = [(r.summary or {}).get("primary_metric") for ar in arms.values() for r in ar.seeds]
            prim = [p for p in prim if p]
            metric = prim[0] if prim else _default_metric(base)
        views.append(CellView(cell, arms, base, metric, higher_is_better(metric), tuple(study.seeds),
                              study.close_below, bool(study.close_seeds)))
    return views


def _default_metric(spec: dict[str, Any]) -> str:
    kind = (spec.get("task") or {}).get("kind")
    try:
        return TASKS.get(kind).primary_metric
    except Exception:  # noqa: BLE001 - an unknown task in an old record
        return "accuracy"


def coverage(study: Study, results: dict[tuple[str, str], ArmResult]) -> str:
    """How much of the study is done: arms complete, runs finished and diverged, the arms not complete and
    why (a cell run only ``when_unconverged`` whose gate stayed shut is *not needed*, not missing)."""
    all_runs = [r for ar in results.values() for r in ar.all_runs]
    shut = {c.name for c in study.cells if c.when_unconverged and ArmState(study, c, c.arms[0]).gate_open() is False}
    n_arms = sum(len(c.arms) for c in study.cells if c.name not in shut)
    complete = [ar for ar in results.values() if ar.status == "done"]
    text = (f"{len(complete)} of {n_arms} arms complete; {sum(1 for r in all_runs if r.done)} finished runs, "
            f"{sum(1 for r in all_runs if not r.done)} diverged.")
    not_done = [(c, a, ar.status) for (c, a), ar in results.items() if ar.status != "done" and c not in shut]
    if not_done:
        text += "\nNot complete: " + "; ".join(f"{c}/{a} ({s})" for c, a, s in not_done) + "."
    for c in study.cells:
        if c.name in shut:
            text += (f"\nNot needed: cell {c.name} (it runs only if {c.when_unconverged}'s baseline was still "
                     "improving at its last evaluation in most seeds at its chosen lr; it was not).")
    return text
