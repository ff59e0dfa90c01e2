"""Two CPU costs of a guided step that its parts alone do not show (docs/performance.md, session 12).

1. Page faults: the minor page faults (``getrusage``) one step of each benchmark variant takes — (a) target,
   (b) guide, (g) grams alone, (c) guided — median over interleaved rounds after warm-up. Counts do not depend on
   timing, so they need no quiet machine. Run it with ``PYTHONPATH`` set to another checkout to count that code's.
2. ``--norm``: the time of max |f| over one tap of ``--shape`` (the overflow guard of CKA's grams), as torch's
   inf-norm and as ``abs().amax``, min and median of 50 calls (time it on a quiet machine).

    python scripts/cpu_step_costs.py specs/rnn_from_transformer.yaml -o faults.json
    python scripts/cpu_step_costs.py --norm --shape 1,256,2816 -o norm.json
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time
from pathlib import Path

import torch

import pairgraph
from pairgraph.bench.record import machine
from pairgraph.bench.variants import build_variants
from pairgraph.compiler.pipeline import compile as compile_pair

VARIANTS = ("target", "guide", "gram", "guided")


def faults(spec: str, overrides: list[str], batch_size: int, rounds: int, warmup: int) -> dict:
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    fns, pair = build_variants(compiled, batch_size, torch.device("cpu"), only=VARIANTS)
    counts: dict[str, list[int]] = {v: [] for v in VARIANTS}
    for r in range(warmup + rounds):
        for v in VARIANTS:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            fns[v]()
            if r >= warmup:
                counts[v].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"kind": "page_faults", "spec": spec, "overrides": overrides, "batch_size": batch_size,
            "pairs": len(pair.pairs), "rounds": rounds, "warmup": warmup, "pairgraph": pairgraph.__file__,
            "faults_per_step": {v: statistics.median(c) for v, c in counts.items()}, "faults": counts}


def norm_times(shape: tuple[int, ...], calls: int = 50) -> dict:
    f = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ways = {"linalg.vector_norm(inf)": lambda: torch.linalg.vector_norm(f, math.inf, dim=(1, 2), keepdim=True),
            "abs().amax": lambda: f.abs().amax(dim=(1, 2), keepdim=True)}
    out = {}
    for name, fn in ways.items():
        for _ in range(3):
            fn()
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = {"min_ms": 1e3 * min(ts), "median_ms": 1e3 * statistics.median(ts)}
    return {"kind": "max_abs_times", "shape": list(shape), "calls": calls, "times": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--norm", action="store_true", help="time max |f| instead of counting page faults")
    ap.add_argument("--shape", default="1,256,2816")
    ap.add_argument("-o", "--output")
    a = ap.parse_args()
    if a.norm:
        record = norm_times(tuple(int(s) for s in a.shape.split(",")))
    elif a.spec:
        record = faults(a.spec, a.overrides, a.batch_size, a.rounds, a.warmup)
    else:
        ap.error("give a spec, or --norm")
    record["machine"] = machine(torch.device("cpu"))
    text = json.dumps(record, indent=1)
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
