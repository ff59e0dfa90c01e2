"""Issue #28 item 5's targets, read from the records `make gpu-check` wrote: each with its measured value, met
or missed by how much, so a GPU session's closing note can be written from this output.

    python scripts/gpu_targets.py [results/bench] [--device cuda]

- c ≤ 1.15 × (a+b+g), both benchmark pairs, networks fp32 and bf16 (`overhead_gram` of <pair>-cuda[-bf16].json;
  the same ratio from the record's batch-size table, a second measurement in the same process, is shown beside it);
- the cached step e ≤ 1.05 × (a+b), the same records (`cache.overhead`);
- the paper-size pair guided at ≥ 0.75 × the examples/s of the target alone (every `*-throughput.json`: the
  50 × 2,048 layout item 5 names, and the authors' layout);
- `train.compile`'s mode (pairgraph.core.compiled.compile_mode) is the fastest measured (`*-compile-modes.json`:
  its median against the fastest mode's);
- for information, no bound: the profile of each pair's guided step (`*-profile.json`: kernels per step, the
  alignment's kernels, the device's idle share of the step).

A record that is missing is reported as not measured. Missing a target is a result, not an error: the exit
status is 0 whenever the folder could be read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

OVERHEAD_GRAM, CACHED, THROUGHPUT = 1.15, 1.05, 0.75


def _row(target: str, record: str, value: float | None, bound: float | None = None, op: str | None = None,
         note: str = "") -> dict[str, Any]:
    """One target: met / missed (by value − bound, signed so that positive is how far it missed) or info."""
    if value is None:
        return {"target": target, "record": record, "value": None, "bound": bound, "op": op, "status": "not measured",
                "by": None, "note": note}
    if bound is None:
        return {"target": target, "record": record, "value": value, "bound": None, "op": None, "status": "info",
                "by": None, "note": note}
    by = value - bound if op == "<=" else bound - value
    return {"target": target, "record": record, "value": value, "bound": bound, "op": op,
            "status": "missed" if by > 0 else "met", "by": by, "note": note}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _note(rec: dict, variant: str, again: float | None) -> str:
    """The step's median time and batch, and the same ratio from the batch-size table's row of that batch."""
    if variant not in rec.get("seconds", {}):
        return ""
    return (f"batch {rec['batch_size']}, {variant} step {rec['seconds'][variant] * 1e3:.2f} ms"
            + (f"; the batch-size table's row: {again:.3f}" if again is not None else ""))


def _bench_rows(folder: Path, device: str, pairs: list[str]) -> list[dict]:
    rows = []
    for precision in ("fp32", "bf16"):
        for name in pairs:
            path = folder / f"{name}-{device}{'' if precision == 'fp32' else '-' + precision}.json"
            rec = _load(path) or {}
            again = next((r for r in rec.get("by_batch_size", []) if r["batch_size"] == rec.get("batch_size")), {})
            rows.append(_row(f"{name} {precision}: c/(a+b+g)", path.name, rec.get("overhead_gram"), OVERHEAD_GRAM, "<=",
                             _note(rec, "guided", again.get("overhead_gram"))))
            cache = rec.get("cache") or {}
            rows.append(_row(f"{name} {precision}: cached e/(a+b)", path.name, cache.get("overhead"), CACHED, "<=",
                             _note(rec, "cached", again.get("overhead_cached"))))
    return rows


def _layout(rec: dict) -> str:
    args = (rec.get("target") or {}).get("args") or {}
    return ", ".join(f"{k} {v}" for k, v in args.items()) or "—"


def _throughput_rows(folder: Path, device: str) -> list[dict]:
    rows = []
    for path in sorted(folder.glob(f"*-{device}*-throughput.json")):
        rec = json.loads(path.read_text())
        v = rec["variants"]
        ratio = v["guided"]["examples_per_second"] / v["target"]["examples_per_second"]
        rows.append(_row(f"paper size ({_layout(rec)}) {rec['precision']}: guided / target examples/s", path.name,
                         ratio, THROUGHPUT, ">=", f"{v['guided']['examples_per_second']:,.0f} vs "
                         f"{v['target']['examples_per_second']:,.0f} examples/s, batch {rec['batch_size']}"))
    if not rows:
        rows.append(_row("paper size: guided / target examples/s", f"*-{device}*-throughput.json", None, THROUGHPUT, ">="))
    return rows


def _compile_rows(folder: Path, device: str, pairs: list[str]) -> list[dict]:
    rows = []
    for name in pairs:
        path = folder / f"{name}-{device}-compile-modes.json"
        rec = _load(path)
        if rec is None:
            rows.append(_row(f"{name}: train.compile's mode is the fastest", path.name, None, 1.0, "<="))
            continue
        modes, chosen, fastest = rec["modes"], rec["train_compile_mode"], rec["fastest"]
        compiled = {m: f"{v['seconds'] * 1e3:.2f} ms (c/(a+b+g) {v['overhead_gram']:.2f}"
                       + (f", first step {v['first_step_seconds']:.1f} s" if "first_step_seconds" in v else "")
                       + (f", fell back: {v['fallback']}" if v.get("fallback") else "") + ")" for m, v in modes.items()}
        ratio = modes[chosen]["seconds"] / modes[fastest]["seconds"] if chosen in modes else None
        rows.append(_row(f"{name}: train.compile's mode {chosen!r} against the fastest, {fastest!r}", path.name, ratio,
                         1.0, "<=", "; ".join(f"{m} {t}" for m, t in compiled.items())))
    return rows


def _profile_rows(folder: Path, device: str, pairs: list[str]) -> list[dict]:
    rows = []
    for name in pairs:
        path = folder / f"{name}-{device}-profile.json"
        rec = _load(path)
        g = (rec or {}).get("variants", {}).get("guided")
        if g is None:
            rows.append(_row(f"{name}: profile of (c)", path.name, None))
            continue
        align = rec["variants"].get("alignment", {})
        rows.append(_row(f"{name}: (c) kernels per step ({rec['kernels_are']})", path.name, g["kernels"],
                         note=f"alignment (c − a − b) {align.get('kernels', '—')}, {g['aten']['ops']:,} ATen ops, "
                              f"{g['launches']:.0f} launch calls"))
        rows.append(_row(f"{name}: (c) device idle share of the step", path.name, g["idle_fraction"],
                         note=f"idle {g['idle_seconds'] * 1e3:.2f} of {g['wall_seconds'] * 1e3:.2f} ms under the "
                              f"profiler (unprofiled step {g['unprofiled_seconds'] * 1e3:.2f} ms)"))
    return rows


def check(folder: str | Path, device: str = "cuda") -> list[dict]:
    """Every target's row (``target``, ``record``, ``value``, ``bound``, ``op``, ``status``, ``by``, ``note``)."""
    from pairgraph.bench import BENCH_PAIRS

    folder, pairs = Path(folder), list(BENCH_PAIRS)
    return (_bench_rows(folder, device, pairs) + _throughput_rows(folder, device)
            + _compile_rows(folder, device, pairs) + _profile_rows(folder, device, pairs))


def _value(r: dict) -> str:
    v = r["value"]
    return f"{v:,.0f}" if isinstance(v, int) or (isinstance(v, float) and v >= 100) else f"{v:.3f}"


def render(rows: list[dict]) -> str:
    """One line per target: status, name, value against its bound, by how much, and the record's details."""
    lines = []
    for r in rows:
        if r["status"] == "not measured":
            head = f"NOT MEASURED  {r['target']} (no {r['record']})"
        elif r["status"] == "info":
            head = f"info          {r['target']}: {_value(r)}"
        else:
            rel = r["by"] / r["bound"] * 100
            how = f"by {abs(r['by']):.3f} ({abs(rel):.1f} % of the bound)"
            head = (f"{r['status'].upper():<13} {r['target']}: {_value(r)} {'≤' if r['op'] == '<=' else '≥'} "
                    f"{r['bound']:.2f} — {r['status']} {how}")
        lines.append(head + (f"  [{r['note']}; {r['record']}]" if r["note"] else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default="results/bench", help="the benchmark records")
    ap.add_argument("--device", default="cuda", help="the device suffix of the records (cuda, cpu)")
    args = ap.parse_args()
    print(render(check(args.folder, args.device)))


if __name__ == "__main__":
    main()
