"""The report's markdown sections: the machines, the sizes of each cell, wall-clock time, the
headline table, the tables shaped like the paper's Tables 2 and 3, and each cell's own section."""

from __future__ import annotations

import math
from typing import Any

from pairgraph.study.formatting import fmt_seconds, mean_se, num, pm, table, unit
from pairgraph.study.records import best_val
from pairgraph.study.results import ArmResult, CellView, StoredRun, delta_text
from pairgraph.study.schema import Cell, PaperNumbers, Study, lr_tag
from pairgraph.study.stats import welch
from pairgraph.zoo import resolve


def args_text(net: dict[str, Any]) -> str:
    """``model (preset name: its arguments; other arguments)`` for the Sizes table."""
    model = str(net.get("model", "?"))
    args = dict(net.get("args") or {})
    preset = args.pop("preset", None)
    parts = []
    if preset is not None:
        expanded: dict[str, Any] = {}
        try:
            expanded = dict(resolve(model).presets.get(preset, {}))
        except Exception:  # noqa: BLE001 - a model not importable here: show the preset's name only
            expanded = {}
        inner = ", ".join(f"{k}={v}" for k, v in sorted(expanded.items()) if k not in args)
        parts.append(f"preset {preset}" + (f": {inner}" if inner else ""))
    parts += [f"{k}={v}" for k, v in sorted(args.items())]
    return f"{model} ({'; '.join(parts)})" if parts else model


def task_text(task: dict[str, Any]) -> str:
    """``kind (option=value, …)`` for the Sizes table (without the data folder)."""
    kind = task.get("kind", "?")
    opts = [f"{k}={v}" for k, v in sorted(task.items()) if k not in ("kind", "data_dir") and v is not None]
    return f"{kind} ({', '.join(opts)})" if opts else str(kind)


def sweep_text(cell: Cell, study: Study) -> str:
    """The cell's lr sweep, or the pinned lrs when no arm of the cell sweeps."""
    if any(a.swept for a in cell.arms):
        return ", ".join(lr_tag(x) for x in (cell.lrs or study.lrs))
    return "none; pinned: " + ", ".join(f"{a.name} {lr_tag(a.lr)}" for a in cell.arms if a.lr is not None)


def headline_table(study: Study, views: list[CellView]) -> list[str]:
    """One row per cell and arm with finished seeds: ours (mean ± s.e.), the paper's, and the direction check."""
    rows = []
    for v in views:
        for arm in v.cell.arms:
            st = v.stat(arm.name)
            if st is None:
                continue
            rows.append([v.label, f"{unit(v.metric)} {'↑' if v.higher else '↓'}", arm.name,
                         f"{st[2]}/{v.arms[arm.name].n_seeds}", pm(st[0], st[1]), paper_cell(v.cell.paper, arm.name),
                         v.agreement(arm.name, _chosen_lrs(v, arm.name)), v.matched_text(arm.name),
                         _second(v, arm.name)])
    if not rows:
        return ["No arm has a finished seed yet.", ""]
    return table(["cell", "test metric", "arm", "seeds", "ours: mean ± s.e.", "paper",
                   "vs baseline, each at its chosen lr: the paper's direction?", "matched-lr Δ (seeds arm/baseline)",
                   "top-5 beside top-1: mean ± s.e.; Δ vs baseline (no verdict)"],
                 rows, "lllrrrlll") + [""]


def _second(v: CellView, arm: str) -> str:
    """The arm on the cell's second metric (top-5 beside top-1), named; — where the records have none."""
    text = v.second_text(arm)
    return f"{unit(v.second_metric)}: {text}" if v.second_metric and text != "—" else text


def _chosen_lrs(v: CellView, arm: str) -> str:
    """`` (lrs a vs b)``: the chosen lrs behind a best-vs-best verdict."""
    a, b = v.arms[arm].chosen, v.arms["baseline"].chosen if "baseline" in v.arms else None
    if arm == "baseline" or a is None or b is None:
        return ""
    return f" (lr {lr_tag(a)} vs {lr_tag(b)})"


