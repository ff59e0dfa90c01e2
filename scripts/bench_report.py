"""Render the benchmark records (``pairgraph bench -o …json`` and the ``kind: gram_precision`` /
``kind: throughput`` / ``kind: profile`` / ``kind: compile_modes`` records of scripts/gram_precision.py and
scripts/gpu_check.py) as the tables of docs/performance.md.

    python scripts/bench_report.py results/bench docs/performance.md

Replaces what lies between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` in the doc (the prose
around it is written by hand); every number in the tables comes from the JSON records, and a value an
older record does not have is shown as "—".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TARGETS = {"overhead": 1.10, "speedup": 2.0, "memory_ratio": 1.25}
DASH = "—"


def _ms(s: float | None) -> str:
    return DASH if s is None else f"{s * 1e3:,.1f} ms"


def _num(v: float | None, digits: int = 2) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def _verdict(name: str, value: float | None) -> str:
    if value is None:
        return "— (naive step not timed)"
    bar = TARGETS[name]
    ok = value >= bar if name == "speedup" else value <= bar
    return f"{value:.2f} ({'meets' if ok else 'misses'} {'≥' if name == 'speedup' else '≤'} {bar:.2f})"


def _spec_title(rec: dict, what: str = "") -> str:
    """``### <what>`<spec>` `--set …`…``: a section's heading names the spec and its overrides."""
    over = " ".join(f"`--set {o}`" for o in rec["overrides"])
    return f"### {what}`{rec['spec']}`" + (f" {over}" if over else "")


def _heading(rec: dict) -> str:
    precision = rec.get("precision", "fp32")
    return (_spec_title(rec) + (" — `torch.compile`" if rec.get("compiled") else "")
            + (" — channels_last" if rec.get("channels_last") else "")
            + (f" — networks {precision} (autocast)" if precision != "fp32" else ""))


def _where(rec: dict) -> str:
    m = rec["machine"]
    return m.get("gpu") or f"{m['processor']}, {m['threads']} torch threads of {m['cpu_count']} cores"


def _section(rec: dict, source: str) -> list[str]:
    m = rec["machine"]
    sec = rec["seconds"]
    compiled = rec.get("compiled", False)
    md = [_heading(rec), "",
          (f"{rec['device']} ({_where(rec)}), torch {m['torch']}, batch {rec['batch_size']}, {rec['pairs']} mapped pairs, "
           f"median of {rec['steps']} interleaved steps after {rec['warmup']} warm-up"
           + (f"; similarity products in {rec['similarity_precision']}" if "similarity_precision" in rec else "")
           + (f"; every variant's networks compiled{' and the alignment' if rec.get('compiled_alignment') else ''}"
              f" (first round, compiling included: "
              f"{rec['first_round_seconds']:.0f} s)" if compiled else "") + f"; record `{source}`."), "",
          ("| (a) target step | (b) guide forward | (g) grams alone | (c) guided step | (d) naive step "
           "| overhead c/(a+b) | c/(a+b+g) | speedup d/c | peak memory c/(a+b) |"),
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
          f"| {_ms(sec['target'])} | {_ms(sec['guide'])} | {_ms(sec.get('gram'))} | {_ms(sec['guided'])} | "
          f"{_ms(sec.get('naive'))} | {_verdict('overhead', rec['overhead'])} | {_num(rec.get('overhead_gram'))} | "
          f"{_verdict('speedup', rec['speedup'])} | "
          + (_verdict("memory_ratio", rec["memory_ratio"]) if "memory_ratio" in rec else "not measured") + " |", ""]
    if "peak_bytes" in rec:
        pb = rec["peak_bytes"]
        how = f" ({rec['memory_method']})" if "memory_method" in rec else ""
        md += [(f"Peak memory above the built pair{how}: target step {pb['target'] / 2**20:,.0f} MiB, guide forward "
                f"{pb['guide'] / 2**20:,.0f} MiB, guided step {pb['guided'] / 2**20:,.0f} MiB"
                + (f", cached guided step {pb['cached'] / 2**20:,.0f} MiB" if "cached" in pb else "") + "."), ""]
    if rec.get("ops"):
        md += _ops_table(rec["ops"]) + [""]
    if "cache" in rec:
        md += _cache(rec["cache"], sec)
    return md + _tables(rec)


