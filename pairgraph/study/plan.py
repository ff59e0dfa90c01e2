"""The plan: which runs the protocol needs per (cell, arm), which are done, and which can start now.

:func:`plan_study` validates every selected arm's spec and reads the results folder;
:func:`format_plan` is ``pairgraph study --dry-run``. :func:`chosen_lr` is the one place where the
protocol picks an arm's learning rate (the report's :func:`pairgraph.study.results.collect` uses it too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairgraph.compiler.guide_weights import guide_checkpoint_path
from pairgraph.config import TRAIN, PairSpec, as_spec, load_spec, with_defaults
from pairgraph.config.diff import RUNTIME_FIELDS, changed_fields, extendable_fields, spec_diff
from pairgraph.core.objectives import objective_class
from pairgraph.errors import PairgraphError
from pairgraph.study.cost import estimate_lines
from pairgraph.study.records import best_val, read_json, read_spec_yaml
from pairgraph.study.schema import RUN_FOLDER, Arm, Cell, Study, load_study, lr_tag, run_folder, yaml_float
from pairgraph.study.stats import is_close


@dataclass(frozen=True)
class Job:
    """One training run of the protocol, as plain data (it travels to worker processes)."""

    study: str
    cell: str
    arm: str
    lr: float
    seed: int
    phase: str  # "sweep" | "seeds"
    spec: str
    overrides: tuple[str, ...]
    runs_dir: str
    out: str
    guide_key: str | None = None
    threads: int | None = None  # torch threads for this run (the arm's ``threads``); None: the process's
    continues: str | None = None  # a when_unconverged cell: its gate cell's runs folder for this arm (continue_shorter)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.cell, self.arm, lr_tag(self.lr), self.seed

    def title(self) -> str:
        return f"{self.cell}/{self.arm} lr={lr_tag(self.lr)} seed={self.seed} ({self.phase})"


def chosen_lr(arm: Arm, sweep: Mapping[float, float | None], source: Callable[[], float | None]) -> float | None:
    """The lr at which the protocol trains an arm's seeds — the one implementation of that choice.

    A pinned ``lr``; else the choice of the ``lr_from`` or ``repeat`` arm (``source()``); else, once every run of
    the sweep has finished or diverged, the lr whose run has the lowest best-validation loss (ties:
    the smaller lr; None when every lr diverged). ``sweep`` maps each lr of the arm's sweep to its
    run's best validation loss (``math.inf`` when it diverged, None while it has not run).
    """
    if arm.lr is not None:
        return float(arm.lr)
    if arm.source is not None:
        return source()
    if any(v is None for v in sweep.values()):
        return None
    scored = [(v, lr) for lr, v in sweep.items() if v is not None and math.isfinite(v)]
    return min(scored)[1] if scored else None


def only_longer(shorter: dict[str, Any], spec: PairSpec) -> bool:
    """Does ``spec`` compute what the resolved spec ``shorter`` computes, only for more optimizer steps? Then a run
    of it may continue a finished run of ``shorter`` (:func:`pairgraph.study.execute.continue_shorter`)."""
    steps = (shorter.get("train") or {}).get("steps")
    return (not changed_fields(shorter, spec.resolved(), RUNTIME_FIELDS | extendable_fields(shorter))
            and isinstance(steps, int) and spec.train.steps is not None and steps < spec.train.steps)


def grid_score(best_vals: Iterable[float | None]) -> float | None:
    """An lr's score under ``grid: true``: the mean best-validation loss over its seeds (None while one has not
    run; inf when one diverged, so an lr that diverges on any seed loses)."""
    vals = list(best_vals)
    if any(v is None for v in vals):
        return None
    return math.inf if any(not math.isfinite(v) for v in vals) else sum(vals) / len(vals)  # type: ignore[arg-type]


@dataclass
class ArmState:
    """What the results folder says about one (cell, arm): which runs are done and the lr chosen."""

    study: Study
    cell: Cell
    arm: Arm

    @property
    def out_dir(self) -> Path:
        return self.study.results_path() / self.cell.name / self.arm.name

    def state(self, lr: float, seed: int) -> str:
        """done | diverged | todo."""
        d = self.out_dir / run_folder(lr, seed)
        if (d / "summary.json").is_file():
            return "done"
        if (d / "diverged.json").is_file():
            return "diverged"
        return "todo"

    def sweep(self) -> list[float]:
        return self.study.sweep_lrs(self.cell, self.arm)

    def source(self) -> ArmState | None:
        """The state of the arm whose chosen lr this arm takes (``lr_from`` or ``repeat``)."""
        if self.arm.source is None:
            return None
        return ArmState(self.study, self.cell, self.cell.arm(self.arm.source))

    def sweep_scores(self) -> dict[float, float | None]:
        """Each lr of the sweep → its run's best validation loss (inf: diverged; None: not run yet); under
        ``grid: true`` the :func:`grid_score` of its seeds."""
        seeds = self.study.seeds if self.study.grid else [self.study.sweep_seed]
        return {lr: grid_score(self.best_val(lr, s) for s in seeds) for lr in self.sweep()}

    def best_val(self, lr: float, seed: int) -> float | None:
        """A run's best validation loss (inf: diverged; None: not run yet)."""
        state = self.state(lr, seed)
        if state == "todo":
            return None
        return best_val(read_json(self.out_dir / run_folder(lr, seed) / "summary.json") if state == "done" else None)

    def gate_open(self) -> bool | None:
        """May this cell's runs start? Always, unless it gives ``when_unconverged``: then only when that cell's
        baseline, at its chosen lr, had its best validation loss at its last evaluation in most of its seeds
        (None until that cell's baseline seeds are all done)."""
        gate = self.cell.when_unconverged
        if gate is None:
            return True
        cell = self.study.cell(gate)
        base = ArmState(self.study, cell, cell.arm("baseline"))
        lr = base.chosen()
        if lr is None:
            return None
        if any(base.state(lr, s) == "todo" for s in base.seeds()):
            return None
        summaries = [read_json(base.out_dir / run_folder(lr, s) / "summary.json") for s in base.seeds()]
        at_end = [s is not None and s.get("best_step") == s.get("steps") for s in summaries]
        return sum(at_end) > len(at_end) / 2

    def chosen(self) -> float | None:
        """The lr of the seed runs (:func:`chosen_lr`); None until the sweep is complete."""
        src = self.source()
        return chosen_lr(self.arm, self.sweep_scores(), lambda: src.chosen() if src is not None else None)

    def sweep_runs(self) -> list[tuple[float, int]]:
        """The sweep: seed ``sweep_seed`` at every lr (under ``grid: true``, every seed at every lr)."""
        seeds = self.study.seeds if self.study.grid else [self.study.sweep_seed]
        return [(lr, s) for lr in self.sweep() for s in seeds]

    def seed_runs(self, lr: float) -> list[tuple[float, int]]:
        swept = self.arm.swept
        if swept and self.study.grid:
            return []  # the grid's sweep ran them
        return [(lr, s) for s in self.seeds() if not (swept and s == self.study.sweep_seed)]

    def seeds(self) -> list[int]:
        """The study's seeds, and its ``close_seeds`` once this arm's verdict is close (:meth:`wants_more`)."""
        return [*self.study.seeds, *(self.study.close_seeds if self.wants_more() else [])]

    def wants_more(self) -> bool:
        """An arm wants ``close_seeds`` when its |Δ| from the cell's baseline over the study's seeds is under
        ``close_below`` pooled s.d. (:func:`~pairgraph.study.stats.is_close`); the baseline wants them when
        any arm of its cell does. Only arms with a verdict (a paper number) count. Repeats never do: they rerun their arm's seeds as they are."""
        study, cell = self.study, self.cell
        names = [a.name for a in cell.arms]
        if not study.close_seeds or self.arm.repeat is not None or "baseline" not in names:
            return False
        base = ArmState(study, cell, cell.arm("baseline"))
        if self.arm.name != "baseline":
            return judged(cell, self.arm.name) and bool(is_close_to(self, base))
        return any(is_close_to(ArmState(study, cell, a), base) for a in cell.arms
                   if judged(cell, a.name) and a.repeat is None)

    def test_values(self, seeds: list[int]) -> list[float] | None:
        """The test metric of the seed runs at the chosen lr (None until all of them are done)."""
        lr = self.chosen()
        if lr is None:
            return None
        out = []
        for s in seeds:
            summary = read_json(self.out_dir / run_folder(lr, s) / "summary.json")
            metric = self.cell.metric or (summary or {}).get("primary_metric")
            value = ((summary or {}).get("test") or {}).get(metric)
            if not isinstance(value, int | float):
                return None
            out.append(float(value))
        return out

    def n_runs(self) -> int:
        if self.gate_open() is False:
            return 0
        return len(self.sweep_runs()) + len(self.seed_runs(0.0))

    def ready(self) -> list[tuple[str, float, int]]:
        """Runs that can start now: (phase, lr, seed)."""
        if not self.gate_open():
            return []
        todo = [("sweep", lr, s) for lr, s in self.sweep_runs() if self.state(lr, s) == "todo"]
        if todo:
            return todo
        lr = self.chosen()
        if lr is None:
            return []
        return [("seeds", lr, s) for lr_, s in self.seed_runs(lr) if self.state(lr_, s) == "todo"]

    def counts(self) -> dict[str, int]:
        done = div = 0
        lr = self.chosen()
        runs = self.sweep_runs() + (self.seed_runs(lr) if lr is not None else []) if self.gate_open() is not False else []
        for lr_, s in runs:
            st = self.state(lr_, s)
            done += st == "done"
            div += st == "diverged"
        return {"total": self.n_runs(), "done": done, "diverged": div, "left": self.n_runs() - done - div}


