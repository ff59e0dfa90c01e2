"""``pairgraph init``: a commented starting spec (registered in main)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pairgraph.cli.options import console


def init(
    guide: Annotated[str, typer.Option("--guide", "-g", help="The guide: a zoo name (`pairgraph zoo`), "
                                       "torchvision:<name>, timm:<name>, hf:<model_type> or package.module:factory.")],
    target: Annotated[str, typer.Option("--target", "-t", help="The target, named as the guide.")],
    task: Annotated[str, typer.Option("--task", help="Task kind: copy_paste, parity, language_modeling, "
                                      "image_classification (or one you registered).")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="The file to write (a folder: "  # noqa: UP045
                                                   "<name>.yaml in it); default <guide>_to_<target>.yaml here.")] = None,
    name: Annotated[Optional[str], typer.Option(help="The pair's name (runs/<name>/); default "  # noqa: UP045
                                                "<guide>_to_<target>.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starting spec for a guide → target pair on a task, CPU-sized, then say what to run.

    Usage: pairgraph init --guide MODEL --target MODEL --task KIND [-o FILE] [--name NAME] [--force]

    Example: pairgraph init --guide resnet18 --target deep_fcn --task image_classification writes
    resnet18_to_deep_fcn.yaml; then pairgraph compile resnet18_to_deep_fcn.yaml. Every section is commented
    with what it does and its alternatives. An unknown task or model, a zoo model that does not read the
    task's input, an existing file (without --force) or a bad path is a one-line error (exit 2).
    """
    import shlex

    from pairgraph.config.starter import write_starter

    made = write_starter(guide, target, task, output, name, force)
    console.print(f"[green]wrote[/green] {made.path}: {made.spec.guide.model} → {made.spec.target.model} on "
                  f"{task}, CPU-sized", highlight=False, soft_wrap=True)
    console.print(f"next: pairgraph compile {shlex.quote(str(made.path))}", highlight=False, soft_wrap=True)