OPS_NAMES = {"target": "(a) target step", "guide": "(b) guide forward", "gram": "(g) grams alone",
             "guided": "(c) guided step", "naive": "(d) naive step", "cached": "(e) cached step",
             "alignment": "alignment: c − a − b", "alignment_cached": "alignment, cached: e − a"}


def _ops_table(ops: dict) -> list[str]:
    """ATen ops and host syncs per step of each variant (``pairgraph.bench.ops``)."""
    return ["| ATen ops per step (host syncs) | " + " | ".join(OPS_NAMES.get(v, v) for v in ops) + " |",
            "|---|" + "---:|" * len(ops),
            "| | " + " | ".join(f"{o['ops']:,} ({o['syncs']})" for o in ops.values()) + " |"]


def _ops_section(rec: dict, source: str) -> list[str]:
    """A ``kind: ops`` record (``pairgraph bench --ops-only``): ops and syncs per step, no timing."""
    md = [_spec_title(rec, "ATen ops per step: "), "",
          (f"{rec['device']}, torch {rec['machine']['torch']}, batch {rec['batch_size']}, {rec['pairs']} mapped pairs, "
           f"networks {rec['precision']}, similarity {rec['similarity_precision']}"
           + (f", guide cached over {rec['cache_pool']:,} examples" if rec.get("cache_pool") else "")
           + f"; counted with a dispatch mode, one step after one uncounted step; record `{source}`."), ""]
    md += _ops_table(rec["ops"]) + [""]
    if rec["by_pairs"]:
        md += ["| mapped pairs | (c) guided step | alignment: c − a − b | per pair | host syncs in the alignment |",
               "|---:|---:|---:|---:|---:|"]
        md += [f"| {r['pairs']} | {r['guided']['ops']:,} | {r['alignment']['ops']:,} "
               f"| {r['alignment']['ops'] / r['pairs']:.1f} | {r['alignment']['syncs']} |" for r in rec["by_pairs"]]
        md.append("")
    return md


def _cache(c: dict, sec: dict) -> list[str]:
    kinds = sorted(c["kinds"].values())
    even = f"{c['break_even_steps']:,.0f} steps" if c["break_even_steps"] else "never"
    return [("(e) the guided step with the guide cached (`guidance.cache_guide`) over a pool of "
             f"{c['pool']:,} examples ({kinds.count('gram')} taps kept as grams, {kinds.count('feat')} as rows; "
             f"{c['bytes'] / 2**20:,.0f} MiB, built in {c['build_seconds']:.1f} s, which the faster step repays "
             f"after {even}):"), "",
            "| (e) cached step | overhead e/(a+b) | e/a | speedup d/e | peak memory e/(a+b), cache excluded |",
            "|---:|---:|---:|---:|---:|",
            (f"| {_ms(sec['cached'])} | {_verdict('overhead', c['overhead'])} | {_num(c.get('vs_target'))} "
             f"| {_verdict('speedup', c['speedup'])} "
             f"| {_verdict('memory_ratio', c['memory_ratio']) if 'memory_ratio' in c else 'not measured'} |"), ""]


