"""Training curves of several runs (paper Fig. 2 and 3): mean ± standard error over seeds, moving
averages, and :func:`plot_runs`'s three panels (task loss, summed and per-pair dissimilarity)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pairgraph.analysis.figures import LINESTYLES, band, new_figure, note, save_figure, smoothing_window
from pairgraph.analysis.runs import RUN_HINT, SEED, RunData, config_fields, load_run
from pairgraph.errors import PairgraphError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: fields left out of the legend's "which fields differ". Not NOT_CONFIG: the guide-cache fields are
#: still named, because leaving them out changes two committed study figures (fcn_deep, fcn_deep_mnist1d),
#: whose legends then name the measure instead — a legend fix that belongs with the next report change.
_LEGEND_IGNORES = frozenset({SEED, "train.device", "train.num_workers"})


class Aggregate(NamedTuple):
    """Mean ± standard error of several curves at the union of their steps."""

    steps: np.ndarray
    mean: np.ndarray
    sem: np.ndarray  # NaN where fewer than 2 curves have the step
    n: np.ndarray  # how many curves have each step


def aggregate(curves: Sequence[tuple[Any, Any]]) -> Aggregate:
    """Mean and standard error (std with ddof=1 / √n) across curves given as ``(steps, values)``.

    Curves may cover different steps (a shorter or killed seed): each step averages the curves that
    have it, and its standard error is NaN where only one does. Error bars as in the paper's Fig. 2.
    """
    if not curves:
        raise PairgraphError("aggregate got no curves", "pass at least one (steps, values) pair")
    arrays = []
    for steps, values in curves:
        s, v = np.asarray(steps, dtype=float).ravel(), np.asarray(values, dtype=float).ravel()
        if s.shape != v.shape:
            raise PairgraphError(f"a curve has {s.size} steps but {v.size} values", "give one value per step")
        arrays.append((s, v))
    grid = np.unique(np.concatenate([s for s, _ in arrays]))
    table = np.full((len(arrays), grid.size), np.nan)
    for i, (s, v) in enumerate(arrays):
        table[i, np.searchsorted(grid, s)] = v
    have = ~np.isnan(table)
    n = have.sum(axis=0)
    filled = np.where(have, table, 0.0)
    mean = filled.sum(axis=0) / np.maximum(n, 1)
    sq = np.where(have, (table - mean) ** 2, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sem = np.where(n >= 2, np.sqrt(sq / np.maximum(n - 1, 1)) / np.sqrt(n), np.nan)
    mean = np.where(n > 0, mean, np.nan)
    return Aggregate(grid, mean, sem, n)


def smooth(values: Any, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter windows at the start; same length)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or v.size == 0:
        return v
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def validation_curve(run: RunData) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, validation loss)`` of a run's evaluations."""
    return np.array([e["step"] for e in run.val], float), np.array([e["loss"] for e in run.val], float)


# ---------------------------------------------------------------- runs grouped into configurations


@dataclass
class _Group:
    label: str
    runs: list[RunData]
    color: Any = None
    linestyle: str = "-"

    @property
    def guided(self) -> bool:
        return any(r.guidance_terms() for r in self.runs)


def _one_run_per_seed(group: list[RunData]) -> None:
    """A mean over seeds must not count one seed twice (two runs of one configuration and seed)."""
    seen: dict[str, RunData] = {}
    for r in group:
        if str(r.seed) in seen:
            raise PairgraphError(
                f"runs {seen[str(r.seed)].path} and {r.path} are the same configuration with seed {r.seed}: "
                "their mean would count one seed twice", "pass one of them (or give the repeat another train.seed)")
        seen[str(r.seed)] = r


