"""The report's figures, per cell: loss curves of every arm (paper Fig. 2/3), dissimilarity over
training, error consistency κ between arms (Fig. 4), and comparison figures for the arms that vary
one setting (guide disconnected early, noise input, RSA, debiased CKA, other mappings)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pairgraph.analysis import (
    RunData,
    aggregate,
    band,
    error_consistency_matrix,
    load_run,
    new_figure,
    plot_matrix,
    plot_runs,
    save_figure,
    smooth,
    smoothing_window,
    validation_curve,
)
from pairgraph.config import apply_overrides
from pairgraph.core.objectives import objective_class
from pairgraph.errors import PairgraphError
from pairgraph.study.formatting import num, table
from pairgraph.study.records import read_json
from pairgraph.study.results import ArmResult, CellView, StoredRun
from pairgraph.study.schema import Arm, Study


def _settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The settings the comparison figures tell arms apart by."""
    g = spec.get("guidance") or {}
    objective = objective_class(g.get("mode", "guidance"))
    return {"similarity": objective.compares_similarity, "guided": objective.calls_guide,
            "until_step": g.get("until_step"),
            "guide_input": g.get("guide_input", "same"),
            "measure": (spec.get("similarity") or {}).get("measure", "cka"),
            "mapping": (spec.get("mapping") or {}).get("kind", "uniform"),
            "weights": (spec.get("guide") or {}).get("weights", "untrained"), "weight": g.get("weight", 1.0)}


def _arm_settings(view: CellView, arm: Arm) -> dict[str, Any]:
    """An arm's settings from a stored run's spec, else from the cell's spec with the arm's overrides."""
    ar = view.arms[arm.name]
    stored = next((r.spec for r in ar.all_runs if r.spec), None)
    if stored is not None:
        return _settings(stored)
    data = json.loads(json.dumps(view.base_spec)) if view.base_spec else {}
    try:
        apply_overrides(data, view.cell.overrides_of(arm))
    except PairgraphError:
        pass
    return _settings(data)


def _plot_arms(groups: list[tuple[str, list[RunData]]], path: Path, title: str) -> Path:
    """Two panels for named arms: task loss (train moving average, validation ○) and Σ dissimilarity."""
    from matplotlib.lines import Line2D

    fig = new_figure((13, 4.8), layout="constrained")
    ax_loss, ax_dis = fig.subplots(1, 2)
    longest = max((len(r.steps) for _, runs in groups for r in runs), default=1)
    w = smoothing_window(longest)
    handles = []
    any_dis = False
    for i, (name, runs) in enumerate(groups):
        color = f"C{i % 10}"
        curves = [(s, smooth(v, w)) for s, v in (r.series("task_loss") for r in runs) if s.size]
        if curves:
            band(ax_loss, aggregate(curves), color)
        vals = [validation_curve(r) for r in runs if r.val]
        if vals:
            va = aggregate(vals)
            ax_loss.errorbar(va.steps, va.mean, yerr=np.nan_to_num(va.sem) if np.isfinite(va.sem).any() else None,
                             color=color, marker="o", ms=5, mfc="white", lw=0.8, ls=":", capsize=3)
        dis = [(s, smooth(v, w)) for s, v in (r.total_dissimilarity() for r in runs) if s.size]
        if dis:
            any_dis = True
            band(ax_dis, aggregate(dis), color)
        measure = runs[0].measure.upper() if runs and dis else ""
        handles.append(Line2D([], [], color=color, lw=2, label=f"{name}" + (f" (1 − {measure})" if measure else "")
                              + f", n={len(runs)}"))
    ax_loss.set_title(f"task loss: train (moving avg {w}), validation (○); mean ± s.e.", fontsize=10)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("task loss")
    ax_dis.set_title("guidance dissimilarity Σ(1 − M) over mapped pairs (guided steps)", fontsize=10)
    ax_dis.set_xlabel("step")
    ax_dis.set_ylabel("Σ (1 − M)")
    if not any_dis:
        ax_dis.text(0.5, 0.5, "no guided steps logged", transform=ax_dis.transAxes, ha="center", color="0.4")
    for ax in (ax_loss, ax_dis):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    return save_figure(fig, path)