@dataclass
class ArmPlan(ArmState):
    """An arm's state with its spec: what :func:`plan_study` returns and jobs are made from."""

    spec_file: Path
    base: PairSpec  # with the study, cell and arm overrides (lr and seed as the spec says)

    def spec_at(self, lr: float, seed: int) -> PairSpec:
        return as_spec(self.base, [f"train.lr={yaml_float(lr)}", f"train.seed={seed}"])

    def job(self, phase: str, lr: float, seed: int) -> Job:
        spec = self.spec_at(lr, seed)
        guide_key = None
        if spec.guide.weights == TRAIN and objective_class(spec.guidance.mode).calls_guide:
            guide_key = str(guide_checkpoint_path(spec))
        gate = self.cell.when_unconverged
        continues = (str(self.study.runs_path() / gate / self.arm.name)
                     if gate and self.arm.name in {a.name for a in self.study.cell(gate).arms} else None)
        return Job(self.study.name, self.cell.name, self.arm.name, float(lr), int(seed), phase, str(self.spec_file),
                   tuple(self.study.overrides_for(self.cell, self.arm, lr, seed)),
                   str(self.study.runs_path() / self.cell.name / self.arm.name),
                   str(self.out_dir / run_folder(lr, seed)), guide_key, self.arm.threads, continues)

    def check_stale(self) -> None:
        """Refuse results that were run with a different spec than the study now gives."""
        if not self.out_dir.is_dir():
            return
        want = self.base.resolved()
        for d in sorted(self.out_dir.iterdir()):
            stored = read_spec_yaml(d / "spec.yaml") if d.is_dir() and RUN_FOLDER.match(d.name) else None
            if stored is None:
                continue
            stored = with_defaults(stored)
            stored = {**stored, "train": {**(stored.get("train") or {}), "lr": want["train"]["lr"],
                                          "seed": want["train"]["seed"]}}
            diff = spec_diff(stored, want)
            if diff:
                raise PairgraphError(
                    f"{d} was run with a different spec than study {self.study.name!r} now gives ("
                    + "; ".join(diff[:3]) + (f"; {len(diff) - 3} more" if len(diff) > 3 else "") + ")",
                    "restore the study file, or move that results folder away to rerun it")