def _group_runs(runs: list[RunData]) -> list[_Group]:
    """Runs that differ only in their seed share a group; colliding labels get the differing fields."""
    by_key: dict[str, list[RunData]] = {}
    for r in runs:
        by_key.setdefault(r.config_key(), []).append(r)
    groups = list(by_key.values())
    for g in groups:
        _one_run_per_seed(g)
    base: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        base.setdefault(g[0].base_label(), []).append(i)
    labels = [g[0].base_label() for g in groups]
    for same in base.values():
        if len(same) < 2:
            continue
        flats = [config_fields(groups[i][0].spec, _LEGEND_IGNORES) for i in same]
        keys = sorted(set().union(*flats))
        differ = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1][:3]
        for i, f in zip(same, flats):
            extra = ", ".join(f"{k}={f.get(k)}" for k in differ) or groups[i][0].path.name
            labels[i] += f" · {extra}"
    out = []
    for g, lab in zip(groups, labels):
        seeds = sorted({str(r.seed) for r in g})
        if len(g) == 1:
            lab += f" · seed {g[0].seed}"
        else:
            lab += f" · seeds {','.join(seeds)} (mean ± s.e., n={len(g)})"
        out.append(_Group(lab, g))
    return out


def _style_groups(groups: list[_Group]) -> int:
    """A colour per group, a line style per guided group; returns how many groups are guided."""
    n_guided = 0
    for i, g in enumerate(groups):
        g.color = f"C{i % 10}"
        if g.guided:
            g.linestyle = LINESTYLES[n_guided % len(LINESTYLES)]
            n_guided += 1
    return n_guided


# ---------------------------------------------------------------- plot_runs and its panels


def plot_runs(runs: Sequence[str | Path], output: str | Path) -> Path:
    """One PNG with three panels for runs ``runs/<name>/<id>`` (paper Fig. 2 and 3).

    1. training task loss (moving average; raw values faint) and validation loss (markers);
    2. the summed dissimilarity Σ(1 − M) over the mapped pairs (guided steps only);
    3. each pair's dissimilarity (colour = pair, line style = run).

    Each run is labelled ``<name> · <mode> · <guide weights> · seed N`` from its spec.yaml. Runs
    whose resolved specs differ only in ``train.seed`` are drawn as their mean ± standard error.
    """
    if not runs:
        raise PairgraphError("no runs to plot", RUN_HINT)
    data = [load_run(r) for r in runs]
    groups = _group_runs(data)
    n_guided = _style_groups(groups)
    w = smoothing_window(max((len(r.steps) for r in data), default=0))

    fig = new_figure((19, 6.2), layout="constrained")
    ax_loss, ax_sum, ax_pair = fig.subplots(1, 3)
    _task_loss_panel(ax_loss, groups, w)
    measures = {r.measure for r in data if r.guidance_terms()}
    m_name = measures.pop().upper() if len(measures) == 1 else "M"
    _total_panel(ax_sum, groups, data, w, m_name)
    _pair_panel(ax_pair, groups, data, w, m_name, n_guided)
    for ax in (ax_loss, ax_sum, ax_pair):
        ax.grid(alpha=0.3)
    _run_legend(fig, groups, n_guided)
    return save_figure(fig, Path(output))