@dataclass
class FigureIndex:
    """Per figure kind: what was drawn (cell → markdown link) and what is missing (cell → why)."""

    drawn: dict[str, dict[str, str]] = field(default_factory=dict)
    missing: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, kind: str, cell: str, link: str) -> None:
        self.drawn.setdefault(kind, {})[cell] = link

    def miss(self, kind: str, cell: str, why: str) -> None:
        self.missing.setdefault(kind, {})[cell] = why


FIG_KINDS = [
    ("curves", "Loss curves (paper Fig. 2): train and validation loss, and dissimilarity, mean ± s.e. over seeds"),
    ("dissimilarity", "Dissimilarity over training (paper Fig. 3): Σ(1 − M) per guided arm"),
    ("error_consistency", "Error consistency κ (paper Fig. 4, §5.4): seed-0 test predictions of every arm"),
    ("init150", "Guide disconnected after 150 steps (paper Fig. 5, §5.5)"),
    ("noise", "Guide fed N(0, 1) noise (paper Fig. 6, appendix E)"),
    ("rsa", "RSA vs CKA guidance (paper Fig. 9, appendix H)"),
    ("debiased", "Biased vs debiased CKA"),
    ("mapping", "Layer mappings compared (uniform / depth / learned)"),
]


def _comparisons(view: CellView) -> dict[str, tuple[list[str], str | None]]:
    """For each comparison figure: (arms to draw, None) or ([], why not)."""
    settings = {a.name: _arm_settings(view, a) for a in view.cell.arms}
    base = _settings(view.base_spec)
    base_mapping = base["mapping"]

    def plain(s: dict[str, Any]) -> bool:
        return (s["similarity"] and s["until_step"] is None and s["guide_input"] == "same"
                and s["measure"] == base["measure"] and s["mapping"] == base_mapping and s["weight"] == base["weight"])

    def refs(tested: list[str]) -> list[str]:
        """The baseline, and the plainly guided arms with the same guide weights as the tested arms."""
        weights = {settings[a]["weights"] for a in tested}
        return ([a for a, s in settings.items() if not s["guided"]]
                + [a for a, s in settings.items() if plain(s) and s["weights"] in weights])

    tests = {
        "init150": lambda s: s["similarity"] and s["until_step"] is not None,
        "noise": lambda s: s["similarity"] and s["guide_input"] == "noise",
        "rsa": lambda s: s["similarity"] and s["measure"] == "rsa",
        "debiased": lambda s: s["similarity"] and s["measure"] == "debiased_cka",
        "mapping": lambda s: s["similarity"] and s["mapping"] != base_mapping,
    }
    what = {"init150": "guidance.until_step", "noise": "guidance.guide_input=noise", "rsa": "similarity.measure=rsa",
            "debiased": "similarity.measure=debiased_cka", "mapping": "another mapping.kind"}
    out: dict[str, tuple[list[str], str | None]] = {}
    for kind, test in tests.items():
        arms = [a for a, s in settings.items() if test(s)]
        if not arms:
            out[kind] = ([], f"no arm with {what[kind]}")
            continue
        run = [a for a in arms if view.arms[a].seeds]
        if not run:
            out[kind] = ([], "arm " + ", ".join(arms) + " not run")
            continue
        out[kind] = ([a for a in refs(run) if a not in run] + run, None)
    return out


def _load_run_data(runs: list[StoredRun]) -> list[RunData]:
    out = []
    for r in runs:
        try:
            out.append(load_run(r.path))
        except PairgraphError:
            continue  # an empty metrics.jsonl: nothing to draw
    return out


def _error_consistency(view: CellView, seed: int) -> tuple[list[str], Any, list[str]] | None:
    """κ between the arms' (and trained guides') predictions of ``seed``; (names, matrix, notes)."""
    preds: dict[str, Any] = {}
    labels: Any = None
    notes: list[str] = []
    sources: list[tuple[str, Path]] = []
    for name, ar in view.arms.items():
        run = next((r for r in ar.seeds if r.seed == seed), None)
        if run is None or ar.arm.repeat is not None:
            continue
        if (run.path / "test_predictions.json").is_file():
            sources.append((name, run.path / "test_predictions.json"))
        if (run.path / "guide" / "test_predictions.json").is_file():
            sources.append((f"guide of {name}", run.path / "guide" / "test_predictions.json"))
    for name, path in sources:
        data = read_json(path)
        if not data or "pred" not in data or "label" not in data:
            notes.append(f"{name}: {path.name} has no pred/label")
            continue
        if labels is None:
            labels = data["label"]
        elif data["label"] != labels:
            notes.append(f"{name}: predictions on other test examples, left out")
            continue
        preds[name] = data["pred"]
    if len(preds) < 2:
        return None
    try:
        names, m = error_consistency_matrix(preds, labels)
    except PairgraphError as e:
        notes.append(f"κ not computed: {e.message}")
        return [], None, notes
    return names, m, notes