def judged(cell: Cell, arm: str) -> bool:
    """Does the report give this arm a verdict (the paper has a number for it and for the baseline)?"""
    paper = cell.paper
    return arm != "baseline" and paper is not None and None not in (paper.get(arm), paper.get("baseline"))


def is_close_to(arm: ArmState, baseline: ArmState) -> bool | None:
    """Is the arm's verdict close (:meth:`ArmState.wants_more`)? None until both have the study's seeds."""
    a, b = arm.test_values(arm.study.seeds), baseline.test_values(arm.study.seeds)
    return None if a is None or b is None else is_close(a, b, arm.study.close_below)


def _select(study: Study, only: Iterable[str] | None) -> list[tuple[Cell, Arm]]:
    pairs = [(c, a) for c in study.cells for a in c.arms]
    if not only:
        return pairs
    keep: set[tuple[str, str]] = set()
    for item in only:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            cname, _, aname = part.partition("/")
            cell = study.cell(cname)
            if aname and aname not in {a.name for a in cell.arms}:
                raise PairgraphError(f"cell {cname!r} has no arm {aname!r}",
                                     "use one of " + ", ".join(a.name for a in cell.arms))
            keep |= {(cname, a.name) for a in cell.arms if not aname or a.name == aname}
    return [(c, a) for c, a in pairs if (c.name, a.name) in keep]


