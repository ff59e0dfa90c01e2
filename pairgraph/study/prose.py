"""Prose that cannot go stale: a cell's notes and the study's README status quote table numbers as
placeholders, filled from the run records whenever the report is written.

``{{mean ARM}}`` the arm's test metric, mean over its finished seeds; ``{{delta ARM}}`` its Δ from the
cell's baseline (``{{delta ARM-REF}}``: from arm REF); ``{{ci ARM}}`` / ``{{ci ARM-REF}}`` that Δ's Welch
95 % interval as ``95% CI [lo, hi]``; ``{{n ARM}}`` its finished seeds; ``{{lr ARM}}`` its chosen lr;
``{{guide ARM}}`` the mean test metric of the guides ARM trained (an arm with a trained guide);
``{{guideci ARM}}`` those guides' Δ from the cell's baseline with its Welch 95 % interval. ARM may be ``cell/arm`` to quote another
cell, or ``STUDY:cell/arm`` a cell of a follow-up study (:mod:`pairgraph.study.follow_ups`). A last token
of digits sets the decimals (default 1): ``{{mean baseline 2}}``. Study-wide: ``{{cells}}``, ``{{arms}}``,
``{{runs}}`` (finished runs); of a follow-up: ``{{runs STUDY}}``, ``{{cells STUDY}}``, ``{{arms STUDY}}``
and ``{{reading STUDY}}`` (the reading its trainability rule gives). A missing number prints as —; an
unknown name is a one-line error.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pairgraph.errors import PairgraphError
from pairgraph.study.formatting import mean_se, num, signed
from pairgraph.study.results import CellView
from pairgraph.study.schema import lr_tag
from pairgraph.study.stats import LEVEL, welch

PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
KINDS = ("mean", "delta", "ci", "n", "lr", "guide", "guideci")
HINT = "see the placeholders in the docstring of pairgraph/study/prose.py"


FACTS = ("runs", "cells", "arms", "reading")


def fill(text: str, views: list[CellView], where: str, cell: CellView | None = None,
         totals: dict[str, int] | None = None, quoted: dict[str, CellView] | None = None,
         facts: dict[str, dict[str, str]] | None = None) -> str:
    """``text`` with every placeholder replaced; ``where`` names the text in errors (e.g. "cell fcn_deep notes").

    ``quoted``: other studies' cells by ``STUDY:cell``; ``facts``: per other study, what ``{{runs STUDY}}`` …
    print (:meth:`pairgraph.study.follow_ups.Followed.facts`)."""
    by_name = {v.cell.name: v for v in views} | (quoted or {})

    def one(m: re.Match[str]) -> str:
        tokens, at = m.group(1).split(), f"{where}: {{{{{m.group(1)}}}}}"
        if len(tokens) == 2 and tokens[0] in FACTS:
            if tokens[1] not in (facts or {}):
                raise PairgraphError(f"{at}: no follow-up study {tokens[1]!r}",
                                     "use one of " + (", ".join(facts or {}) or "(none: add it to follow_ups)"))
            return (facts or {})[tokens[1]][tokens[0]]
        return _value(tokens, by_name, cell, totals or {}, at)

    return PLACEHOLDER.sub(one, text)


def _value(tokens: list[str], by_name: dict[str, CellView], cell: CellView | None, totals: dict[str, int],
           at: str) -> str:
    if len(tokens) == 1 and tokens[0] in totals:
        return f"{totals[tokens[0]]:,}"
    if not tokens or tokens[0] not in KINDS or len(tokens) not in (2, 3):
        raise PairgraphError(f"{at}: not a placeholder", f"use one of {', '.join(KINDS)} with an arm, or "
                             f"{', '.join(totals) or 'cells, arms, runs'}; {HINT}")
    digits = 1
    if len(tokens) == 3:
        if not tokens[2].isdigit():
            raise PairgraphError(f"{at}: {tokens[2]!r} is not a number of decimals", "e.g. {{mean baseline 2}}")
        digits = int(tokens[2])
    kind, ref = tokens[0], tokens[1]
    arm, _, other = ref.partition("-") if kind in ("delta", "ci") else (ref, "", "")
    view, arm_name = _arm(arm, by_name, cell, at)
    other_name = _arm(other, by_name, view, at)[1] if other else "baseline"
    if kind in ("delta", "ci") and other_name not in view.arms:
        raise PairgraphError(f"{at}: cell {view.cell.name!r} has no arm {other_name!r} to compare with",
                             "name the reference arm: {{delta ARM-REF}}")
    fmt: dict[str, Callable[[], str]] = {
        "mean": lambda: _mean(view.stat(arm_name), digits),
        "n": lambda: str(len(view.values(arm_name))),
        "lr": lambda: lr_tag(c) if (c := view.arms[arm_name].chosen) is not None else "—",
        "guide": lambda: _guide(view, arm_name, digits, at),
        "guideci": lambda: _guide_ci(view, arm_name, digits, at),
        "delta": lambda: _delta(view, arm_name, other_name, digits, interval=False),
        "ci": lambda: _delta(view, arm_name, other_name, digits, interval=True),
    }
    return fmt[kind]()


def _arm(ref: str, by_name: dict[str, CellView], cell: CellView | None, at: str) -> tuple[CellView, str]:
    cname, _, aname = ref.rpartition("/")
    view = by_name.get(cname) if cname else cell
    if view is None:
        raise PairgraphError(f"{at}: no cell {cname or '(none: write cell/arm)'!r}",
                             "use one of " + ", ".join(by_name))
    if aname not in view.arms:
        raise PairgraphError(f"{at}: cell {view.cell.name!r} has no arm {aname!r}",
                             "use one of " + ", ".join(view.arms))
    return view, aname


def _mean(stat: tuple[float, float | None, int] | None, digits: int) -> str:
    return "—" if stat is None else num(stat[0], digits)


def _guide(view: CellView, arm: str, digits: int, at: str) -> str:
    """The mean test metric of the guides ``arm`` trained; — where none recorded it."""
    vals = _guide_values(view, arm, at)
    return "—" if not vals else num(sum(vals) / len(vals), digits)


def _guide_ci(view: CellView, arm: str, digits: int, at: str) -> str:
    """``Δ d, 95% CI [lo, hi]`` of (the guides ``arm`` trained − the cell's baseline); — where either is missing."""
    vals, base = _guide_values(view, arm, at), view.stat("baseline")
    if not vals or base is None:
        return "—"
    dl = welch((*mean_se(vals), len(vals)), base)
    if dl.lo is None or dl.hi is None:
        return f"Δ {signed(dl.d, digits)}, no interval (one seed)"
    return f"Δ {signed(dl.d, digits)}, {LEVEL:.0%} CI [{signed(dl.lo, digits)}, {signed(dl.hi, digits)}]"


def _guide_values(view: CellView, arm: str, at: str) -> list[float]:
    if arm != "trained" and not view.trains_guide(arm):
        raise PairgraphError(f"{at}: arm {arm!r} does not guide with a trained guide",
                             "write {{guide trained}} or name an arm whose guide.weights is train")
    return view.guide_values(arm)


def _delta(view: CellView, arm: str, ref: str, digits: int, interval: bool) -> str:
    a, b = view.stat(arm), view.stat(ref)
    if a is None or b is None:
        return "—"
    dl = welch(a, b)
    if not interval:
        return signed(dl.d, digits)
    if dl.lo is None or dl.hi is None:
        return "no interval (one seed)"
    return f"{LEVEL:.0%} CI [{signed(dl.lo, digits)}, {signed(dl.hi, digits)}]"