def _tables(rec: dict) -> list[str]:
    """The overhead by batch size and by number of mapped pairs."""
    cached = "cached" in rec["seconds"]
    extra_h, extra_a = (" (e) cached | e/(a+b) | e/a |", "---:|---:|---:|") if cached else ("", "")
    head = f"| (a) target | (b) guide | (g) grams | (c) guided | c/(a+b) | c/(a+b+g) |{extra_h}"
    rule = f"|---:|---:|---:|---:|---:|---:|---:|{extra_a}"

    def cells(r: dict) -> str:
        return (f"| {_ms(r['target'])} | {_ms(r['guide'])} | {_ms(r.get('gram'))} | {_ms(r['guided'])} "
                f"| {r['overhead']:.3f} | {_num(r.get('overhead_gram'), 3)} |"
                + (f" {_ms(r['cached'])} | {r['overhead_cached']:.3f} | {_num(r.get('cached_vs_target'), 3)} |"
                   if cached else ""))

    md: list[str] = []
    if rec["by_batch_size"]:
        md += ["| batch " + head, rule] + [f"| {r['batch_size']} " + cells(r) for r in rec["by_batch_size"]] + [""]
    if rec["by_pairs"]:
        ops = "alignment_ops" in rec["by_pairs"][0]  # ATen ops per step, in records written since issue #28
        md += [f"| mapped pairs (batch {rec['batch_size']}) " + head + (" alignment ops |" if ops else ""),
               rule + ("---:|" if ops else "")]
        md += [f"| {r['pairs']} " + cells(r) + (f" {r['alignment_ops']:,} |" if ops else "") for r in rec["by_pairs"]]
        md += [""]
    return md


def _precision_section(rec: dict, source: str) -> list[str]:
    """A ``kind: gram_precision`` record: per pair and precision, the gram work's time and its errors."""
    cpu = rec["cpu"]
    flags = ", ".join(f"{f} {'yes' if cpu[f] else 'no' if cpu[f] is not None else DASH}"
                      for f in ("avx512_bf16", "amx_bf16", "amx_tile"))
    gpu = rec.get("gpu")
    md = [f"### `similarity.precision` on {rec['device']} ({_where(rec)})", "",
          (f"torch {rec['machine']['torch']}; CPU {cpu.get('model') or DASH}: {flags}; torch CPU capability "
           f"{cpu['torch_cpu_capability']}, oneDNN {'available' if cpu['mkldnn_available'] else 'absent'}"
           + (f"; GPU {gpu['name']} (compute capability {'.'.join(map(str, gpu['capability']))}, bf16 "
              f"{'supported' if gpu['bf16_supported'] else 'unsupported'})" if gpu else "")
           + f"; tf32 here: {rec['tf32']}; record `{source}`."), "",
          "| pair | batch | precision | (g) grams alone | × fp32 | max \\|ΔCKA\\| | gradient rel. error |",
          "|---|---:|---|---:|---:|---:|---:|"]
    floors = []
    for name, p in rec["pairs"].items():
        for prec, v in p["precisions"].items():
            md.append(f"| {name} ({p['pairs']} pairs) | {p['batch_size']} | {prec} | {_ms(v['gram_seconds'])} "
                      f"| {_num(v['vs_fp32'])} | {v['max_abs_dcka']:.1e} | {v['grad_rel_err']:.1e} |")
        floors.append(f"{name} {p['fp32_repeat_grad_rel_err']:.1e}")
    return md + ["", ("Gradient: the target's parameter gradient of the alignment loss against fp32's; fp32 against "
                      f"itself, run twice (the noise floor): {'; '.join(floors)}."), ""]


def _throughput_section(rec: dict, source: str) -> list[str]:
    """A ``kind: throughput`` record: back-to-back steps, examples per second and peak memory."""
    md = [_spec_title(rec, "Throughput: "), "",
          (f"{rec['device']} ({_where(rec)}), torch {rec['machine']['torch']}, batch {rec['batch_size']}, "
           f"{rec['pairs']} mapped pairs, {rec['target_parameters']:,} target parameters, networks {rec['precision']}, "
           f"similarity {rec['similarity_precision']}, {rec['steps']} back-to-back steps after {rec['warmup']} "
           f"warm-up, synthetic data; peak memory: {rec['memory_method']}; record `{source}`."), "",
          "| step | time per step | examples/s | peak memory |", "|---|---:|---:|---:|"]
    names = {"target": "(a) target step", "guided": "(c) guided step"}
    for v, r in rec["variants"].items():
        md.append(f"| {names.get(v, v)} | {_ms(r['seconds_per_step'])} | {r['examples_per_second']:,.0f} "
                  f"| {r['peak_bytes'] / 2**20:,.0f} MiB |")
    return md + [""]


