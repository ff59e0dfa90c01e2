"""``pairgraph demo`` and ``make demo``: what guidance does, in a few minutes on a laptop CPU.

The default spec (``specs/rnn_from_transformer.yaml``, shipped in the package as ``pairgraph.specs``):
a 4-layer RNN learning to copy sequences, guided by an untrained 4-layer Transformer. The demo compiles
it (the layer mapping), then trains the RNN alone and the RNN guided, on the same data, seed and
initial weights, and draws both runs side by side. Its sizes come from ``scripts/demo_sizes.py``
(results/demo/sizes.json).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from pairgraph.analysis.compare import plot_comparison
from pairgraph.compiler.pipeline import CompiledPair
from pairgraph.compiler.pipeline import compile as compile_pair
from pairgraph.config import PRETRAINED, TRAIN, UNTRAINED, load_spec
from pairgraph.core.objectives import objective_class
from pairgraph.errors import PairgraphError
from pairgraph.paths import atomic_write
from pairgraph.training import train

#: the demo's sizes on top of the spec (chosen by scripts/demo_sizes.py; see results/demo/sizes.json)
STEPS = 1000
OVERRIDES = ["train.eval_every=50"]


def default_spec() -> Path:
    """The spec the demo trains: the copy in the package (the checkout's specs/ in an editable install)."""
    return Path(str(files("pairgraph.specs") / "rnn_from_transformer.yaml"))


@dataclass
class DemoResult:
    pair: CompiledPair
    runs: dict[str, dict[str, Any]]  # label → the run's summary
    curves: Path
    mapping: Path | None


#: how a label names the guide's weights (any other value is a checkpoint file)
_WEIGHTS = {UNTRAINED: "an untrained", TRAIN: "a trained", PRETRAINED: "a pretrained"}


def _labels(pair: CompiledPair) -> tuple[str, str]:
    s = pair.spec
    guide = f"{_WEIGHTS.get(s.guide.weights, 'a checkpoint of')} {s.guide.model}"
    mode = "" if objective_class(s.guidance.mode).compares_similarity else f" ({s.guidance.mode})"
    return f"{s.target.model} alone", f"{s.target.model} guided by {guide}{mode}"


def compile_demo(spec: str | Path | None = None, steps: int | None = None, device: str = "cpu",
                 notify: Callable[[str], None] | None = print) -> tuple[CompiledPair, CompiledPair]:
    """The demo's pair compiled twice: guided (with its mapping drawn) and alone (guidance.mode baseline)."""
    overrides = [*OVERRIDES, f"train.steps={steps or STEPS}", f"train.device={device}"]
    path = Path(spec) if spec is not None else default_spec()
    if not objective_class(load_spec(path, overrides).guidance.mode).calls_guide:
        raise PairgraphError(f"{path} has guidance.mode baseline: the demo would train the target alone twice",
                             "pass a spec that guides its target (e.g. guidance.mode: guidance)")
    guided = compile_pair(path, Path("build") / "demo", overrides, render=True, notify=notify)
    alone = compile_pair(path, Path("build") / "demo-alone", [*overrides, "guidance.mode=baseline"], render=False,
                         notify=None)
    return guided, alone


def train_demo(guided: CompiledPair, alone: CompiledPair, runs_dir: str | Path = "runs/demo", progress: bool = True,
               stage: Callable[[str], None] | None = None) -> DemoResult:
    """Train the target alone, then guided (same data, seed and starting weights), and draw both runs.

    Runs land in ``runs_dir/<name>/<time>-alone`` and ``…-guided``; ``runs_dir/curves.png`` and
    ``runs_dir/mapping.png`` are the latest demo's pictures. ``stage`` hears each run's label as it starts."""
    runs_dir = Path(runs_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    labels = _labels(guided)
    summaries = {}
    for label, pair, tag in ((labels[0], alone, "alone"), (labels[1], guided, "guided")):
        if stage is not None:
            stage(label)
        t0 = time.time()
        summaries[label] = train(pair, runs_dir=runs_dir, run_id=f"{stamp}-{tag}", progress=progress)
        # end to end (data, guide cache, training, evaluations, test): summary.json's wall time is training only
        summaries[label]["demo_seconds"] = round(time.time() - t0, 1)
    metrics = [k for k in summaries[labels[0]]["test"] if k != "loss"]
    curves = plot_comparison([s["run_dir"] for s in summaries.values()], labels, metrics, runs_dir / "curves.png",
                             title=f"{guided.spec.name}: the same {guided.spec.target.model}, alone and guided")
    mapping = None
    if (guided.out_dir / "mapping.png").exists():
        mapping = Path(shutil.copyfile(guided.out_dir / "mapping.png", runs_dir / "mapping.png"))
    _record(runs_dir / "demo.json", guided, summaries)
    return DemoResult(guided, summaries, curves, mapping)


def _record(path: Path, pair: CompiledPair, summaries: dict[str, dict[str, Any]]) -> None:
    """``demo.json``: what the demo's table shows, with the machine it ran on."""
    record = {"spec": pair.spec.name, "steps": pair.spec.train.steps, "seed": pair.spec.train.seed,
              "runs": {label: {"run_dir": s["run_dir"], "test": s["test"], "best_step": s["best_step"],
                               "training_seconds": s["wall_seconds_this_session"], "seconds": s["demo_seconds"]}
                       for label, s in summaries.items()},
              "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "device": next(iter(summaries.values())).get("device")}}
    atomic_write(path, json.dumps(record, indent=2) + "\n")