def plan_study(study: Study | str | Path, only: Iterable[str] | None = None) -> list[ArmPlan]:
    """Validate every selected (cell, arm) spec (no data, no training) and read what is done."""
    if not isinstance(study, Study):
        study = load_study(study)
    plans = []
    for cell, arm in _select(study, only):
        spec_file = study.spec_path(cell)
        try:
            base = load_spec(spec_file, study.overrides_for(cell, arm))
        except PairgraphError as e:
            raise PairgraphError(f"cell {cell.name!r}, arm {arm.name!r}: {e.message}", e.hint) from None
        ap = ArmPlan(study, cell, arm, spec_file, base)
        ap.check_stale()
        plans.append(ap)
    return plans


def _guides_to_train(p: ArmPlan, chosen: float | None) -> set[Path]:
    """Guide checkpoints the arm's runs still have to train (``guide.weights: train``, not cached yet)."""
    if p.base.guide.weights != "train" or not objective_class(p.base.guidance.mode).calls_guide:
        return set()
    # the seed runs' lr is unknown before the sweep ends; the guide's key never depends on the
    # target's lr when guide.train pins its own, so the sweep lrs stand in for it
    # (an lr_from arm has no sweep of its own: its source's lrs stand in until that sweep ends)
    src = p.source()
    stand_in = p.sweep() or (src.sweep() if src is not None else [])
    runs = p.sweep_runs() + [(lr, s) for lr in ([chosen] if chosen is not None else stand_in)
                             for _, s in p.seed_runs(lr)]
    return {guide_checkpoint_path(sp) for lr, s in runs
            if p.state(lr, s) == "todo" and not guide_checkpoint_path(sp := p.spec_at(lr, s)).exists()}


