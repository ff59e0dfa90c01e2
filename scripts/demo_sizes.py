"""Choose the demo's length from a measurement: `python scripts/demo_sizes.py` → results/demo/sizes.json.

Trains the demo's pair (specs/rnn_from_transformer.yaml: a 4-layer RNN alone, and guided by an untrained
4-layer Transformer; same data, seed and starting weights) for --steps optimizer steps each, evaluating
every 50, and records each run's validation accuracy and wall time. The demo's length is the largest
evaluation step at which the two runs, scaled to that length, fit in --budget seconds of training here
(180: a quarter of headroom under the 4 minutes the demo may take, for slower machines), provided the
guided run's validation token accuracy is at least --lead points above the alone run's there.
`--choose-only` applies the rule again to the measurement already in --output (no training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from pairgraph.analysis.runs import load_run
from pairgraph.demo import compile_demo, train_demo


def measure(steps: int) -> dict:
    """Both runs for ``steps`` steps (evaluated every 50): validation accuracy per evaluation, wall times."""
    with tempfile.TemporaryDirectory() as tmp:
        res = train_demo(*compile_demo(steps=steps, notify=None), runs_dir=tmp, progress=False)
        runs = {label: (load_run(s["run_dir"]), s) for label, s in res.runs.items()}
    walls = [s["wall_seconds_this_session"] for _, s in runs.values()]
    return {
        "command": f"python scripts/demo_sizes.py --steps {steps}", "steps": steps,
        "seconds_per_step_both_runs": sum(walls) / steps,
        "runs": {label: {"val_accuracy": {str(v["step"]): round(100 * v["accuracy"], 2) for v in data.val},
                         "test": s["test"], "wall_seconds": s["wall_seconds_this_session"]}
                 for label, (data, s) in runs.items()},
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lead", type=float, default=15.0, help="points of validation accuracy")
    ap.add_argument("--budget", type=float, default=180.0, help="seconds of training for both runs")
    ap.add_argument("--choose-only", action="store_true", help="re-apply the rule to the stored measurement")
    ap.add_argument("-o", "--output", type=Path, default=Path("results/demo/sizes.json"))
    args = ap.parse_args()
    if args.choose_only:
        record = json.loads(args.output.read_text())
        record["choice_command"] = f"python scripts/demo_sizes.py --choose-only --lead {args.lead} --budget {args.budget}"
    else:
        record = measure(args.steps)
    (a_acc, g_acc) = ({int(k): v for k, v in r["val_accuracy"].items()} for r in record["runs"].values())
    per_step = record["seconds_per_step_both_runs"]
    fits = [s for s in sorted(a_acc) if s * per_step <= args.budget and g_acc[s] - a_acc[s] >= args.lead]
    record.update(lead=args.lead, budget_seconds=args.budget, chosen_steps=fits[-1] if fits else None,
                  rule="the largest evaluation step within budget_seconds (both runs) with the guided run "
                       "lead points or more ahead in validation token accuracy")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("chosen_steps", "seconds_per_step_both_runs")}))
    for step in sorted(a_acc):
        print(f"step {step:5d}  alone {a_acc[step]:5.1f} %  guided {g_acc[step]:5.1f} %")


if __name__ == "__main__":
    main()
