"""Follow-up studies in a study's report. A study file may name others (``follow_ups:``) whose questions
grew out of it — the trainability experiment, wider lr grids with better-trained guides. Its report gives
each a section built from that study's own records: what it is, its coverage and verdict count, its headline
table, its grid section (Δ against lr, the baseline's trainability, the reading of its rule) and notes whose
numbers are placeholders; and the study's own notes and README status may quote a follow-up's cells as
``{{delta STUDY:cell/arm}}``, its run count as ``{{runs STUDY}}`` and its rule's reading as
``{{reading STUDY}}``. So one document holds every result, and nothing quoted from a follow-up goes stale."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pairgraph.errors import PairgraphError
from pairgraph.study.grid import grid_section, reading
from pairgraph.study.prose import fill
from pairgraph.study.results import ArmResult, CellView, cell_views, collect, coverage
from pairgraph.study.schema import FollowUp, Study, load_study
from pairgraph.study.tables import headline_table


@dataclass(frozen=True)
class Followed:
    """A follow-up study with its records read."""

    entry: FollowUp
    study: Study
    results: dict[tuple[str, str], ArmResult]
    views: list[CellView]

    def facts(self) -> dict[str, str]:
        """What ``{{runs STUDY}}``, ``{{cells STUDY}}``, ``{{arms STUDY}}`` and ``{{reading STUDY}}`` print."""
        done = sum(1 for ar in self.results.values() for r in ar.all_runs if r.done)
        return {"runs": f"{done:,}", "cells": str(len(self.study.cells)),
                "arms": str(sum(len(c.arms) for c in self.study.cells)),
                "reading": reading(self.study, self.views) or "—"}


def load_follow_ups(study: Study) -> list[Followed]:
    """Each follow-up study of ``study``, loaded and its records read (its own follow-ups are not followed)."""
    out = []
    for entry in study.follow_ups:
        sub = load_study(study.file_path(entry.study, "follow-up study"))
        if sub.name == study.name or sub.name in {f.study.name for f in out}:
            raise PairgraphError(f"{study.file}: follow-up {entry.study!r} is study {sub.name!r}, named twice or "
                                 "the study itself", "list each other study once in follow_ups")
        results = collect(sub)
        out.append(Followed(entry, sub, results, cell_views(sub, results)))
    return out


def quoted_views(follows: list[Followed]) -> dict[str, CellView]:
    """The follow-ups' cells by the names placeholders give them: ``STUDY:cell``."""
    return {f"{f.study.name}:{v.cell.name}": v for f in follows for v in f.views}


def follow_up_sections(follows: list[Followed], fig_root: Path, link: Callable[[Path], str]) -> list[str]:
    """The report's "Follow-up studies" section; its figures go to ``fig_root/<follow-up study>/``."""
    if not follows:
        return []
    md = ["## Follow-up studies", "",
          ("Studies whose questions grew out of this one, each from its own records (`results/<study>/`) under its "
           "own study file; its full report has every table, curve and cell. Their verdicts are counted there, "
           "not in this report's count."), ""]
    for f in follows:
        md += _section(f, fig_root / f.study.name, link)
    return md


def _section(f: Followed, fig_dir: Path, link: Callable[[Path], str]) -> list[str]:
    sub = f.study
    where = f"`pairgraph report {sub.file.as_posix()}`"
    if f.entry.report:
        where += f", full report [{f.entry.report}]({link(Path(f.entry.report))})"
    md = [f"### `{sub.name}`", ""]
    if sub.description:
        md += [sub.description.strip(), ""]
    md += [f"Study file `{sub.file.as_posix()}`; {where}. Coverage: {coverage(sub, f.results)}", ""]
    if f.entry.notes:
        md += ["**Notes.** " + fill(f.entry.notes.strip(), f.views, f"follow-up {sub.name} notes"), ""]
    md += headline_table(sub, f.views)
    md += _demote(grid_section(sub, f.views, fig_dir, link))
    return md


def _demote(md: list[str]) -> list[str]:
    """A section's headings two levels down (## → ####), to sit under the follow-up's own heading."""
    return [re.sub(r"^(#+) ", r"\1## ", line) for line in md]
