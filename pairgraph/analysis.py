"""Analyses and figures: training curves of runs (paper Fig. 2 and 3), error consistency κ
(§5.4, eq. 7) and guide × target similarity heatmaps.

* :func:`plot_runs` — task/validation loss, summed and per-pair dissimilarity of several runs;
  runs that differ only in their seed are drawn as mean ± standard error (:func:`aggregate`).
* :func:`error_consistency`, :func:`error_consistency_matrix`, :func:`plot_matrix` — Geirhos et
  al. (2020) κ between classifiers and its annotated heatmap.
* :func:`similarity_heatmap` — one validation batch through guide and target, the similarity of
  every guide tap with every target tap, the mapped pairs outlined.

Figures are drawn with matplotlib's object API on the Agg canvas: no display is needed and the
pyplot state of a notebook is left alone.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from torch import Tensor

from pairgraph.compiler.guide_weights import resolve_guide_weights
from pairgraph.errors import PairgraphError

RUN_HINT = "pass run folders runs/<name>/<id> written by `pairgraph train`"
#: spec fields that do not change what a run computes: runs differing only there are seeds of one configuration
_NOT_CONFIG = {("train", "seed"), ("train", "device"), ("train", "num_workers")}
_LINESTYLES = ["-", "--", ":", "-."]


# ---------------------------------------------------------------- figures (Agg, no pyplot state)


def _figure(figsize: tuple[float, float], **kwargs: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, dpi: int = 110) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        raise PairgraphError(f"cannot write {path}: {e.strerror or e}", "pick another output path (-o)") from None
    return path


# ---------------------------------------------------------------- runs


@dataclass
class RunData:
    """What :func:`load_run` reads from a run folder."""

    path: Path
    spec: dict[str, Any]
    steps: list[dict[str, Any]]  # per-step training records, sorted by step
    val: list[dict[str, Any]]  # per-evaluation records (split "val"), sorted by step
    summary: dict[str, Any] = field(default_factory=dict)
    _terms: dict[str, tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)

    def _get(self, section: str, key: str, default: Any = None) -> Any:
        return (self.spec.get(section) or {}).get(key, default)

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.summary.get("name") or self.path.parent.name)

    @property
    def mode(self) -> str:
        return str(self._get("guidance", "mode") or self.summary.get("mode") or "?")

    @property
    def guide_weights(self) -> str:
        w = str(self._get("guide", "weights") or self.summary.get("guide_weights") or "?")
        if self.mode == "baseline":
            return "no guide"  # the guide is never called: its weights do not matter
        if w not in ("untrained", "train"):
            w = Path(w).name  # a checkpoint path: its file name is enough for a legend
        return w

    @property
    def seed(self) -> Any:
        s = self._get("train", "seed")
        return s if s is not None else self.summary.get("seed", "?")

    @property
    def measure(self) -> str:
        return str(self._get("similarity", "measure") or "cka")

    def base_label(self) -> str:
        return f"{self.name} · {self.mode} · {self.guide_weights}"

    def label(self) -> str:
        return f"{self.base_label()} · seed {self.seed}"

    def config_key(self) -> str:
        """The resolved spec without its seed (and device): equal keys = seeds of one configuration."""
        if not self.spec:
            return "label:" + self.base_label()
        flat = {k: v for k, v in _flatten(self.spec).items() if k[:2] not in _NOT_CONFIG}
        return json.dumps(sorted((".".join(map(str, k)), repr(v)) for k, v in flat.items()))

    def series(self, key: str, guided_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        recs = [r for r in self.steps if key in r and (r.get("guided") or not guided_only)]
        return np.array([r["step"] for r in recs], dtype=float), np.array([r[key] for r in recs], dtype=float)

    def guidance_terms(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-pair dissimilarity over the guided steps: ``{"guide->target": (steps, values)}``."""
        if self._terms is None:
            self._terms = self._read_terms()
        return self._terms

    def _read_terms(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out: dict[str, tuple[list[float], list[float]]] = {}
        for r in self.steps:
            if not r.get("guided"):
                continue
            for k, v in (r.get("terms") or {}).items():
                if "->" not in k:  # distill mode logs {"distill": ...}: not a dissimilarity
                    continue
                s, vals = out.setdefault(k, ([], []))
                s.append(r["step"])
                vals.append(v)
        return {k: (np.array(s, dtype=float), np.array(v, dtype=float)) for k, (s, v) in out.items()}

    def total_dissimilarity(self) -> tuple[np.ndarray, np.ndarray]:
        """Σ over pairs of the (unweighted) dissimilarity, at every guided step that logged all pairs."""
        terms = self.guidance_terms()
        if not terms:
            return np.array([]), np.array([])
        per_step: dict[float, list[float]] = {}
        for s, v in terms.values():
            for a, b in zip(s, v):
                per_step.setdefault(float(a), []).append(float(b))
        steps = sorted(k for k, vals in per_step.items() if len(vals) == len(terms))
        return np.array(steps), np.array([sum(per_step[k]) for k in steps])


def _flatten(d: Mapping[str, Any], prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    out: dict[tuple[Any, ...], Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def metrics_file(run: Path) -> Path | None:
    """A run folder's metrics: ``metrics.jsonl`` (training) or ``metrics.jsonl.gz`` (a study's stored results)."""
    for name in ("metrics.jsonl", "metrics.jsonl.gz"):
        if (run / name).is_file():
            return run / name
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
    return records


def load_run(path: str | Path) -> RunData:
    """Read a run folder (``spec.yaml``, ``metrics.jsonl``, ``summary.json``); PairgraphError if it is not one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PairgraphError(f"run folder {p} does not exist", RUN_HINT)
    metrics = metrics_file(p) if p.is_dir() else None
    if metrics is None:
        inner = sorted(m.parent for m in p.glob("*/metrics.jsonl*")) if p.is_dir() else []
        hint = (f"it holds runs: pass those instead, e.g. {inner[0]}" + (f" (and {len(inner) - 1} more)" if len(inner) > 1 else "")
                if inner else RUN_HINT)
        raise PairgraphError(f"{p} is not a run folder (no metrics.jsonl)", hint)
    records = _read_jsonl(metrics)
    steps = {r["step"]: r for r in records if "split" not in r}  # last record of a step wins
    val = {r["step"]: r for r in records if r.get("split") == "val"}
    if not steps and not val:
        raise PairgraphError(f"run {p} has no metrics yet (metrics.jsonl is empty)",
                             "wait for its first step, or leave it out")
    spec: dict[str, Any] = {}
    if (p / "spec.yaml").exists():
        try:
            spec = yaml.safe_load((p / "spec.yaml").read_text()) or {}
        except yaml.YAMLError as e:
            raise PairgraphError(f"{p / 'spec.yaml'} is not valid YAML: {e}", "restore the run's spec.yaml") from None
    summary: dict[str, Any] = {}
    if (p / "summary.json").exists():
        try:
            summary = json.loads((p / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = {}
    return RunData(p, spec if isinstance(spec, dict) else {}, [steps[k] for k in sorted(steps)],
                   [val[k] for k in sorted(val)], summary)


# ---------------------------------------------------------------- curves


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


def _window(n_steps: int) -> int:
    return int(min(max(round(n_steps / 20), 1), 200))


# ---------------------------------------------------------------- plot_runs


@dataclass
class _Group:
    label: str
    runs: list[RunData]
    color: Any = None
    linestyle: str = "-"

    @property
    def guided(self) -> bool:
        return any(r.guidance_terms() for r in self.runs)


def _group_runs(runs: list[RunData]) -> list[_Group]:
    """Runs that differ only in their seed share a group; colliding labels get the differing fields."""
    by_key: dict[str, list[RunData]] = {}
    for r in runs:
        by_key.setdefault(r.config_key(), []).append(r)
    groups = list(by_key.values())
    base: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        base.setdefault(g[0].base_label(), []).append(i)
    labels = [g[0].base_label() for g in groups]
    for same in base.values():
        if len(same) < 2:
            continue
        flats = [{k: v for k, v in _flatten(groups[i][0].spec).items() if k[:2] not in _NOT_CONFIG} for i in same]
        keys = sorted(set().union(*flats), key=str)
        differ = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1][:3]
        for i, f in zip(same, flats):
            extra = ", ".join(f"{'.'.join(map(str, k))}={f.get(k)}" for k in differ) or groups[i][0].path.name
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


def _band(ax: Any, agg: Aggregate, color: Any, linestyle: str = "-", lw: float = 1.8, alpha: float = 0.2) -> None:
    ax.plot(agg.steps, agg.mean, color=color, linestyle=linestyle, lw=lw)
    if np.isfinite(agg.sem).any():
        sem = np.nan_to_num(agg.sem)
        ax.fill_between(agg.steps, agg.mean - sem, agg.mean + sem, color=color, alpha=alpha, lw=0)


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.4", wrap=True)


def plot_runs(runs: Sequence[str | Path], output: str | Path) -> Path:
    """One PNG with three panels for runs ``runs/<name>/<id>`` (paper Fig. 2 and 3).

    1. training task loss (moving average; raw values faint) and validation loss (markers);
    2. the summed dissimilarity Σ(1 − M) over the mapped pairs (guided steps only);
    3. each pair's dissimilarity (colour = pair, line style = run).

    Each run is labelled ``<name> · <mode> · <guide weights> · seed N`` from its spec.yaml. Runs
    whose resolved specs differ only in ``train.seed`` are drawn as their mean ± standard error.
    """
    from matplotlib.lines import Line2D

    if not runs:
        raise PairgraphError("no runs to plot", RUN_HINT)
    data = [load_run(r) for r in runs]
    groups = _group_runs(data)
    colors = [f"C{i % 10}" for i in range(len(groups))]
    n_guided = 0
    for g, c in zip(groups, colors):
        g.color = c
        if g.guided:
            g.linestyle = _LINESTYLES[n_guided % len(_LINESTYLES)]
            n_guided += 1
    longest = max((len(r.steps) for r in data), default=0)
    w = _window(longest)

    fig = _figure((19, 6.2), layout="constrained")
    ax_loss, ax_sum, ax_pair = fig.subplots(1, 3)

    # -- 1: task loss
    for g in groups:
        curves = [r.series("task_loss") for r in g.runs]
        curves = [c for c in curves if c[0].size]
        if curves:
            raw = aggregate(curves)
            ax_loss.plot(raw.steps, raw.mean, color=g.color, lw=0.7, alpha=0.25)
            _band(ax_loss, aggregate([(s, smooth(v, w)) for s, v in curves]), g.color, g.linestyle)
        vals = [(np.array([e["step"] for e in r.val], float), np.array([e["loss"] for e in r.val], float))
                for r in g.runs if r.val]
        if vals:
            va = aggregate(vals)
            ax_loss.errorbar(va.steps, va.mean, yerr=None if not np.isfinite(va.sem).any() else np.nan_to_num(va.sem),
                             color=g.color, marker="o", ms=6, mfc="white", mew=1.6, lw=0.8, ls=":", capsize=3)
    ax_loss.set_title(f"Task loss: train (moving average over {w} steps, raw faint), validation (○)", fontsize=10)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("task loss")
    ax_loss.legend(handles=[Line2D([], [], color="0.2", lw=1.8, label=f"train, moving avg ({w})"),
                            Line2D([], [], color="0.2", lw=0.7, alpha=0.35, label="train, raw"),
                            Line2D([], [], color="0.2", marker="o", mfc="white", ls=":", lw=0.8, label="validation")],
                   fontsize=8, loc="upper right")

    # -- 2: summed dissimilarity
    measures = {r.measure for r in data if r.guidance_terms()}
    m_name = measures.pop().upper() if len(measures) == 1 else "M"
    n_pairs = {len(r.guidance_terms()) for r in data if r.guidance_terms()}
    drawn = False
    for g in groups:
        curves = [c for c in (r.total_dissimilarity() for r in g.runs) if c[0].size]
        if not curves:
            continue
        drawn = True
        raw = aggregate(curves)
        ax_sum.plot(raw.steps, raw.mean, color=g.color, lw=0.7, alpha=0.25)
        _band(ax_sum, aggregate([(s, smooth(v, w)) for s, v in curves]), g.color, g.linestyle)
    unguided = [g.label.split(" · ")[1] for g in groups if not g.guided]
    if not drawn:
        _note(ax_sum, "no guided steps logged\n(baseline runs compute no dissimilarity)")
    elif unguided:
        ax_sum.text(0.99, 0.98, "not shown: runs without guidance (" + ", ".join(sorted(set(unguided))) + ")",
                    transform=ax_sum.transAxes, ha="right", va="top", fontsize=8, color="0.4")
    pairs_txt = f" over {n_pairs.pop()} pairs" if len(n_pairs) == 1 else ""
    ax_sum.set_title(f"Guidance dissimilarity Σ(1 − {m_name}){pairs_txt} (moving avg)", fontsize=10)
    ax_sum.set_xlabel("step")
    ax_sum.set_ylabel(f"Σ (1 − {m_name})")

    # -- 3: per-pair dissimilarity
    all_pairs: list[str] = []
    for r in data:
        for k in r.guidance_terms():
            if k not in all_pairs:
                all_pairs.append(k)
    if all_pairs:
        from matplotlib import colormaps

        cmap = colormaps["viridis"]
        if len(all_pairs) <= 10:
            pair_color = {k: f"C{i}" for i, k in enumerate(all_pairs)}
        else:
            pair_color = {k: cmap(0.92 * i / (len(all_pairs) - 1)) for i, k in enumerate(all_pairs)}
        for g in groups:
            per_run = [r.guidance_terms() for r in g.runs]
            for k in all_pairs:
                curves = [(s, smooth(v, w)) for t in per_run if k in t for s, v in [t[k]]]
                if curves:
                    _band(ax_pair, aggregate(curves), pair_color[k], g.linestyle, lw=1.3, alpha=0.12)
        shown = all_pairs if len(all_pairs) <= 12 else all_pairs[:5] + all_pairs[-5:]
        handles = [Line2D([], [], color=pair_color[k], lw=2, label=k.replace("->", " → ")) for k in shown]
        if len(shown) < len(all_pairs):
            handles.insert(5, Line2D([], [], color="none", label=f"… {len(all_pairs) - len(shown)} more (colour = depth)"))
        if n_guided > 1:
            handles += [Line2D([], [], color="0.3", ls=g.linestyle, label=f"line style: run {i + 1} (see below)")
                        for i, g in enumerate(x for x in groups if x.guided)]
        ax_pair.legend(handles=handles, fontsize=7, loc="upper right", title="guide tap → target tap",
                       title_fontsize=7, framealpha=0.85)
    else:
        _note(ax_pair, "no per-pair dissimilarity logged")
    ax_pair.set_title(f"Per-pair dissimilarity 1 − {m_name} (moving avg)", fontsize=10)
    ax_pair.set_xlabel("step")
    ax_pair.set_ylabel(f"1 − {m_name}")

    for ax in (ax_loss, ax_sum, ax_pair):
        ax.grid(alpha=0.3)
    guided_idx = {id(g): i + 1 for i, g in enumerate(x for x in groups if x.guided)}
    run_handles = [Line2D([], [], color=g.color, ls=g.linestyle, lw=2,
                          label=(f"run {guided_idx[id(g)]}: " if n_guided > 1 and id(g) in guided_idx else "") + g.label)
                   for g in groups]
    fig.legend(handles=run_handles, loc="outside lower center", ncol=1 if len(groups) > 4 else min(len(groups), 2),
               fontsize=9, frameon=False)
    return _save(fig, Path(output))


# ---------------------------------------------------------------- error consistency (§5.4)


def _as_tensor(x: Any) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().cpu()


def _predictions(pred: Any, labels: Tensor, what: str) -> Tensor:
    p = _as_tensor(pred)
    if p.is_floating_point() and p.dim() == labels.dim() + 1:  # logits: predicted class
        p = (p[..., 0] > 0).long() if p.shape[-1] == 1 else p.argmax(-1)
    if tuple(p.shape) != tuple(labels.shape):
        raise PairgraphError(f"{what} has shape {tuple(p.shape)} but the labels have {tuple(labels.shape)}",
                             "pass one predicted class (or one row of logits) per label")
    return p.long()


def _correct(pred_a: Any, pred_b: Any, labels: Any) -> tuple[Tensor, Tensor]:
    from pairgraph.tasks import IGNORE_INDEX

    y = _as_tensor(labels).long()
    a, b = _predictions(pred_a, y, "pred_a"), _predictions(pred_b, y, "pred_b")
    keep = y != IGNORE_INDEX  # token tasks mark positions without a target with IGNORE_INDEX
    y, a, b = y[keep], a[keep], b[keep]
    if y.numel() == 0:
        raise PairgraphError("error consistency needs at least one labelled sample", "pass non-empty predictions")
    return a == y, b == y


def error_consistency(pred_a: Any, pred_b: Any, labels: Any) -> float:
    """Error consistency κ (Geirhos et al. 2020; paper eq. 7) of two classifiers on the same samples.

    ``pred_a``/``pred_b`` are predicted classes shaped like ``labels`` (or logits with one more,
    last, axis: argmax; one logit: > 0). Positions labelled ``IGNORE_INDEX`` (-100) are skipped.

    κ = (c_obs − c_exp) / (1 − c_exp), with c_obs the fraction of samples both classify correctly
    or both incorrectly, and c_exp = a1·a2 + (1 − a1)(1 − a2) from the accuracies a1, a2. Computed
    from integer counts, so it is exact. When c_exp == 1 (both always right, or both always wrong)
    κ is 0/0; we return 1.0 when c_obs == 1 too (the models then agree on every sample, which
    c_exp == 1 implies) and 0.0 otherwise.
    """
    ra, rb = _correct(pred_a, pred_b, labels)
    n = int(ra.numel())
    k1, k2 = int(ra.sum()), int(rb.sum())
    same = int((ra == rb).sum())
    expected = k1 * k2 + (n - k1) * (n - k2)  # c_exp · n²
    denominator = n * n - expected  # (1 − c_exp) · n²
    if denominator == 0:
        return 1.0 if same == n else 0.0
    return (same * n - expected) / denominator


def error_consistency_matrix(preds: Mapping[str, Any], labels: Any) -> tuple[list[str], Tensor]:
    """κ between every two models of ``preds`` (name → predictions): ``(names, (n, n) float64 matrix)``."""
    names = list(preds)
    m = torch.ones(len(names), len(names), dtype=torch.float64)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            m[i, j] = m[j, i] = error_consistency(preds[names[i]], preds[names[j]], labels)
    return names, m


def _text_colors(cmap: Any, norm: Any, values: np.ndarray) -> np.ndarray:
    rgba = cmap(norm(np.nan_to_num(values)))
    lum = 0.299 * rgba[..., 0] + 0.587 * rgba[..., 1] + 0.114 * rgba[..., 2]
    return np.where(lum > 0.5, "black", "white")


def _annotate(ax: Any, values: np.ndarray, cmap: Any, norm: Any, fontsize: float, fmt: str = "{:.2f}") -> None:
    colors = _text_colors(cmap, norm, values)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "–" if not np.isfinite(v) else fmt.format(v)
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="0.3" if not np.isfinite(v) else colors[i, j])


def plot_matrix(names: Sequence[str], matrix: Any, path: str | Path, title: str = "", *, vmin: float = -1.0,
                vmax: float = 1.0, cmap: str = "RdBu_r", label: str = "error consistency κ") -> Path:
    """An annotated square heatmap (by default κ in [−1, 1], 0 = independent errors) saved as PNG."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    m = np.asarray(matrix.detach().cpu() if isinstance(matrix, Tensor) else matrix, dtype=float)
    n = len(names)
    if m.shape != (n, n):
        raise PairgraphError(f"matrix has shape {m.shape} but there are {n} names", "pass one row and column per name")
    side = max(4.5, 0.75 * n + 2.5)
    fig = _figure((side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    cm = colormaps[cmap].with_extremes(bad="0.85")
    norm = Normalize(vmin, vmax)
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, norm=norm)
    if n <= 40:
        _annotate(ax, m, cm, norm, fontsize=max(6.0, min(11.0, 60 / max(n, 1))))
    ax.set_xticks(range(n), list(names), rotation=35, ha="right", fontsize=9)
    ax.set_yticks(range(n), list(names), fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, Path(path))


# ---------------------------------------------------------------- similarity heatmap


def _checkpoint_file(checkpoint: str | Path) -> tuple[Path, Path | None]:
    """(weights file, run folder or None) of a run folder or a checkpoint file."""
    p = Path(checkpoint).expanduser()
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / "checkpoints" / name).exists():
                return p / "checkpoints" / name, p
        raise PairgraphError(f"{p} has no checkpoints/best.safetensors",
                             "pass a run folder that reached its first evaluation, or a .safetensors file")
    if not p.exists():
        raise PairgraphError(f"checkpoint {p} not found", "pass a run folder runs/<name>/<id> or a .safetensors/.pt file")
    return p, (p.parent.parent if p.parent.name == "checkpoints" else None)


def _first_batch(compiled: Any, batch_size: int, seed: int) -> Tensor:
    from pairgraph.tasks import get_task

    spec = compiled.spec
    task = get_task(spec.task)
    data = task.datasets(seed)  # a missing data set raises its own PairgraphError
    val = data.get("val")
    if val is None or len(val) == 0:
        raise PairgraphError(f"task {spec.task['kind']!r} has no validation examples", "enlarge the task (task.size / val_size)")
    n = min(batch_size, len(val))
    loader = torch.utils.data.DataLoader(val, batch_size=n, shuffle=False)
    return next(iter(loader))[0]


def similarity_heatmap(
    compiled: Any,
    path: str | Path,
    checkpoint: Path | str | None = None,
    batch_size: int = 256,
    measure: str | None = None,
    seed: int = 0,
) -> tuple[Tensor, list[str], list[str]]:
    """Similarity of every guide tap with every target tap on one validation batch, as a heatmap PNG.

    Builds the pair of ``compiled`` on the CPU (seeded init, as at step 0 of a run), loads the
    target's weights from ``checkpoint`` when given (a run folder → its checkpoints/best.safetensors,
    or a weights file; for a run folder the guide weights it used are read from env.json), takes
    the first ``batch_size`` items of the task's validation split (``task.datasets(seed)``), and
    runs guide and target once in eval mode. ``measure`` defaults to the spec's
    ``similarity.measure``; the padding mask and sequence mode are the spec's. Rows are guide taps,
    columns target taps; the pairs of the correspondence are outlined.

    Returns ``(matrix, guide tap names, target tap names)`` with ``matrix`` of shape (rows, columns).
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    from pairgraph.core.similarity import get_measure, similarity_matrix
    from pairgraph.core.weights import load_weights
    from pairgraph.tasks import get_task

    spec = compiled.spec
    measure = measure or spec.similarity.measure
    get_measure(measure)  # unknown names fail before any work
    if batch_size < 2:
        raise PairgraphError(f"batch_size {batch_size} is too small for a similarity", "use at least a few dozen examples")
    ckpt, run_dir = _checkpoint_file(checkpoint) if checkpoint is not None else (None, None)
    guide_weights = resolve_guide_weights(spec, run_dir=run_dir, baseline_too=True, purpose="the similarity heatmap")
    x = _first_batch(compiled, batch_size, seed)
    pair = compiled.build("cpu", guide_weights=guide_weights)
    if ckpt is not None:
        load_weights(pair.target, ckpt, "target")
    pair.eval()
    task = get_task(spec.task)
    mask = task.valid_mask(x) if spec.similarity.mask_padding else None
    with torch.no_grad():
        _, g_taps = pair.guide(x)
        _, t_taps = pair.target(x)
        g_names = [n for n in compiled.guide.names if n in g_taps] + [n for n in g_taps if n not in compiled.guide.names]
        t_names = [n for n in compiled.target.names if n in t_taps] + [n for n in t_taps if n not in compiled.target.names]
        g_taps = {n: g_taps[n].float() for n in g_names}
        t_taps = {n: t_taps[n].float() for n in t_names}
        matrix = similarity_matrix(g_taps, t_taps, measure, mask, spec.similarity.sequence).float().cpu()
    del g_taps, t_taps, pair

    # -- the figure
    m = matrix.numpy()
    ng, nt = m.shape
    g_types = {t.name: t.type for t in compiled.guide.taps}
    t_types = {t.name: t.type for t in compiled.target.taps}
    rows = [f"{n}  ({g_types[n]})" if n in g_types else n for n in g_names]
    cols = [f"{n}  ({t_types[n]})" if n in t_types else n for n in t_names]
    longest = max((len(s) for s in rows + cols), default=8)
    cell_w, cell_h = (0.46, 0.34) if max(ng, nt) > 12 else (0.8, 0.6)
    label_in = 0.075 * longest + 0.5
    fig = _figure((max(9.0, cell_w * nt + label_in + 2.2), max(4.5, cell_h * ng + label_in + 1.4)), layout="constrained")
    ax = fig.subplots()
    cm = colormaps["viridis"].with_extremes(bad="0.85")
    finite = m[np.isfinite(m)]
    norm = Normalize(min(0.0, float(finite.min())) if finite.size else 0.0, 1.0)
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, norm=norm, aspect="auto", interpolation="nearest")
    if max(ng, nt) <= 40:
        spread = float(finite.max() - finite.min()) if finite.size else 1.0
        _annotate(ax, m, cm, norm, fontsize=7 if max(ng, nt) > 12 else 9,
                  fmt="{:.3f}" if spread < 0.1 else "{:.2f}")  # near-equal values: one more digit
    index_g = {n: i for i, n in enumerate(g_names)}
    index_t = {n: j for j, n in enumerate(t_names)}
    mapped = [(index_g[g], index_t[t]) for g, t, _ in compiled.correspondence.pairs if g in index_g and t in index_t]
    for i, j in mapped:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#ff1f1f", lw=2.2, zorder=3))
    fs = 8 if max(ng, nt) > 12 else 9
    ax.set_xticks(range(nt), cols, rotation=60, ha="right", rotation_mode="anchor", fontsize=fs)
    ax.set_yticks(range(ng), rows, fontsize=fs)
    ax.set_xticks(np.arange(-0.5, nt, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, ng, 1), minor=True)
    ax.grid(which="minor", color="white", lw=0.4, alpha=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel(f"target taps: {spec.target.model} (input → output)", fontsize=10)
    ax.set_ylabel(f"guide taps: {spec.guide.model} (input → output)", fontsize=10)
    weights = "untrained" if guide_weights is None else Path(guide_weights).name
    if ckpt is None:
        state = "at init"
    else:
        state = f"run {run_dir.name}, {ckpt.name}" if run_dir is not None else ckpt.name
    ax.set_title(f"{spec.name}: {measure} similarity on {x.shape[0]} validation examples\n"
                 f"rows: guide {spec.guide.model} ({weights}) · columns: target {spec.target.model} ({state})\n"
                 f"red boxes: the {len(mapped)} mapped pairs ({compiled.correspondence.kind} mapping)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.6, pad=0.01, label=f"{measure} (1 = same representation)")
    _save(fig, Path(path))
    return matrix, g_names, t_names
