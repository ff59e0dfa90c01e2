"""The report's statistics: Welch t intervals of every Δ, the verdict rule's count of expected false
verdicts, and the matched-lr Δ (both arms at the same lr) beside best-vs-best."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from pairgraph.study.plan import Arm
from pairgraph.study.report import verdict_rule
from pairgraph.study.results import ArmResult, CellView, StoredRun
from pairgraph.study.schema import Cell
from pairgraph.study.stats import welch


@pytest.mark.parametrize(("a", "b"), [([40.0, 44.0, 41.0], [14.0, 16.0, 15.5]), ([1.0, 2.0, 4.0, 8.0, 3.0], [2.0, 2.5])])
def test_welch_interval_equals_scipys_on_the_raw_values(a, b):
    def stat(x):
        return statistics.fmean(x), statistics.stdev(x) / len(x) ** 0.5, len(x)

    ours = welch(stat(a), stat(b))
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert ours.lo == pytest.approx(ci.low) and ours.hi == pytest.approx(ci.high)
    assert ours.df == pytest.approx(ref.df)
    assert ours.resolved == (ref.pvalue < 0.05)


def test_welch_without_a_spread_or_with_one_value_has_no_false_precision():
    assert welch((3.0, None, 1), (1.0, 0.5, 3)).lo is None  # one seed: no interval, never "resolved"
    assert not welch((3.0, None, 1), (1.0, 0.5, 3)).resolved
    same = welch((3.0, 0.0, 3), (1.0, 0.0, 3))
    assert (same.lo, same.hi, same.df) == (2.0, 2.0, 4.0)


def run(lr: float, seed: int, acc: float) -> StoredRun:
    summary = {"test": {"accuracy": acc / 100}}
    return StoredRun(Path(f"lr{lr}-s{seed}"), lr, seed, summary, {}, {}, {}, None)


def view(runs: dict[str, list[StoredRun]], chosen: dict[str, float]) -> CellView:
    cell = Cell(name="cp", spec="x.yaml", arms=[Arm(name="baseline"), Arm(name="untrained")],
                paper={"metric": "accuracy (%)", "values": {"baseline": [14.35, 0.01], "untrained": [42.56, 1.51]}})
    arms = {a.name: ArmResult(cell, a, {}, chosen[a.name], [r for r in runs[a.name] if r.lr == chosen[a.name]], [],
                              runs[a.name], 3) for a in cell.arms}
    return CellView(cell, arms, {}, "accuracy", True, (0, 1, 2), 3.0, False)


def test_matched_lr_delta_at_every_shared_lr_beside_best_vs_best():
    # the baseline is best at 1e-3, the guided arm at 1e-4: best-vs-best loses, at matched lrs it wins
    base = [run(1e-4, s, 20.0 + s) for s in range(3)] + [run(1e-3, s, 40.0 + s) for s in range(3)]
    guided = [run(1e-4, s, 30.0 + s) for s in range(3)] + [run(1e-3, s, 45.0 + s) for s in range(3)]
    guided.append(run(3e-3, 0, 50.0))  # an lr the baseline never ran: no matched Δ there
    v = view({"baseline": base, "untrained": guided}, {"baseline": 1e-3, "untrained": 1e-4})
    assert v.verdict("untrained").startswith("opposite direction: Δ -10.00")
    rows = v.matched("untrained")
    assert [(t, round(d.d, 6), na, nb) for t, d, na, nb in rows] == [("0.0001", 10.0, 3, 3), ("0.001", 5.0, 3, 3)]
    assert all(d.resolved for _, d, _, _ in rows)
    assert v.matched_text("untrained").startswith("0.0001: +10.00 [+")
    assert v.matched_text("baseline") == "—"
    rule = verdict_rule([v])
    assert "draws 1 verdicts, 1 of them resolved" in rule and "about 0.1 resolved verdicts are expected" in rule