def _plan_row(p: ArmPlan, chosen: float | None, left: int) -> str:
    """One line of the dry-run table."""
    study = p.study
    sweep = p.sweep()
    if sweep and study.grid:  # lr and how many of its seeds have finished
        sweep_txt = " ".join(f"{lr_tag(lr)}:{sum(p.state(lr, s) != 'todo' for s in study.seeds)}" for lr in sweep)
    elif sweep:
        marks = {"done": "✓", "diverged": "✗", "todo": ""}
        sweep_txt = " ".join(lr_tag(lr) + marks[p.state(lr, study.sweep_seed)] for lr in sweep)
    else:
        sweep_txt = (f"(lr of {p.arm.lr_from})" if p.arm.lr_from else f"(repeats {p.arm.repeat})" if p.arm.repeat
                     else "(pinned)")
    seeds = p.seeds()
    seeds_done = sum(p.state(chosen, s) != "todo" for s in seeds) if chosen is not None else 0
    steps = p.base.train.steps
    steps_txt = str(steps) if steps is not None else f"{p.base.train.epochs or 1}ep"
    return (f"{p.cell.name + '/' + p.arm.name:<34} {steps_txt:>6} {sweep_txt:<44} "
            f"{lr_tag(chosen) if chosen is not None else '—':>8} "
            f"{f'{seeds_done}/{len(seeds)}':>6} {left:>5}")


def _continued_from(p: ArmPlan, plans: list[ArmPlan]) -> int:
    """The step at which the runs of a ``when_unconverged`` cell start when they continue their gate's (else 0)."""
    gate = next((g for g in plans if g.cell.name == p.cell.when_unconverged and g.arm.name == p.arm.name), None)
    return gate.base.train.steps if gate is not None and only_longer(gate.base.resolved(), p.base) else 0


def format_plan(plans: list[ArmPlan]) -> str:
    """The dry-run table: per (cell, arm) the sweep, the chosen lr, the seeds, and what is left."""
    if not plans:
        return "nothing selected"
    study = plans[0].study
    protocol = (f"seeds {study.seeds} at every lr (grid); chosen lr: lowest mean best-validation loss" if study.grid
                else f"lr sweep on seed {study.sweep_seed}, then seeds {study.seeds} at the chosen lr")
    lines = [f"study {study.name} ({study.file}): {len({p.cell.name for p in plans})} cells, {len(plans)} arms; "
             + protocol,
             f"results: {study.results_path()}   training runs: {study.runs_path()}", ""]
    head = f"{'cell/arm':<34} {'steps':>6} {'sweep lrs':<44} {'chosen':>8} {'seeds':>6} {'left':>5}"
    lines += [head, "-" * len(head)]
    tot = {"total": 0, "done": 0, "diverged": 0, "left": 0}
    steps_left = 0
    guides_left: set[Path] = set()
    unknown_steps = False
    left: dict[tuple[str, str], int] = {}
    for p in plans:
        c = p.counts()
        left[(p.cell.name, p.arm.name)] = c["left"]
        for k in tot:
            tot[k] += c[k]
        steps = p.base.train.steps
        if steps is None:
            unknown_steps = True
        else:
            steps_left += (steps - _continued_from(p, plans)) * c["left"]
        chosen = p.chosen()
        guides_left |= _guides_to_train(p, chosen)
        lines.append(_plan_row(p, chosen, c["left"]))
    lines.append("")
    lines.append(f"runs: {tot['total']} in all, {tot['done']} done, {tot['diverged']} diverged, {tot['left']} left"
                 f" = {steps_left:,} optimizer steps left" + (" (+ epoch-based runs)" if unknown_steps else ""))
    gates = {p.cell.name: (p.cell.when_unconverged, p.gate_open(), _continued_from(p, plans))
             for p in plans if p.cell.when_unconverged}
    for name, (gate, open_, start) in gates.items():
        verdict = {None: "undecided until its baseline seeds are done", True: "runs", False: "not needed"}[open_]
        lines.append(f"cell {name} runs only if {gate}'s baseline had not reached its best validation loss "
                     f"(best at the last evaluation in most seeds at its chosen lr): {verdict}"
                     + (f"; its runs continue {gate}'s from step {start:,}" if start else ""))
    if guides_left:
        lines.append(f"plus up to {len(guides_left)} guide trainings (guide.weights=train: one per distinct guide "
                     f"training setting, cached in $PAIRGRAPH_CACHE/guides)")
    return "\n".join(lines + estimate_lines(plans, left))