def paper_cell(paper: PaperNumbers | None, key: str) -> str:
    """The paper's number for an arm (or guide) as ``mean ± s.e.``; — when it gives none."""
    if paper is None or paper.get(key) is None:
        return "—"
    m, se = paper.get(key)
    return pm(m, se)


def _row_label(view: CellView, key: str) -> str:
    g, t = view.guide_label(), view.target_label()
    return {"guide": g, "untrained_guide": f"Untrained {g}", "baseline": t, "trained": f"{g} → {t}",
            "untrained": f"Untrained {g} → {t}"}[key]


def _row_order(label: str) -> tuple[int, str, int]:
    untrained = label.startswith("Untrained ")
    base = label.removeprefix("Untrained ")
    return ("→" in label, base, untrained)  # type: ignore[return-value]


def _ours(view: CellView, key: str, metric: str | None = None) -> str:
    if key == "untrained_guide":
        return "not measured"
    if key != "guide" and key not in view.arms:
        return "not in study"
    st = view.stat(key, metric=metric)
    if st is None:
        return "not run" if metric is None else "not recorded"
    return pm(st[0], st[1])


_PAPER_ROWS = ("guide", "untrained_guide", "baseline", "trained", "untrained")


def image_table(views: list[CellView]) -> list[str]:
    """The image-classification cells as rows shaped like the paper's Table 2."""
    md = ["## Image classification (shaped like the paper's Table 2)", ""]
    if not views:
        return md + ["No image-classification cell in this study.", ""]
    md += [("Ours: test metric of the cell (CPU sizes; see Sizes). Paper: ImageNet top-5 validation accuracy. "
           "Compare directions, not levels. `guide` rows are the trained guide alone (ours: the guides the "
           "`trained` arm trained, one per seed)."), ""]
    rows = []
    for v in views:
        keys = [k for k in _PAPER_ROWS if k in v.arms or (v.cell.paper and v.cell.paper.get(k) is not None)
                or (k == "guide" and "trained" in v.arms)]
        for k in keys:  # the paper's order: guide, untrained guide, target, trained → target, untrained → target
            second = v.second_metric
            rows.append([_row_label(v, k), v.label, f"{_ours(v, k)}", paper_cell(v.cell.paper, k),
                         unit(v.metric) + (" ↑" if v.higher else " ↓"),
                         f"{unit(second)}: {_ours(v, k, second)}" if second else "—"])
    md += table(["experiment", "cell", "ours", "paper", "our metric", "ours, top-5 beside top-1"], rows,
                "llrrll") + [""]
    return md


def sequence_table(views: list[CellView]) -> list[str]:
    """The sequence cells as columns shaped like the paper's Table 3: each entry ours (paper)."""
    md = ["## Sequence modeling (shaped like the paper's Table 3)", ""]
    if not views:
        return md + ["No sequence cell in this study.", ""]
    md += ["Each entry: ours (paper). Ours at CPU sizes (see Sizes); compare directions, not levels.", ""]
    labels: dict[str, dict[str, str]] = {}
    for v in views:
        for k in _PAPER_ROWS:
            if k in v.arms or (v.cell.paper and v.cell.paper.get(k) is not None) or (k == "guide" and "trained" in v.arms):
                labels.setdefault(_row_label(v, k), {})[v.cell.name] = (
                    f"{_ours(v, k)} ({paper_cell(v.cell.paper, k)})")
    head = ["experiment"] + [f"{v.label}: {unit(v.metric)} {'↑' if v.higher else '↓'}" for v in views]
    rows = [[lab] + [labels[lab].get(v.cell.name, "—") for v in views] for lab in sorted(labels, key=_row_order)]
    return md + table(head, rows) + [""]


