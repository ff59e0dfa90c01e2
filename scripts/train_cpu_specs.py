"""Train every CPU-size spec in specs/ baseline and guided; record wall time and test metrics.

    python scripts/train_cpu_specs.py [SPEC ...]   →  results/cpu_specs/<name>.json, docs/figures/cpu_specs/<name>.png

The issue's bar: each trains to completion on this 2-core CPU in at most 10 minutes per mode.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

import pairgraph
from pairgraph.analysis import plot_runs

ROOT = Path(__file__).resolve().parents[1]


def main(specs: list[str]) -> None:
    out_dir = ROOT / "results" / "cpu_specs"
    fig_dir = ROOT / "docs" / "figures" / "cpu_specs"
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    for spec in specs or sorted(str(p) for p in (ROOT / "specs").glob("*.yaml")):
        record = {"spec": str(Path(spec).relative_to(ROOT) if Path(spec).is_absolute() else spec),
                  "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
                  "torch": torch.__version__, "runs": {}}
        runs = []
        for mode in ("baseline", "guidance"):
            t0 = time.time()
            cp = pairgraph.compile(spec, ROOT / "build" / "cpu_specs", [f"guidance.mode={mode}"], render=False,
                                   notify=None)
            summary = cp.train(runs_dir=ROOT / "runs" / "cpu_specs", run_id=f"{mode}-{int(t0)}", progress=False)
            wall = time.time() - t0
            summary["wall_seconds"] = round(wall, 1)
            record["runs"][mode] = summary
            runs.append(Path(summary["run_dir"]))
            print(f"{cp.spec.name} {mode}: {wall:.0f} s, test {summary['test']}", flush=True)
        name = record["runs"]["guidance"]["name"]
        plot_runs(runs, fig_dir / f"{name}.png")
        (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
