"""What every figure of the analyses (and of a study's report) shares: a matplotlib ``Figure`` on the
Agg canvas, saved with a one-line error; a mean ± standard-error band; the moving-average window;
a grey note in an empty panel; numbers written into the cells of a heatmap.

Figures use matplotlib's object API: no display is needed and the pyplot state of a notebook is
left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pairgraph.errors import PairgraphError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pairgraph.analysis.curves import Aggregate

#: line styles that tell several guided runs apart in one panel
LINESTYLES = ["-", "--", ":", "-."]


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> Figure:
    """A ``Figure`` with its own Agg canvas (``kwargs`` go to ``Figure``, e.g. ``layout="constrained"``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


#: the file types a figure is written as
FIGURE_FORMATS = (".png", ".svg", ".pdf")


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (folders made); an unwritable path is a one-line :class:`PairgraphError`."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise PairgraphError(f"cannot write a figure to {path}: {path.suffix or 'no'} file type",
                             f"name a {', '.join(FIGURE_FORMATS)} file (-o)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        raise PairgraphError(f"cannot write {path}: {e.strerror or e}", "pick another output path (-o)") from None
    return path


def smoothing_window(n_steps: int) -> int:
    """Moving-average window for a curve of ``n_steps`` points: a twentieth of it, 1 to 200."""
    return int(min(max(round(n_steps / 20), 1), 200))


def band(ax: Axes, agg: Aggregate, color: Any, linestyle: str = "-", lw: float = 1.8, alpha: float = 0.2) -> None:
    """The mean of ``agg`` as a line, ± its standard error shaded where there is one."""
    ax.plot(agg.steps, agg.mean, color=color, linestyle=linestyle, lw=lw)
    if np.isfinite(agg.sem).any():
        sem = np.nan_to_num(agg.sem)
        ax.fill_between(agg.steps, agg.mean - sem, agg.mean + sem, color=color, alpha=alpha, lw=0)


def note(ax: Axes, text: str) -> None:
    """A grey note in the middle of a panel that has nothing to draw."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.4", wrap=True)


def _text_colors(cmap: Any, norm: Any, values: np.ndarray) -> np.ndarray:
    rgba = cmap(norm(np.nan_to_num(values)))
    lum = 0.299 * rgba[..., 0] + 0.587 * rgba[..., 1] + 0.114 * rgba[..., 2]
    return np.where(lum > 0.5, "black", "white")


def annotate_cells(ax: Axes, values: np.ndarray, cmap: Any, norm: Any, fontsize: float, fmt: str = "{:.2f}") -> None:
    """Write each value of a heatmap into its cell, black on light colours and white on dark (– for NaN)."""
    colors = _text_colors(cmap, norm, values)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "–" if not np.isfinite(v) else fmt.format(v)
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="0.3" if not np.isfinite(v) else colors[i, j])
