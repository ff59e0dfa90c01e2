"""L5 — analyses and figures: training curves of runs (paper Fig. 2 and 3), error consistency κ
(§5.4, eq. 7) and guide × target similarity heatmaps.

* :func:`plot_runs` — task/validation loss, summed and per-pair dissimilarity of several runs;
  runs that differ only in their seed are drawn as mean ± standard error (:func:`aggregate`).
* :func:`error_consistency`, :func:`error_consistency_matrix`, :func:`plot_matrix` — Geirhos et
  al. (2020) κ between classifiers and its annotated heatmap.
* :func:`similarity_heatmap` — one validation batch through guide and target, the similarity of
  every guide tap with every target tap, the mapped pairs outlined.

Modules: ``runs`` (reading run folders; when two runs are one configuration), ``curves``,
``consistency``, ``heatmap``, and ``figures`` (the matplotlib helpers they share). Figures are
drawn with matplotlib's object API on the Agg canvas: no display is needed and the pyplot state
of a notebook is left alone.
"""

from pairgraph.analysis.consistency import error_consistency, error_consistency_matrix, plot_matrix
from pairgraph.analysis.curves import Aggregate, aggregate, plot_runs, smooth, validation_curve
from pairgraph.analysis.figures import band, new_figure, save_figure, smoothing_window
from pairgraph.analysis.heatmap import similarity_heatmap
from pairgraph.analysis.runs import (
    NOT_CONFIG,
    RUN_HINT,
    SEED,
    RunData,
    config_fields,
    load_run,
    metrics_file,
)
from pairgraph.config.diff import spec_diff

__all__ = [
    "NOT_CONFIG", "RUN_HINT", "SEED", "Aggregate", "RunData", "aggregate", "band", "config_fields",
    "error_consistency", "error_consistency_matrix", "load_run", "metrics_file", "new_figure", "plot_matrix",
    "plot_runs", "save_figure", "similarity_heatmap", "smooth", "smoothing_window", "spec_diff", "validation_curve",
]
