"""Does a run that a study continued (a ``when_unconverged`` cell longer than its gate: the gate's finished run
copied and resumed) end where a fresh run ends? Continue the gate's run of (ARM, LR, SEED) into a scratch folder
and compare it with the study's own run of that point, which must have run from step 0.

    python scripts/check_continuation.py studies/trainability_cpu.yaml fcn_d96_2000 baseline 1e-4 0

Prints whether the metric rows and the final weights are equal; exit 1 if not. One torch thread, like the study.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from pairgraph.study.execute import train_job
from pairgraph.study.plan import plan_study
from pairgraph.study.schema import run_folder


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl without its clock fields."""
    return [{k: v for k, v in json.loads(ln).items() if "time" not in k and "wall" not in k}
            for ln in (run / "metrics.jsonl").read_text().splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study"), ap.add_argument("cell"), ap.add_argument("arm")
    ap.add_argument("lr", type=float), ap.add_argument("seed", type=int)
    a = ap.parse_args()
    torch.set_num_threads(1)
    plan = next(p for p in plan_study(a.study) if p.cell.name == a.cell and p.arm.name == a.arm)
    job = plan.job("sweep", a.lr, a.seed)
    fresh = Path(job.runs_dir) / plan.base.name / run_folder(a.lr, a.seed)
    if (fresh / "continued_from.json").exists() or not (fresh / "summary.json").exists():
        sys.exit(f"{fresh} is not a finished run that started from step 0: pick another point")
    with tempfile.TemporaryDirectory() as tmp:
        job = dataclasses.replace(job, runs_dir=f"{tmp}/runs", out=f"{tmp}/out")
        run, _, _ = train_job(job)
        origin = json.loads((run / "continued_from.json").read_text())
        ra, rb = _rows(run), _rows(fresh)
        wa, wb = load_file(run / "checkpoints/last.safetensors"), load_file(fresh / "checkpoints/last.safetensors")
        same_w = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    print(f"continued: {origin['run']} from step {origin['step']} to {origin['steps']}; fresh: {fresh}")
    print(f"metric rows: {len(ra)} continued, {len(rb)} fresh, equal: {ra == rb}")
    print(f"final weights ({len(wa)} tensors) equal: {same_w}")
    return 0 if ra == rb and same_w else 1


if __name__ == "__main__":
    sys.exit(main())