def _task_loss_panel(ax: Axes, groups: list[_Group], w: int) -> None:
    from matplotlib.lines import Line2D

    for g in groups:
        curves = [c for c in (r.series("task_loss") for r in g.runs) if c[0].size]
        if curves:
            raw = aggregate(curves)
            ax.plot(raw.steps, raw.mean, color=g.color, lw=0.7, alpha=0.25)
            band(ax, aggregate([(s, smooth(v, w)) for s, v in curves]), g.color, g.linestyle)
        vals = [validation_curve(r) for r in g.runs if r.val]
        if vals:
            va = aggregate(vals)
            ax.errorbar(va.steps, va.mean, yerr=None if not np.isfinite(va.sem).any() else np.nan_to_num(va.sem),
                        color=g.color, marker="o", ms=6, mfc="white", mew=1.6, lw=0.8, ls=":", capsize=3)
    ax.set_title(f"Task loss: train (moving average over {w} steps, raw faint), validation (○)", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("task loss")
    ax.legend(handles=[Line2D([], [], color="0.2", lw=1.8, label=f"train, moving avg ({w})"),
                       Line2D([], [], color="0.2", lw=0.7, alpha=0.35, label="train, raw"),
                       Line2D([], [], color="0.2", marker="o", mfc="white", ls=":", lw=0.8, label="validation")],
              fontsize=8, loc="upper right")


def _total_panel(ax: Axes, groups: list[_Group], data: list[RunData], w: int, m_name: str) -> None:
    n_pairs = {len(r.guidance_terms()) for r in data if r.guidance_terms()}
    drawn = False
    for g in groups:
        curves = [c for c in (r.total_dissimilarity() for r in g.runs) if c[0].size]
        if not curves:
            continue
        drawn = True
        raw = aggregate(curves)
        ax.plot(raw.steps, raw.mean, color=g.color, lw=0.7, alpha=0.25)
        band(ax, aggregate([(s, smooth(v, w)) for s, v in curves]), g.color, g.linestyle)
    unguided = [g.label.split(" · ")[1] for g in groups if not g.guided]
    if not drawn:
        note(ax, "no guided steps logged\n(baseline runs compute no dissimilarity)")
    elif unguided:
        ax.text(0.99, 0.98, "not shown: runs without guidance (" + ", ".join(sorted(set(unguided))) + ")",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="0.4")
    pairs_txt = f" over {n_pairs.pop()} pairs" if len(n_pairs) == 1 else ""
    ax.set_title(f"Guidance dissimilarity Σ(1 − {m_name}){pairs_txt} (moving avg)", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(f"Σ (1 − {m_name})")


def _pair_colors(pairs: list[str]) -> dict[str, Any]:
    """Up to 10 pairs: the colour cycle; more: viridis by depth."""
    from matplotlib import colormaps

    if len(pairs) <= 10:
        return {k: f"C{i}" for i, k in enumerate(pairs)}
    cmap = colormaps["viridis"]
    return {k: cmap(0.92 * i / (len(pairs) - 1)) for i, k in enumerate(pairs)}


def _pair_panel(ax: Axes, groups: list[_Group], data: list[RunData], w: int, m_name: str, n_guided: int) -> None:
    from matplotlib.lines import Line2D

    all_pairs = list(dict.fromkeys(k for r in data for k in r.guidance_terms()))
    if all_pairs:
        pair_color = _pair_colors(all_pairs)
        for g in groups:
            per_run = [r.guidance_terms() for r in g.runs]
            for k in all_pairs:
                curves = [(s, smooth(v, w)) for t in per_run if k in t for s, v in [t[k]]]
                if curves:
                    band(ax, aggregate(curves), pair_color[k], g.linestyle, lw=1.3, alpha=0.12)
        shown = all_pairs if len(all_pairs) <= 12 else all_pairs[:5] + all_pairs[-5:]
        handles = [Line2D([], [], color=pair_color[k], lw=2, label=k.replace("->", " → ")) for k in shown]
        if len(shown) < len(all_pairs):
            handles.insert(5, Line2D([], [], color="none", label=f"… {len(all_pairs) - len(shown)} more (colour = depth)"))
        if n_guided > 1:
            handles += [Line2D([], [], color="0.3", ls=g.linestyle, label=f"line style: run {i + 1} (see below)")
                        for i, g in enumerate(x for x in groups if x.guided)]
        ax.legend(handles=handles, fontsize=7, loc="upper right", title="guide tap → target tap",
                  title_fontsize=7, framealpha=0.85)
    else:
        note(ax, "no per-pair dissimilarity logged")
    ax.set_title(f"Per-pair dissimilarity 1 − {m_name} (moving avg)", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(f"1 − {m_name}")


def _run_legend(fig: Figure, groups: list[_Group], n_guided: int) -> None:
    from matplotlib.lines import Line2D

    guided_idx = {id(g): i + 1 for i, g in enumerate(x for x in groups if x.guided)}
    run_handles = [Line2D([], [], color=g.color, ls=g.linestyle, lw=2,
                          label=(f"run {guided_idx[id(g)]}: " if n_guided > 1 and id(g) in guided_idx else "") + g.label)
                   for g in groups]
    fig.legend(handles=run_handles, loc="outside lower center", ncol=1 if len(groups) > 4 else min(len(groups), 2),
               fontsize=9, frameon=False)
