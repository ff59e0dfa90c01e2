"""Guide × target similarity heatmaps: one validation batch through both networks, the similarity of
every guide tap with every target tap, the mapped pairs outlined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pairgraph.analysis.figures import annotate_cells, new_figure, save_figure
from pairgraph.compiler.guide_weights import resolve_guide_weights
from pairgraph.compiler.pipeline import CompiledPair
from pairgraph.compiler.render import draw_similarity_matrix
from pairgraph.core.similarity import get_measure, similarity_matrix
from pairgraph.core.weights import load_weights
from pairgraph.errors import PairgraphError
from pairgraph.tasks import get_task


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


def _first_batch(compiled: CompiledPair, batch_size: int, seed: int) -> Tensor:
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
    compiled: CompiledPair,
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
    spec = compiled.spec
    measure = measure or spec.similarity.measure
    get_measure(measure)  # unknown names fail before any work
    if batch_size < 2:
        raise PairgraphError(f"batch_size {batch_size} is too small for a similarity", "use at least a few dozen examples")
    ckpt, run_dir = _checkpoint_file(checkpoint) if checkpoint is not None else (None, None)
    guide_weights = resolve_guide_weights(spec, run_dir=run_dir, baseline_too=True, purpose="the similarity heatmap")
    x = _first_batch(compiled, batch_size, seed)
    matrix, g_names, t_names = _measure_taps(compiled, x, guide_weights, ckpt, measure)
    weights = "untrained" if guide_weights is None else Path(guide_weights).name
    if ckpt is None:
        state = "at init"
    else:
        state = f"run {run_dir.name}, {ckpt.name}" if run_dir is not None else ckpt.name
    _draw(compiled, matrix.numpy(), g_names, t_names, path, measure,
          f"{spec.name}: {measure} similarity on {x.shape[0]} validation examples\n"
          f"rows: guide {spec.guide.model} ({weights}) · columns: target {spec.target.model} ({state})\n")
    return matrix, g_names, t_names


def _measure_taps(compiled: CompiledPair, x: Tensor, guide_weights: str | None, ckpt: Path | None,
                  measure: str) -> tuple[Tensor, list[str], list[str]]:
    """The pair on the CPU in eval mode, ``x`` through guide and target: (similarity matrix, guide, target taps)."""
    spec = compiled.spec
    pair = compiled.build("cpu", guide_weights=guide_weights)
    if ckpt is not None:
        load_weights(pair.target, ckpt, "target")
    pair.eval()
    mask = get_task(spec.task).valid_mask(x) if spec.similarity.mask_padding else None
    with torch.no_grad():
        _, g_taps = pair.guide(x)
        _, t_taps = pair.target(x)
        g_names = [n for n in compiled.guide.names if n in g_taps] + [n for n in g_taps if n not in compiled.guide.names]
        t_names = [n for n in compiled.target.names if n in t_taps] + [n for n in t_taps if n not in compiled.target.names]
        g_taps = {n: g_taps[n].float() for n in g_names}
        t_taps = {n: t_taps[n].float() for n in t_names}
        matrix = similarity_matrix(g_taps, t_taps, measure, mask, spec.similarity.sequence).float().cpu()
    return matrix, g_names, t_names


def _draw(compiled: CompiledPair, m: np.ndarray, g_names: list[str], t_names: list[str], path: str | Path,
          measure: str, title: str) -> None:
    """The heatmap: tap names with their types, values written in while they fit, mapped pairs boxed."""
    spec = compiled.spec
    ng, nt = m.shape
    g_types = {t.name: t.type for t in compiled.guide.taps}
    t_types = {t.name: t.type for t in compiled.target.taps}
    rows = [f"{n}  ({g_types[n]})" if n in g_types else n for n in g_names]
    cols = [f"{n}  ({t_types[n]})" if n in t_types else n for n in t_names]
    longest = max((len(s) for s in rows + cols), default=8)
    cell_w, cell_h = (0.46, 0.34) if max(ng, nt) > 12 else (0.8, 0.6)
    label_in = 0.075 * longest + 0.5
    fig = new_figure((max(9.0, cell_w * nt + label_in + 2.2), max(4.5, cell_h * ng + label_in + 1.4)),
                     layout="constrained")
    ax = fig.subplots()
    index_g = {n: i for i, n in enumerate(g_names)}
    index_t = {n: j for j, n in enumerate(t_names)}
    mapped = [(index_g[g], index_t[t]) for g, t, _ in compiled.correspondence.pairs if g in index_g and t in index_t]
    im = draw_similarity_matrix(ax, m, rows, cols, mapped, fontsize=8 if max(ng, nt) > 12 else 9, box_lw=2.2,
                                bad="0.85")
    if max(ng, nt) <= 40:
        finite = m[np.isfinite(m)]
        spread = float(finite.max() - finite.min()) if finite.size else 1.0
        annotate_cells(ax, m, im.cmap, im.norm, fontsize=7 if max(ng, nt) > 12 else 9,
                       fmt="{:.3f}" if spread < 0.1 else "{:.2f}")  # near-equal values: one more digit
    ax.set_xticks(np.arange(-0.5, nt, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, ng, 1), minor=True)
    ax.grid(which="minor", color="white", lw=0.4, alpha=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel(f"target taps: {spec.target.model} (input → output)", fontsize=10)
    ax.set_ylabel(f"guide taps: {spec.guide.model} (input → output)", fontsize=10)
    ax.set_title(title + f"red boxes: the {len(mapped)} mapped pairs ({compiled.correspondence.kind} mapping)",
                 fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.6, pad=0.01, label=f"{measure} (1 = same representation)")
    save_figure(fig, Path(path))
