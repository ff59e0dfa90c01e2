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


def test_note_placeholders_are_filled_from_the_records():
    from pairgraph.study.prose import fill

    base = [run(1e-3, s, 40.0 + s) for s in range(3)]
    guided = [run(1e-3, s, 45.0 + 2 * s) for s in range(3)]
    v = view({"baseline": base, "untrained": guided}, {"baseline": 1e-3, "untrained": 1e-3})
    text = ("{{mean baseline}} vs {{mean cp/untrained 2}} on {{n untrained}} seeds at lr {{lr untrained}}: "
            "{{delta untrained}} ({{ci untrained}}); back: {{delta baseline-untrained}}; {{runs}} runs")
    assert fill(text, [v], "cell cp notes", v, {"runs": 6}) == (
        "41.0 vs 47.00 on 3 seeds at lr 0.001: +6.0 (95% CI [+1.8, +10.2]); back: -6.0; 6 runs")


@pytest.mark.parametrize(("text", "words"), [
    ("{{mean nope}}", "cell 'cp' has no arm 'nope'"),
    ("{{mean other/baseline}}", "no cell 'other'"),
    ("{{median baseline}}", "not a placeholder"),
    ("{{mean baseline x}}", "'x' is not a number of decimals"),
    ("{{guide untrained}}", "does not guide with a trained guide"),
])
def test_a_bad_placeholder_is_a_one_line_error_naming_the_note(text, words):
    from pairgraph.errors import PairgraphError
    from pairgraph.study.prose import fill

    v = view({"baseline": [run(1e-3, 0, 40.0)], "untrained": []}, {"baseline": 1e-3, "untrained": 1e-3})
    with pytest.raises(PairgraphError) as e:
        fill(text, [v], "cell cp notes", v, {})
    assert words in e.value.message and e.value.message.startswith("cell cp notes: {{")


def test_committed_notes_quote_no_standard_error_multiples_and_fill_cleanly():
    """Notes and the README status quote table numbers through placeholders, and no "k s.e." figure (with
    3–5 seeds a multiple of the s.e. overstates confidence; the tables print Welch intervals)."""
    import re

    from pairgraph.study import load_study
    from pairgraph.study.prose import PLACEHOLDER

    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "studies").glob("*.yaml")):
        study = load_study(path)
        for where, text in [("readme_status", study.readme_status)] + [(c.name, c.notes) for c in study.cells]:
            bare = PLACEHOLDER.sub("", text or "")
            assert not re.search(r"\d\s*s\.e\.", bare), f"{path.name} {where}: a 'k s.e.' figure"


def test_the_readme_status_block_is_rewritten_and_a_missing_block_is_a_one_line_error(tmp_path):
    from pairgraph.errors import PairgraphError
    from pairgraph.study.report import _fill_readme
    from pairgraph.study.schema import Study

    study = Study(name="s", lrs=[1e-3], seeds=[0, 1, 2], cells=[Cell(name="cp", spec="x.yaml", arms=[Arm(name="baseline")])])
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- status:begin -->\nold 12.3\n<!-- status:end -->\nkeep\n"
                      "<!-- results:begin -->\n<!-- results:end -->\ntail\n")
    _fill_readme(readme, study, tmp_path / "docs" / "results.md", ["| t |"], "1 of 1 arms complete", "new 45.6\n")
    text = readme.read_text()
    assert "<!-- status:begin -->\nnew 45.6\n<!-- status:end -->\nkeep\n" in text and "old" not in text
    assert text.endswith("| t |\n<!-- results:end -->\ntail\n")
    readme.write_text("<!-- results:begin -->\n<!-- results:end -->\n")
    with pytest.raises(PairgraphError) as e:
        _fill_readme(readme, study, tmp_path / "r.md", [], "", "status")
    assert "has no <!-- status:begin --> … <!-- status:end --> block" in e.value.message
