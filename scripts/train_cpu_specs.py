"""Train every CPU-size spec in specs/ baseline and guided; record wall time and test metrics.

    python scripts/train_cpu_specs.py [SPEC ...]   →  results/cpu_specs/<name>.json, docs/figures/cpu_specs/<name>.png
    python scripts/train_cpu_specs.py --report     →  docs/cpu_specs.md from the committed records only

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
    report()


def _metric(summary: dict) -> str:
    m = summary["primary_metric"]
    v = summary["test"][m]
    return f"{m} {v:.2f}" if m == "perplexity" else f"{m} {100 * v:.1f}%"


def report() -> None:
    """docs/cpu_specs.md: one row per spec and mode, every number from results/cpu_specs/*.json."""
    rows = ["| spec | mode | steps | wall time | test (at best validation) | best val loss | figure |",
            "|---|---|---:|---:|---|---:|---|"]
    machines = set()
    for f in sorted((ROOT / "results" / "cpu_specs").glob("*.json")):
        rec = json.loads(f.read_text())
        machines.add(f"{rec['machine']}, torch {rec['torch']}")
        for mode, s in rec["runs"].items():
            rows.append(f"| `{rec['spec']}` | {mode} | {s['steps']} | {s['wall_seconds'] / 60:.1f} min | {_metric(s)} "
                        f"| {s['best_val_loss']:.3f} | [png](figures/cpu_specs/{s['name']}.png) |")
    text = ["# The CPU specs, trained here", "",
            "Every spec in `specs/` trained to completion, baseline (no guide) and guided by its untrained guide,",
            "seed 0, one run each (no spread: a single seed; the study in docs/results.md has seeds and errors).",
            "Wall time includes data loading, evaluation and checkpoints. Produced by",
            "`python scripts/train_cpu_specs.py` (records in `results/cpu_specs/`); this page by `--report`.",
            f"Machine: {'; '.join(sorted(machines))}.", "", *rows, "",
            "Reading: these are single runs at CPU sizes, not the study's protocol (no lr sweep). Guidance wins",
            "clearly on copy-paste (with the uniform and with the explicit mapping), slightly on language modeling",
            "with the zoo Transformer guide and not with an untrained 2-layer GPT-2 (perplexity 6.32 vs 6.28), and",
            "loses or ties on the image specs (the timm ViT guide included) and parity (the BERT target stays at",
            "chance either way) at these step counts; the study (docs/results.md) tests each direction with swept",
            "lrs and 3 seeds. The four specs added in session 8 (bert_from_rnn, fcn_deep_from_timm_vit,",
            "explicit_rnn_from_transformer, rnn_lm_from_hf_gpt2) ran while tests ran beside them: their wall",
            "times are upper bounds (bert_from_rnn's most of all).", ""]
    (ROOT / "docs" / "cpu_specs.md").write_text("\n".join(text))
    print("wrote docs/cpu_specs.md")


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:
        report()
    else:
        main(sys.argv[1:])
