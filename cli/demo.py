"""``pairgraph demo``: the default pair trained alone and guided, side by side (registered in main)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from pairgraph.cli.options import console, err_console


def demo(
    spec: Annotated[Optional[Path], typer.Argument(help="A spec (default: the RNN guided by an untrained "  # noqa: UP045
                                                        "Transformer, specs/rnn_from_transformer.yaml).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Optimizer steps of each run "  # noqa: UP045
                                                 "(default: the demo's measured choice).")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "cpu",
    runs_dir: Annotated[Path, typer.Option(help="Where the two runs and the pictures go.")] = Path("runs/demo"),
    progress: Annotated[bool, typer.Option(help="Show a progress bar per run.")] = True,
) -> None:
    """Compile a pair, then train its target alone and guided (same data, seed and starting weights) and
    compare them: a table, runs/demo/curves.png and runs/demo/mapping.png."""
    from pairgraph.compiler.render import print_mapping
    from pairgraph.demo import compile_demo, train_demo

    console.print("[bold]1/3 compile[/bold]: trace both networks and map their layers")
    guided, alone = compile_demo(spec, steps, device, notify=lambda m: err_console.print(f"[yellow]{m}[/yellow]"))
    print_mapping(guided.guide, guided.target, guided.correspondence, console, 12)
    stages = iter(["2/3", "3/3"])
    result = train_demo(guided, alone, runs_dir, progress,
                        stage=lambda label: console.print(f"[bold]{next(stages)} train[/bold]: {label}"))
    table = Table(title=f"{result.pair.spec.name}: test split, best-validation checkpoint of each run")
    metrics = [k for k in next(iter(result.runs.values()))["test"] if k != "loss"]
    for col in ["run", *(m.replace("_", " ") for m in metrics), "time"]:
        table.add_column(col, justify="left" if col == "run" else "right")
    for label, s in result.runs.items():
        table.add_row(label, *(f"{100 * s['test'][m]:.1f} %" for m in metrics),
                      f"{s['demo_seconds']:.0f} s")
    console.print(table)
    console.print(f"curves: {result.curves}" + (f"   mapping: {result.mapping}" if result.mapping else ""))
    runs = "  ".join(s["run_dir"] for s in result.runs.values())
    console.print(f"next: pairgraph plot {runs} -o runs/demo/plot.png   (per-layer dissimilarity)", soft_wrap=True)
