"""``pairgraph report``: the study's markdown report and figures, from its results folder only (no
training, no data), byte-identical on every invocation; optionally the README's headline block."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pairgraph.errors import PairgraphError
from pairgraph.study.figures import FIG_KINDS, FigureIndex, cell_figures
from pairgraph.study.follow_ups import follow_up_sections, load_follow_ups, quoted_views
from pairgraph.study.formatting import num
from pairgraph.study.grid import grid_section
from pairgraph.study.noise import noise_section
from pairgraph.study.prose import fill
from pairgraph.study.results import UNRESOLVED, ArmResult, CellView, cell_views, collect, coverage, word
from pairgraph.study.schema import Study, load_study, lr_tag
from pairgraph.study.stats import LEVEL, PAPER_SEEDS
from pairgraph.study.tables import (
    cell_section,
    headline_table,
    image_table,
    machines_section,
    sequence_table,
    sizes_section,
    wall_clock_section,
)

README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
STATUS_BEGIN, STATUS_END = "<!-- status:begin -->", "<!-- status:end -->"


def report(study: Study | str | Path, output: str | Path = "docs/results.md", figures: str | Path | None = None,
           echo: Callable[[str], None] | None = None, readme: str | Path | None = None) -> Path:
    """Write the markdown report (byte-identical on every invocation) and its figures; returns the path.

    With ``readme``, also replace that file's ``<!-- results:begin -->`` … ``<!-- results:end -->``
    block with the headline table."""
    if not isinstance(study, Study):
        study = load_study(study)
    output = Path(output)
    fig_dir = Path(figures) if figures is not None else output.parent / "figures" / study.name
    results = collect(study)
    views = cell_views(study, results)
    follows = load_follow_ups(study)
    quoted, facts = quoted_views(follows), {f.study.name: f.facts() for f in follows}
    figs = FigureIndex()

    def link(path: Path) -> str:
        return Path(os.path.relpath(path, output.parent)).as_posix()

    done_runs = [r for ar in results.values() for r in ar.all_runs if r.done]
    totals = {"cells": len(study.cells), "arms": sum(len(c.arms) for c in study.cells), "runs": len(done_runs)}
    md = _header(study, results, views) + machines_section(done_runs) + sizes_section(study, views)
    md += wall_clock_section(results)
    headline = headline_table(study, views)  # also what `--readme` copies into the README
    md += ["## Headline", ""] + headline
    md += image_table([v for v in views if v.task_kind == "image_classification"])
    md += sequence_table([v for v in views if v.task_kind in ("copy_paste", "parity", "language_modeling")])
    md += noise_section(views)
    md += grid_section(study, views, fig_dir, link)
    md += follow_up_sections(follows, fig_dir.parent, link)
    md += ["## Cells", ""]
    for v in views:
        notes = (fill(v.cell.notes, views, f"cell {v.cell.name} notes", v, totals, quoted, facts)
                 if v.cell.notes else None)
        md += cell_section(study, v, notes)
        md += cell_figures(study, v, fig_dir, figs, link)
    md += _figure_index(figs)
    _write(output, "\n".join(md).rstrip("\n") + "\n")
    if echo:
        echo(f"wrote {output} and {sum(len(d) for d in figs.drawn.values())} figures under {fig_dir}")
    if readme is not None:
        complete = sum(1 for ar in results.values() if ar.status == "done")
        n_arms = sum(len(c.arms) for c in study.cells)
        status = (fill(study.readme_status, views, "readme_status", None, totals, quoted, facts)
                  if study.readme_status else None)
        _fill_readme(Path(readme), study, output, headline, f"{complete} of {n_arms} arms complete", status)
        if echo:
            echo(f"updated the headline table in {readme}")
    return output


def verdict_rule(views: list[CellView]) -> str:
    """The verdict rule, how many verdicts the report draws and how many false ones it expects."""
    drawn = [(v, a.name) for v in views for a in v.cell.arms
             if v.has_verdict(a.name) and v.stat(a.name) is not None and v.stat("baseline") is not None]
    resolved = sum(1 for v, a in drawn if word(v.verdict(a)) != UNRESOLVED)
    alpha = 1 - LEVEL
    return (f"**Verdicts.** Each Δ (arm − baseline) has a Welch t {LEVEL:.0%} interval over the seeds (its degrees of "
            "freedom printed: with 3–5 seeds a side they are 2–8, so the interval is much wider than ±2 s.e.). "
            "A verdict reads *same direction* / *opposite direction* (the paper's Δ taken the same way, its "
            f"s.e.s over {PAPER_SEEDS} seeds) when our interval excludes 0, else *{UNRESOLVED}*; where only the "
            "paper's interval includes 0 it says *same* or *opposite sign, the paper's Δ not resolved*. This "
            f"report draws {len(drawn)} verdicts, {resolved} of them resolved; if no arm differed from its "
            f"baseline, each would exclude 0 by chance with probability {alpha:.2f}, so about "
            f"{num(alpha * len(drawn), 1)} resolved verdicts are expected from chance alone (the verdicts are not "
            "corrected for multiplicity). Each verdict also shows the matched-lr Δ: both arms at the same lr, at "
            "every lr where both ran, with the seeds each has there (arm/baseline).")


def _header(study: Study, results: dict[tuple[str, str], ArmResult], views: list[CellView]) -> list[str]:
    """Title, where the numbers come from, the protocol, and how much of the study is done."""
    md = [f"# Results: study `{study.name}`", ""]
    if study.description:
        md += [study.description.strip(), ""]
    md += [(f"Generated by `pairgraph report {study.file.as_posix()}` from the run records in "
           f"`{study.results_path().as_posix()}/` only (summary.json, metrics.jsonl.gz, spec.yaml, env.json, "
           "test_predictions.json): no training, no data. Running it again gives this file byte for byte."), ""]
    lrs_txt = ", ".join(lr_tag(x) for x in study.lrs)
    seeds_txt = ", ".join(map(str, study.seeds))
    if study.grid:
        protocol = (f"**Protocol** (a grid): for each cell and arm, train seeds {seeds_txt} at every learning rate "
                    f"of the sweep ({lrs_txt}; a cell may give its own); an arm's chosen lr is the one with the "
                    "lowest best-validation loss averaged over the seeds")
    else:
        protocol = ("**Protocol** (paper §4.3): for each cell and arm, train every learning rate of the sweep "
                    f"({lrs_txt}; a cell may give its own) on seed {study.sweep_seed}, keep the lr with the lowest "
                    f"best-validation loss, then train seeds {seeds_txt} at it (the sweep's run is reused as its seed)")
    md += [(protocol + (f", and seeds {', '.join(map(str, study.close_seeds))} too where an arm's "
           f"|Δ| from the baseline is under {study.close_below:g} pooled standard deviations (and for that baseline)"
           if study.close_seeds else "") + ". Each run is evaluated on the validation split every `eval_every` steps; its test "
           "metric is that of the checkpoint with the lowest validation loss. Tables show mean ± standard error "
           "(std with ddof = 1, / √n, n = seeds that finished). The paper instead picks the epoch with the lowest "
           "seed-averaged validation loss; the per-run choice applies to every arm alike, and the Noise floor "
           "section gives the verdicts under both rules. Accuracies are in %. "
           + verdict_rule(views) + " A chosen lr at either end of its sweep means the best lr may lie outside it."),
           ""]
    if study.overrides:
        md += ["Overrides applied to every run: " + ", ".join(f"`{o}`" for o in study.overrides) + ".", ""]
    return md + ["**Coverage:** " + coverage(study, results), ""]


def _figure_index(figs: FigureIndex) -> list[str]:
    """Per figure kind: the cells it was drawn for, and why not for the others."""
    md = ["## Figures", ""]
    for kind, title in FIG_KINDS:
        drawn = figs.drawn.get(kind, {})
        missing = figs.missing.get(kind, {})
        md += [f"**{title}.** " + ("Drawn for: " + ", ".join(f"[{c}]({drawn[c]})" for c in sorted(drawn)) + "."
                                   if drawn else "Not drawn for any cell.")]
        if missing:
            md += ["Not drawn: " + "; ".join(f"{c} ({missing[c]})" for c in sorted(missing)) + "."]
        md += [""]
    return md


def _write(output: Path, text: str) -> None:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        raise PairgraphError(f"cannot write {output}: {e.strerror or e}", "pick another output path (-o)") from None


def _fill_readme(path: Path, study: Study, output: Path, headline: list[str], coverage: str,
                 status: str | None) -> None:
    """Replace the README's ``<!-- results:begin -->`` … ``<!-- results:end -->`` block with the headline table,
    and its ``<!-- status:begin -->`` … ``<!-- status:end -->`` block with ``status`` (the study's
    ``readme_status``, filled from the records) when given."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PairgraphError(f"cannot read {path}: {e.strerror or e}", "give the README's path to --readme") from None
    if status is not None:
        text = _replace_block(path, text, STATUS_BEGIN, STATUS_END, [STATUS_BEGIN, status.strip(), STATUS_END],
                              "the study's readme_status")
    rel = Path(os.path.relpath(output, path.parent)).as_posix()
    block = [README_BEGIN, "", (f"Study `{study.name}` ({coverage}); generated by `pairgraph report "
                                f"{study.file.as_posix()} --readme {path.as_posix()}`, details in "
                                f"[{rel}]({rel}). Levels are not comparable with the paper's (CPU sizes; see the "
                                "Sizes section there); directions are."), "", *headline, README_END]
    path.write_text(_replace_block(path, text, README_BEGIN, README_END, block, "the headline table"),
                    encoding="utf-8")


def _replace_block(path: Path, text: str, begin: str, end: str, block: list[str], what: str) -> str:
    """``text`` with the lines from ``begin`` to ``end`` replaced by ``block``."""
    if begin not in text or end not in text:
        raise PairgraphError(f"{path} has no {begin} … {end} block",
                             f"add the two marker lines where {what} should go")
    head, rest = text.split(begin, 1)
    return head + "\n".join(block) + rest.split(end, 1)[1]
