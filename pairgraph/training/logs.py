"""Where a run's scalars go besides ``metrics.jsonl`` (``train.log``): TensorBoard and Weights & Biases.

``metrics.jsonl`` is the record and is always written; these are views of it. TensorBoard writes
``tb/`` in the run folder. W&B (imported only when asked for) names its run after the pairgraph run
id, takes the resolved spec as its config, keeps a stable W&B id in ``wandb.json`` so a resumed run
continues the same W&B run (``resume="allow"``), and writes its files under ``$WANDB_DIR`` or else the
run folder. After a resume W&B keeps its first record of the steps between the checkpoint and the kill.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from pairgraph.config import PairSpec
from pairgraph.errors import PairgraphError
from pairgraph.paths import atomic_write

WANDB = "wandb"


def require(kinds: list[str]) -> None:
    """Refuse, before the run starts, a logger that is not installed."""
    if WANDB in kinds:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise PairgraphError("train.log asks for wandb, which is not installed",
                                 "pip install 'pairgraph[wandb]', or drop wandb from train.log") from None


def wandb_id(run_dir: Path) -> str:
    """The W&B id of a run folder: made once (the run id and a random suffix, as W&B ids are global) and kept."""
    path = run_dir / "wandb.json"
    try:
        return str(json.loads(path.read_text())["id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rid = re.sub(r"[^A-Za-z0-9_.-]", "-", run_dir.name)[:100]
    made = f"{rid}-{secrets.token_hex(4)}"
    atomic_write(path, json.dumps({"id": made}) + "\n")
    return made


class Scalars:
    """The run's scalar writers: ``add(tag, value, step)`` goes to each of ``train.log``."""

    def __init__(self, tb: Any = None, wb: Any = None):
        self.tb, self.wb = tb, wb

    @classmethod
    def open(cls, kinds: list[str], run_dir: Path, spec: PairSpec, step: int, resuming: bool) -> Scalars:
        tb = wb = None
        if "tensorboard" in kinds:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(run_dir / "tb"), purge_step=step if resuming else None)
        if WANDB in kinds:
            import wandb

            wb = wandb.init(project=os.environ.get("WANDB_PROJECT") or "pairgraph", group=spec.name,
                            name=run_dir.name, id=wandb_id(run_dir), resume="allow", config=spec.resolved(),
                            dir=os.environ.get("WANDB_DIR") or str(run_dir))
        return cls(tb, wb)

    def add(self, scalars: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for tag, value in scalars.items():
                self.tb.add_scalar(tag, value, step)
        if self.wb is not None:
            self.wb.log(scalars, step=step)

    def add_step(self, rec: dict[str, Any]) -> None:
        """One step's row of metrics.jsonl as scalars: losses, lr, the balance scale, each pair's term."""
        scalars = {"train/loss": rec["loss"], "train/task_loss": rec["task_loss"]}
        if rec["guided"]:
            scalars["train/guidance_loss"] = rec["guidance_loss"]
        scalars["train/lr"] = rec["lr"]
        if rec.get("balance") is not None:
            scalars["train/balance"] = rec["balance"]
        self.add({**scalars, **{f"terms/{k}": v for k, v in rec["terms"].items()}}, rec["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def progress_bar(title: str, total: int, start: int, enabled: bool) -> tuple[Any, Any]:
    """A rich progress bar on a terminal (task loss, dissimilarity, the latest evaluation); (None, None) when
    not asked for or stderr is not a terminal."""
    if not (enabled and sys.stderr.isatty()):
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(),
                    TextColumn("task {task.fields[loss]:.4f}  dissim {task.fields[dis]:.3f}  {task.fields[val]}"),
                    TimeRemainingColumn())
    prog.start()
    return prog, prog.add_task("train", total=total, completed=start, loss=float("nan"), dis=0.0, val="")


def val_text(val: dict[str, float], metric: str) -> str:
    """The latest evaluation for the progress bar: ``val loss 1.234 accuracy 0.56``."""
    shown = f" {metric} {val[metric]:.3g}" if metric in val else ""
    return f"val loss {val['loss']:.4f}{shown}"
