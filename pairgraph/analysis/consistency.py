"""Error consistency κ (Geirhos et al. 2020; paper §5.4, eq. 7) between classifiers, and its
annotated heatmap (paper Fig. 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pairgraph.analysis.figures import annotate_cells, new_figure, save_figure
from pairgraph.errors import PairgraphError
from pairgraph.tasks import IGNORE_INDEX, predicted_class


def _as_tensor(x: Any) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().cpu()


def _predictions(pred: Any, labels: Tensor, what: str) -> Tensor:
    p = _as_tensor(pred)
    if p.is_floating_point() and p.dim() == labels.dim() + 1:  # logits: predicted class
        p = predicted_class(p)
    if tuple(p.shape) != tuple(labels.shape):
        raise PairgraphError(f"{what} has shape {tuple(p.shape)} but the labels have {tuple(labels.shape)}",
                             "pass one predicted class (or one row of logits) per label")
    return p.long()


def _correct(pred_a: Any, pred_b: Any, labels: Any) -> tuple[Tensor, Tensor]:
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
    fig = new_figure((side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    cm = colormaps[cmap].with_extremes(bad="0.85")
    norm = Normalize(vmin, vmax)
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, norm=norm)
    if n <= 40:
        annotate_cells(ax, m, cm, norm, fontsize=max(6.0, min(11.0, 60 / max(n, 1))))
    ax.set_xticks(range(n), list(names), rotation=35, ha="right", fontsize=9)
    ax.set_yticks(range(n), list(names), fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    if title:
        ax.set_title(title, fontsize=11)
    return save_figure(fig, Path(path))