def cell_section(study: Study, v: CellView, notes: str | None) -> list[str]:
    """A cell's section: its spec and metric, a row per arm, ``notes`` (filled from the records), trained guides,
    the sweep."""
    c = v.cell
    md = [f"### {v.label}", ""]
    paper = c.paper
    src = f" ({paper.source})" if paper and paper.source else ""
    md += [f"Spec `{c.spec}`" + (", overrides " + ", ".join(f"`{o}`" for o in c.overrides) if c.overrides else "")
           + f"; metric: test {unit(v.metric)}, {'higher' if v.higher else 'lower'} is better"
           + (f"; paper: {paper.metric}{src}" if paper else "; the paper has no numbers for this cell") + ".", ""]
    rows = []
    for arm in c.arms:
        ar = v.arms[arm.name]
        if not ar.seeds:
            rows.append([arm.name, lr_tag(ar.chosen) if ar.chosen is not None else "—", "0",
                         ar.status, paper_cell(paper, arm.name), "n/a (not run)", v.matched_text(arm.name), "—"])
            continue
        m, se = mean_se(v.values(arm.name)) if v.values(arm.name) else (math.nan, None)
        n_txt = f"{len(ar.seeds)}/{ar.n_seeds}" + (f", {len(ar.diverged_seeds)} diverged" if ar.diverged_seeds
                                                         else "")
        pinned = " (pinned)" if arm.lr is not None else f" (from {arm.lr_from})" if arm.lr_from else ""
        swept = [float(t) for t in ar.sweep]
        if arm.swept and ar.chosen is not None and len(swept) > 1 and ar.chosen in (min(swept), max(swept)):
            pinned = " (sweep's edge)"
        rows.append([arm.name, lr_tag(ar.chosen) + pinned, n_txt, pm(m, se), paper_cell(paper, arm.name),
                     v.agreement(arm.name), v.matched_text(arm.name), v.second_text(arm.name)])
    second = f"test {unit(v.second_metric)}" if v.second_metric else "second metric"
    md += table(["arm", "lr (chosen)", "n seeds", f"test {unit(v.metric)} mean ± s.e.", "paper",
                  "vs baseline, each at its chosen lr: the paper's direction?", "matched-lr Δ (seeds arm/baseline)",
                  f"{second} mean ± s.e.; Δ vs baseline (no verdict)"],
                 rows, "lrrrrlll") + [""]
    if notes:
        md += ["**Notes.** " + " ".join(notes.split()), ""]
    for arm in (a.name for a in c.arms if v.guide_values(a.name)):
        md += [_guides_alone(v, arm), ""]
    return md + _sweep_table(study, v)


def _guides_alone(v: CellView, arm: str) -> str:
    """The guides ``arm`` trained, alone: their test metric(s), and their Δ from the unguided target with its Welch
    interval (is the guide stronger than what it guides?)."""
    vals = v.guide_values(arm)
    second = v.guide_values(arm, v.second_metric) if v.second_metric else []
    st, base = (*mean_se(vals), len(vals)), v.stat("baseline")
    paper = v.cell.paper
    return (f"The trained guides alone (one per seed of `{arm}`): test {unit(v.metric)} {pm(*mean_se(vals))} "
            f"(n={len(vals)})" + (f", test {unit(v.second_metric)} {pm(*mean_se(second))}" if second else "")
            + (f"; guide − unguided {v.target_label()}: {delta_text(welch(st, base))}" if base is not None else "")
            + (f"; paper {paper_cell(paper, 'guide')}" if paper and paper.get("guide") else "") + ".")


