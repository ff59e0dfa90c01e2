"""Time and error of `similarity.precision` (fp32 | tf32 | bf16) on the two benchmark pairs, one fixed batch.

Per pair and precision: the gram work (g) alone (median of --steps interleaved rounds), max |ΔCKA| over the
mapped pairs and the relative error of the target's gradient of the alignment loss, both against fp32; and
what this machine offers for bf16 matmuls (/proc/cpuinfo's avx512_bf16, amx_bf16, amx_tile; torch's CPU
capability and oneDNN; on CUDA the GPU). See pairgraph/bench/precision.py.

    python scripts/gram_precision.py [--device cpu] [--batch-size 256] [--steps 5] [-o results/bench/gram_precision-cpu.json]

scripts/bench_report.py renders the record into docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="timed rounds of (g) per precision (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--pair", action="append", default=None, help="only this benchmark pair (repeatable)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a spec override for every pair")
    ap.add_argument("-o", "--output", default=None, help="default: results/bench/gram_precision-<device>.json")
    args = ap.parse_args()

    from pairgraph.bench import BENCH_PAIRS, gram_precision
    from pairgraph.errors import PairgraphError

    out = Path(args.output or ROOT / "results" / "bench" / f"gram_precision-{args.device.replace(':', '')}.json")
    out = out.resolve()
    os.chdir(ROOT)  # specs by their paths in the repository, so the record names them the same everywhere
    try:
        unknown = sorted(set(args.pair or []) - set(BENCH_PAIRS))
        if unknown:
            raise PairgraphError(f"unknown benchmark pair {unknown[0]!r}", "use one of " + ", ".join(BENCH_PAIRS))
        pairs = {n: (s, o + args.sets) for n, (s, o) in BENCH_PAIRS.items() if args.pair is None or n in args.pair}
        rec = gram_precision(pairs, args.batch_size, args.steps, args.warmup, args.device)
    except PairgraphError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, p in rec["pairs"].items():
        for prec, v in p["precisions"].items():
            print(f"{name} {prec}: (g) {v['gram_seconds'] * 1e3:.1f} ms ({v['vs_fp32']:.2f}× fp32), "
                  f"max |ΔCKA| {v['max_abs_dcka']:.1e}, gradient rel. error {v['grad_rel_err']:.1e}")
    cpu = rec["cpu"]
    print("cpu: " + ", ".join(f"{k} {cpu[k]}" for k in ("avx512_bf16", "amx_bf16", "amx_tile", "torch_cpu_capability",
                                                        "mkldnn_available", "mkldnn_bf16_supported")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