def _profile_section(rec: dict, source: str) -> list[str]:
    """A ``kind: profile`` record (pairgraph.bench.profile): one step of each variant under torch.profiler."""
    md = [_spec_title(rec, "Profile of one step: "), "",
          (f"{rec['device']} ({_where(rec)}), torch {rec['machine']['torch']}, batch {rec['batch_size']}, "
           f"{rec['pairs']} mapped pairs, networks {rec['precision']}, similarity {rec['similarity_precision']}; "
           f"median of {rec['steps']} profiled steps after {rec['warmup']} warm-up; kernels: {rec['kernels_are']}; "
           f"idle: the step's wall time (under the profiler) outside every kernel and copy; record `{source}`."), "",
          ("| step | kernels | launch calls | kernel time | busy | wall (profiled) | idle | idle share "
           "| wall (unprofiled) | ATen ops (host syncs) |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v, r in rec["variants"].items():
        if "wall_seconds" not in r:  # a difference of two steps: kernels and kernel time only
            md.append(f"| {OPS_NAMES.get(v, v)} | {r['kernels']:,.0f} | | {_ms(r['kernel_seconds'])} | | | | | | |")
            continue
        md.append(f"| {OPS_NAMES.get(v, v)} | {r['kernels']:,.0f} | {r['launches']:,.0f} | {_ms(r['kernel_seconds'])} "
                  f"| {_ms(r['busy_seconds'])} | {_ms(r['wall_seconds'])} | {_ms(r['idle_seconds'])} "
                  f"| {r['idle_fraction']:.0%} | {_ms(r['unprofiled_seconds'])} "
                  f"| {r['aten']['ops']:,} ({r['aten']['syncs']}) |")
    return md + [""]


def _compile_modes_section(rec: dict, source: str) -> list[str]:
    """A ``kind: compile_modes`` record (pairgraph.bench.compile_modes): (c) eager and per torch.compile mode."""
    sec = rec["seconds"]
    md = [_spec_title(rec, "`train.compile` modes: "), "",
          (f"{rec['device']} ({_where(rec)}), torch {rec['machine']['torch']}, batch {rec['batch_size']}, "
           f"{rec['pairs']} mapped pairs, networks {rec['precision']} and eager, median of {rec['steps']} interleaved "
           f"steps after {rec['warmup']} warm-up; floor (eager): (a) {_ms(sec['target'])}, (b) {_ms(sec['guide'])}, "
           f"(g) {_ms(sec.get('gram'))}; fastest: {rec['fastest']}; train.compile uses {rec['train_compile_mode']}; "
           f"record `{source}`."), "",
          "| alignment | (c) guided step | × eager | c/(a+b+g) | first step (compile included) | compile | note |",
          "|---|---:|---:|---:|---:|---:|---|"]
    for m, r in rec["modes"].items():
        first = f"{r['first_step_seconds']:.1f} s" if "first_step_seconds" in r else DASH
        comp = f"{r['compile_seconds']:.1f} s" if r.get("compile_seconds") is not None else DASH
        note = (f"fell back to eager: {r['fallback']}" if r.get("fallback")
                else f"{r['cudagraph_skips']} graphs not run as CUDA graphs" if r.get("cudagraph_skips") else "")
        md.append(f"| {m} | {_ms(r['seconds'])} | {r['vs_eager']:.2f} | {r['overhead_gram']:.2f} | {first} | {comp} "
                  f"| {note} |")
    return md + [""]


RENDER = {None: _section, "gram_precision": _precision_section, "throughput": _throughput_section,
          "ops": _ops_section, "profile": _profile_section, "compile_modes": _compile_modes_section}


def main(folder: str, doc: str) -> None:
    records = sorted(Path(folder).glob("*.json"))
    if not records:
        raise SystemExit(f"no benchmark records in {folder}: run `make bench` first")
    md = [BEGIN, ""]
    for p in records:
        rec = json.loads(p.read_text())
        md += RENDER[rec.get("kind")](rec, str(p))
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
