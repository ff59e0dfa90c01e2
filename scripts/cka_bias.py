"""Measure how biased linear CKA inflates the similarity of *independent* wide activations.

For independent Gaussian X, Y ∈ ℝ^{b×d} the population CKA is 0, but the biased-HSIC estimate
(paper eq. 2–6) tends to 1 as d/b grows; the unbiased-HSIC (debiased) CKA stays near 0, with a
seed-to-seed spread of about 1/sqrt(b(b−1)/2).  RSA is printed alongside for reference.
Prints a table and writes results/similarity/cka_bias.json.

    python scripts/cka_bias.py            # seeds 0..19 over the (b, d) grid below
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from pairgraph.core.similarity import similarity

GRID = [(64, 65536), (64, 4096), (64, 256), (64, 64), (16, 65536), (256, 65536)]
MEASURES = ["cka", "debiased_cka", "rsa"]
DEFAULT_SEEDS = 20


def _mean_std(stats: dict, m: str) -> str:
    return f"{stats[m]['mean']:+.4f}±{stats[m]['std']:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"seeds 0..N-1 (default {DEFAULT_SEEDS})")
    ap.add_argument("--out", default="results/similarity/cka_bias.json")
    args = ap.parse_args()

    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {platform.system()}; torch {torch.__version__}"
    print(f"independent X, Y with i.i.d. N(0, 1) entries, b×d, float32; seeds 0..{args.seeds - 1}; {machine}")
    print(
        f"{'b':>5} {'d':>7}  {'cka seed0':>9} {'cka mean±std':>15}  "
        f"{'dcka seed0':>10} {'dcka mean±std':>15}  {'rsa mean±std':>15}  {'1/sqrt(b(b-1)/2)':>16}"
    )
    rows = []
    t0 = time.perf_counter()
    for b, d in GRID:
        vals: dict[str, list[float]] = {m: [] for m in MEASURES}
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(b, d, generator=g)
            y = torch.randn(b, d, generator=g)
            for m in MEASURES:
                vals[m].append(similarity(x, y, m).item())
        stats = {
            m: {"values": v, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for m, v in vals.items()
        }
        spread = (b * (b - 1) / 2) ** -0.5
        rows.append({"b": b, "d": d, "null_spread": spread, **stats})
        print(
            f"{b:>5} {d:>7}  {vals['cka'][0]:>9.4f} {_mean_std(stats, 'cka'):>15}  "
            f"{vals['debiased_cka'][0]:>+10.4f} {_mean_std(stats, 'debiased_cka'):>15}  "
            f"{_mean_std(stats, 'rsa'):>15}  {spread:>16.4f}"
        )
    elapsed = time.perf_counter() - t0
    print(f"({elapsed:.1f} s)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python scripts/cka_bias.py" + ("" if args.seeds == DEFAULT_SEEDS else f" --seeds {args.seeds}"),
        "data": "X, Y with i.i.d. N(0,1) float32 entries from torch.Generator().manual_seed(seed): x drawn, then y",
        "seeds": list(range(args.seeds)),
        "machine": machine,
        "elapsed_s": round(elapsed, 2),
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