def _sweep_table(study: Study, v: CellView) -> list[str]:
    """Best validation loss of each swept arm at each lr of the sweep; the chosen lr in bold."""
    sweeps = [(arm, v.arms[arm.name]) for arm in v.cell.arms if arm.swept]
    if not sweeps:
        return []
    lrs = sorted({t for _, ar in sweeps for t in ar.sweep}, key=float)
    rows = []
    for arm, ar in sweeps:
        row = [arm.name]
        for t in lrs:
            r = ar.sweep.get(t)
            if t not in ar.sweep:
                row.append("")
            elif r is None:
                row.append("—")
            elif not r.done:
                row.append("diverged")
            else:
                cell_txt = num(best_val(r.summary), 4)
                row.append(f"**{cell_txt}**" if ar.chosen is not None and lr_tag(ar.chosen) == t else cell_txt)
        rows.append(row)
    return ([f"Sweep (seed {study.sweep_seed}): best validation loss per lr; bold = chosen; — = not run.", ""]
            + table(["arm"] + [f"lr {t}" for t in lrs], rows) + [""])


def machines_section(done_runs: list[StoredRun]) -> list[str]:
    """Where the finished runs ran (from their env.json), with how many runs each."""
    md = ["## Machines", ""]
    machines: dict[tuple[str, ...], int] = {}
    for r in done_runs:
        e = r.env
        key = (str(e.get("processor", "?")), str(e.get("cpu_count", "?")), str(e.get("threads", "?")),
               str(e.get("torch", "?")), str(e.get("device", "?")), str(e.get("gpu", "")), str(e.get("platform", "?")))
        machines[key] = machines.get(key, 0) + 1
    if machines:
        md += table(["processor", "cpu_count", "torch threads", "torch", "device", "gpu", "platform", "runs"],
                    [[*k[:5], k[5] or "—", k[6], str(n)] for k, n in sorted(machines.items())],
                    "llrllllr")
    else:
        md += ["No finished runs yet."]
    return md + [""]


def sizes_section(study: Study, views: list[CellView]) -> list[str]:
    """Per cell: task, guide, target, training length and the lr sweep."""
    md = ["## Sizes", "", f"Seeds: {', '.join(map(str, study.seeds))} (lr sweep on seed {study.sweep_seed}).", ""]
    rows = []
    for v in views:
        s = v.base_spec
        t = s.get("train") or {}
        steps = t.get("steps") if t.get("steps") is not None else f"{t.get('epochs') or 1} epochs"
        rows.append([v.cell.name, task_text(s.get("task") or {}), args_text(s.get("guide") or {}),
                     args_text(s.get("target") or {}),
                     (f"{steps} steps, batch {t.get('batch_size', '?')}, eval every {t.get('eval_every', '?')}, "
                     f"{t.get('optimizer', '?')}"),
                     sweep_text(v.cell, study)])
    return md + table(["cell", "task", "guide", "target", "training", "lr sweep"], rows, "llllll") + [""]


def wall_clock_section(results: dict[tuple[str, str], ArmResult]) -> list[str]:
    """Training time per cell and arm (summary.json) and the study's own clock around each run."""
    md = ["## Wall-clock time", "",
          ("Per run: `wall_seconds_this_session` of summary.json (the training loop; a resumed run, or one continued "
           "from a shorter cell's run (continued_from.json), counts its last session only), and the study's own clock "
           "around the run (compile, data, guide training included)."), ""]
    rows = []
    tot_train = tot_all = 0.0
    tot_n = 0
    for (c, a), ar in results.items():
        walls = [float(r.summary.get("wall_seconds_this_session") or 0.0) for r in ar.all_runs if r.done and r.summary]
        alls = [float(r.record.get("wall_seconds") or 0.0) for r in ar.all_runs if r.record]
        if not walls:
            continue
        tot_train += sum(walls)
        tot_all += sum(alls)
        tot_n += len(walls)
        rows.append([f"{c}/{a}", str(len(walls)), num(sum(walls) / len(walls), 1), fmt_seconds(sum(walls)),
                     fmt_seconds(sum(alls)) if alls else "—"])
    if rows:
        rows.append(["**all**", str(tot_n), num(tot_train / max(tot_n, 1), 1), fmt_seconds(tot_train),
                     fmt_seconds(tot_all)])
        md += table(["cell/arm", "runs", "mean s/run (training)", "sum (training)", "sum (study clock)"], rows)
    else:
        md += ["No finished runs yet."]
    return md + [""]
