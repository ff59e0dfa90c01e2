"""Render the benchmark records (``pairgraph bench -o …json``) as the tables of docs/performance.md.

    python scripts/bench_report.py results/bench docs/performance.md

Replaces what lies between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` in the doc (the prose
around it is written by hand); every number in the tables comes from the JSON records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TARGETS = {"overhead": 1.10, "speedup": 2.0, "memory_ratio": 1.25}


def _ms(s: float) -> str:
    return f"{s * 1e3:,.1f}"


def _verdict(name: str, value: float | None) -> str:
    if value is None:
        return "— (naive step not timed)"
    bar = TARGETS[name]
    ok = value >= bar if name == "speedup" else value <= bar
    return f"{value:.2f} ({'meets' if ok else 'misses'} {'≥' if name == 'speedup' else '≤'} {bar:.2f})"


def _section(rec: dict, source: str) -> list[str]:
    m = rec["machine"]
    where = m.get("gpu") or f"{m['processor']}, {m['threads']} torch threads of {m['cpu_count']} cores"
    over = " ".join(f"`--set {o}`" for o in rec["overrides"])
    sec = rec["seconds"]
    compiled = rec.get("compiled", False)
    md = [f"### `{rec['spec']}`" + (f" {over}" if over else "") + (" — `torch.compile`" if compiled else "")
          + (" — channels_last" if rec.get("channels_last") else ""), "",
          (f"{rec['device']} ({where}), torch {m['torch']}, batch {rec['batch_size']}, {rec['pairs']} mapped pairs, "
           f"median of {rec['steps']} interleaved steps after {rec['warmup']} warm-up"
           + (f"; every variant's networks compiled (first round, compiling included: "
              f"{rec['first_round_seconds']:.0f} s)" if compiled else "") + f"; record `{source}`."), "",
          ("| (a) target step | (b) guide forward | (c) guided step | (d) naive step | overhead c/(a+b) "
           "| speedup d/c | peak memory c/(a+b) |"),
          "|---:|---:|---:|---:|---:|---:|---:|",
          f"| {_ms(sec['target'])} ms | {_ms(sec['guide'])} ms | {_ms(sec['guided'])} ms | "
          + (f"{_ms(sec['naive'])} ms " if "naive" in sec else "— ")
          + f"| {_verdict('overhead', rec['overhead'])} | {_verdict('speedup', rec['speedup'])} | "
          + (_verdict("memory_ratio", rec["memory_ratio"]) if "memory_ratio" in rec else "not measured") + " |", ""]
    if "peak_bytes" in rec:
        pb = rec["peak_bytes"]
        md += [(f"Peak memory above the built pair: target step {pb['target'] / 2**20:,.0f} MiB, guide forward "
                f"{pb['guide'] / 2**20:,.0f} MiB, guided step {pb['guided'] / 2**20:,.0f} MiB"
                + (f", cached guided step {pb['cached'] / 2**20:,.0f} MiB" if "cached" in pb else "") + "."), ""]
    if "cache" in rec:
        c = rec["cache"]
        kinds = sorted(c["kinds"].values())
        even = f"{c['break_even_steps']:,.0f} steps" if c["break_even_steps"] else "never"
        md += [("(e) the guided step with the guide cached (`guidance.cache_guide`) over a pool of "
                f"{c['pool']:,} examples ({kinds.count('gram')} taps kept as grams, {kinds.count('feat')} as rows; "
                f"{c['bytes'] / 2**20:,.0f} MiB, built in {c['build_seconds']:.1f} s, which the faster step repays "
                f"after {even}):"), "",
               "| (e) cached step | overhead e/(a+b) | speedup d/e | peak memory e/(a+b), cache excluded |",
               "|---:|---:|---:|---:|",
               (f"| {_ms(sec['cached'])} ms | {_verdict('overhead', c['overhead'])} | {_verdict('speedup', c['speedup'])} "
               f"| {_verdict('memory_ratio', c['memory_ratio']) if 'memory_ratio' in c else 'not measured'} |"), ""]
    cached = "cached" in rec["seconds"]
    extra_h, extra_a = (" (e) cached | overhead cached |", "---:|---:|") if cached else ("", "")

    def extra(r: dict) -> str:
        return f" {_ms(r['cached'])} ms | {r['overhead_cached']:.3f} |" if cached else ""

    if rec["by_batch_size"]:
        md += [f"| batch | (a) target | (b) guide | (c) guided | overhead |{extra_h}", f"|---:|---:|---:|---:|---:|{extra_a}"]
        md += [f"| {r['batch_size']} | {_ms(r['target'])} ms | {_ms(r['guide'])} ms | {_ms(r['guided'])} ms "
               f"| {r['overhead']:.3f} |{extra(r)}" for r in rec["by_batch_size"]] + [""]
    if rec["by_pairs"]:
        md += [f"| mapped pairs (batch {rec['batch_size']}) | (a) target | (b) guide | (c) guided | overhead |{extra_h}",
               f"|---:|---:|---:|---:|---:|{extra_a}"]
        md += [f"| {r['pairs']} | {_ms(r['target'])} ms | {_ms(r['guide'])} ms | {_ms(r['guided'])} ms "
               f"| {r['overhead']:.3f} |{extra(r)}" for r in rec["by_pairs"]] + [""]
    return md


def main(folder: str, doc: str) -> None:
    records = sorted(Path(folder).glob("*.json"))
    if not records:
        raise SystemExit(f"no benchmark records in {folder}: run `make bench` first")
    md = [BEGIN, ""]
    for p in records:
        md += _section(json.loads(p.read_text()), str(p))
    md.append(END)
    path = Path(doc)
    text = path.read_text() if path.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} … {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + "\n".join(md) + tail)
    print(f"wrote {len(records)} benchmark table(s) into {doc}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