def cell_figures(study: Study, v: CellView, fig_dir: Path, figs: FigureIndex, link: Callable[[Path], str]) -> list[str]:
    """Draw a cell's figures under ``fig_dir``, note them in ``figs``; returns the markdown that shows them."""
    name = v.cell.name
    # a repeat arm reruns another's seeds (a numerics probe, the Noise floor section): not drawn beside it
    ran = [(a.name, v.arms[a.name]) for a in v.cell.arms if v.arms[a.name].seeds and a.repeat is None]
    if not ran:
        for kind, _ in FIG_KINDS:
            figs.miss(kind, name, "no arm run")
        return []
    data = {a: _load_run_data(ar.seeds) for a, ar in ran}
    data = {a: d for a, d in data.items() if d}
    md = _curve_figures(v, ran, data, fig_dir, figs, link)
    md += _consistency_figure(v, study.seeds[0], fig_dir, figs, link)
    # comparisons
    titles = {"init150": "guide disconnected early", "noise": "guide fed noise", "rsa": "RSA vs CKA",
              "debiased": "biased vs debiased CKA", "mapping": "layer mappings"}
    for kind, (arms, why) in _comparisons(v).items():
        if why is not None:
            figs.miss(kind, name, why)
            continue
        groups = [(a, data[a]) for a in arms if a in data]
        path = fig_dir / f"{name}-{kind}.png"
        _plot_arms(groups, path, f"{v.label}: {titles[kind]} ({', '.join(a for a, _ in groups)})")
        figs.add(kind, name, link(path))
        md += [f"![{name}: {titles[kind]}]({link(path)})", ""]
    return md


def _curve_figures(v: CellView, ran: list[tuple[str, ArmResult]], data: dict[str, list[RunData]], fig_dir: Path,
                   figs: FigureIndex, link: Callable[[Path], str]) -> list[str]:
    """Fig. 2/3: every arm's seeds (plot_runs), and the dissimilarity of the guided arms."""
    md: list[str] = []
    name = v.cell.name
    if data:
        path = fig_dir / f"{name}-curves.png"
        plot_runs([r.path for a, _ in ran for r in v.arms[a].seeds if a in data], path)
        figs.add("curves", name, link(path))
        md += [f"![{name}: loss curves]({link(path)})", ""]
        missing_arms = [a.name for a in v.cell.arms if not v.arms[a.name].seeds and a.repeat is None]
        if missing_arms:
            md += ["Not in the figures (not run): " + ", ".join(missing_arms) + ".", ""]
    guided = [(a, d) for a, d in data.items() if any(r.guidance_terms() for r in d)]
    if guided:
        path = fig_dir / f"{name}-dissimilarity.png"
        _plot_arms(guided, path, f"{v.label}: dissimilarity to the guide over training")
        figs.add("dissimilarity", name, link(path))
        md += [f"![{name}: dissimilarity]({link(path)})", ""]
    else:
        figs.miss("dissimilarity", name, "no guided arm run")
    return md


def _consistency_figure(v: CellView, seed: int, fig_dir: Path, figs: FigureIndex,
                        link: Callable[[Path], str]) -> list[str]:
    """Fig. 4: κ between the arms' test predictions of ``seed``, as a table and a heatmap."""
    name = v.cell.name
    ec = _error_consistency(v, seed)
    if ec is None:
        figs.miss("error_consistency", name, "fewer than two arms with test_predictions.json")
        return []
    md: list[str] = []
    names, m, notes = ec
    if m is not None:
        path = fig_dir / f"{name}-error-consistency.png"
        plot_matrix(names, m, path, f"{v.label}: error consistency κ (seed {seed})")
        figs.add("error_consistency", name, link(path))
        md += [f"Error consistency κ between arms (seed {seed} test predictions):", ""]
        md += table(["κ"] + names, [[a] + [num(float(m[i, j])) for j in range(len(names))]
                                    for i, a in enumerate(names)]) + [""]
        md += [f"![{name}: error consistency]({link(path)})", ""]
    if notes:
        md += ["Error consistency notes: " + "; ".join(notes) + ".", ""]
    return md
