"""A side-by-side figure of a few runs (``pairgraph demo``): task loss, the validation metrics, and the
guided runs' summed dissimilarity, one colour per run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pairgraph.analysis.curves import smooth
from pairgraph.analysis.figures import new_figure, save_figure, smoothing_window
from pairgraph.analysis.runs import load_run

COLORS = ("#777777", "#d62728", "#1f77b4", "#2ca02c")


def plot_comparison(runs: Sequence[str | Path], labels: Sequence[str], metrics: Sequence[str],
                    output: str | Path, title: str = "") -> Path:
    """Three panels: task loss (train, moving average; validation ○), the validation ``metrics`` (the first
    solid, the others dashed, in %), and Σ(1 − M) of the runs that were guided."""
    data = [load_run(r) for r in runs]
    w = smoothing_window(max((len(r.steps) for r in data), default=0))
    fig = new_figure((16, 4.8), layout="constrained")
    ax_loss, ax_metric, ax_dis = fig.subplots(1, 3)
    for r, label, color in zip(data, labels, COLORS, strict=False):
        steps, loss = r.series("task_loss")
        if steps.size:
            ax_loss.plot(steps, smooth(loss, w), color=color, lw=1.8, label=f"{label}: train")
        val_steps = np.array([v["step"] for v in r.val])
        if val_steps.size:
            ax_loss.plot(val_steps, [v["loss"] for v in r.val], color=color, marker="o", mfc="white", ls=":",
                         label=f"{label}: validation")
            for i, m in enumerate(metrics):
                ys = [100 * float(v[m]) for v in r.val if m in v]
                if ys:
                    ax_metric.plot(val_steps[:len(ys)], ys, color=color, marker="o", ls="-" if i == 0 else "--",
                                   label=f"{label}: {m.replace('_', ' ')}")
        d_steps, dis = r.total_dissimilarity()
        if d_steps.size:
            ax_dis.plot(d_steps, smooth(dis, w), color=color, lw=1.8, label=label)
    ax_loss.set(title=f"Task loss (train: moving average over {w} steps)", xlabel="step", ylabel="task loss")
    ax_metric.set(title="Validation metrics", xlabel="step", ylabel="%")
    n_pairs = max((len(r.guidance_terms()) for r in data), default=0)
    ax_dis.set(title=f"Guided run: Σ(1 − CKA) over its {n_pairs} mapped layer pairs", xlabel="step",
               ylabel="Σ (1 − CKA)")
    for ax in (ax_loss, ax_metric, ax_dis):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, Path(output))
