"""The commands that read runs and draw them: ``plot``, ``inspect``, ``similarity`` (registered in main)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pairgraph.cli.options import SetOpt, console, err_console
from pairgraph.errors import PairgraphError


def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (runs/<name>/<id>) to draw on one figure.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write.")] = Path("runs/plot.png"),
) -> None:
    """Train/validation loss and per-pair dissimilarity curves of several runs (paper Fig. 2 and 3)."""
    from pairgraph.analysis import plot_runs

    plot_runs(runs, output)
    console.print(f"wrote {output}")


def inspect(
    run: Annotated[Path, typer.Argument(help="A run folder (runs/<name>/<id>) of a guided run.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Folder to write into (default: the run folder).")] = None,  # noqa: UP045
    threshold: Annotated[float, typer.Option(help="A pair counts as matched once its 1 − similarity is at most this.")] = 0.1,
) -> None:
    """The mapping a run trained with, and each pair's 1 − similarity over training: mapping.html and mapping_training.png."""
    from pairgraph.analysis.mapping_training import inspect_run

    found = inspect_run(run, output, threshold)
    never = [f"{p['guide']}->{p['target']}" for p in found.curves["pairs"] if p["matched_at"] is None]
    console.print(f"wrote {', '.join(map(str, found.files))}: {len(found.curves['pairs'])} of {found.pairs} pairs logged, "
                  f"{len(found.curves['pairs']) - len(never)} matched (1 − similarity ≤ {threshold:g})"
                  + (f"; never: {', '.join(never[:6])}" + (" …" if len(never) > 6 else "") if never else ""),
                  soft_wrap=True, highlight=False)


def similarity(
    spec_or_run: Annotated[Path, typer.Argument(help="A spec YAML, or a run folder (runs/<name>/<id>).")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Target weights: a run folder or a .safetensors/.pt file (default for a run: its best checkpoint).")] = None,  # noqa: UP045
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="PNG to write (default build/<name>/similarity.png, or <run>/similarity.png).")] = None,  # noqa: UP045
    set_: SetOpt = None,
    measure: Annotated[Optional[str], typer.Option(help="Similarity measure (default: the spec's similarity.measure).")] = None,  # noqa: UP045
    batch_size: Annotated[int, typer.Option(help="Validation examples in the batch.")] = 256,
) -> None:
    """Heatmap of the similarity of every guide layer with every target layer on one validation batch."""
    import torch

    from pairgraph.analysis import similarity_heatmap
    from pairgraph.compiler.pipeline import compile as compile_pair

    src = spec_or_run
    run_dir: Path | None = None
    if src.is_dir():
        if not (src / "spec.yaml").exists():
            raise PairgraphError(f"{src} is neither a spec file nor a run folder (no spec.yaml)",
                                 "pass a spec YAML or runs/<name>/<id>")
        if (src / "checkpoints").is_dir() or (src / "metrics.jsonl").exists():
            run_dir = src
        spec_file = src / "spec.yaml"
    elif src.exists():
        spec_file = src
    else:
        raise PairgraphError(f"{src} not found", "pass a spec YAML or a run folder runs/<name>/<id>")
    notify = lambda m: err_console.print(f"[yellow]{m}[/yellow]")
    if run_dir is not None:
        cp = compile_pair(spec_file, run_dir / "build", set_, render=False, notify=notify)
        checkpoint = checkpoint if checkpoint is not None else run_dir
    else:
        cp = compile_pair(spec_file, None, set_, render=False, notify=notify)
    if output is None:
        output = (run_dir if run_dir is not None else cp.out_dir) / "similarity.png"
    matrix, g_names, t_names = similarity_heatmap(cp, output, checkpoint=checkpoint, batch_size=batch_size,
                                                  measure=measure)
    m = measure or cp.spec.similarity.measure
    console.print(f"wrote {output}: {m} of {len(g_names)} guide × {len(t_names)} target taps"
                  + (f" (target weights: {checkpoint})" if checkpoint is not None else " (at init)"), soft_wrap=True)
    finite = matrix.isfinite()
    if not finite.any():
        raise PairgraphError(f"every {m} value is NaN", "check the taps: constant activations have no similarity")
    i, j = divmod(int(torch.where(finite, matrix, float("inf")).argmin()), matrix.shape[1])
    k, n = divmod(int(torch.where(finite, matrix, float("-inf")).argmax()), matrix.shape[1])
    console.print(f"min {float(matrix[i, j]):.3f} ({g_names[i]} × {t_names[j]}), "
                  f"max {float(matrix[k, n]):.3f} ({g_names[k]} × {t_names[n]})"
                  + (f"; {int((~finite).sum())} NaN" if not finite.all() else ""), highlight=False, soft_wrap=True)
