"""The report beside each verdict: a trained guide's own accuracy (from the guide/summary.json its run left;
n/a where none was recorded), and top-5 beside top-1 on image cells without touching the top-1 verdict."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pairgraph.study.plan import Arm
from pairgraph.study.prose import fill
from pairgraph.study.results import ArmResult, CellView, StoredRun
from pairgraph.study.schema import Cell
from pairgraph.study.tables import cell_section, headline_table, image_table

ARMS = ("baseline", "untrained", "trained", "pretrained")


def run(root: Path, arm: str, seed: int, top1: float, top5: float | None, guide: tuple[float, float] | None = None):
    d = root / arm / f"lr0.001-s{seed}"
    d.mkdir(parents=True)
    weights = {"baseline": "untrained", "untrained": "untrained", "trained": "train", "pretrained": "pretrained"}[arm]
    test = {"top1": top1 / 100} | ({"top5": top5 / 100} if top5 is not None else {})
    summary = {"mode": "baseline" if arm == "baseline" else "guidance", "guide_weights": weights, "test": test}
    if guide is not None:  # the guide's own training run, as the study stores it beside the guided run
        (d / "guide").mkdir()
        (d / "guide" / "summary.json").write_text(json.dumps({"test": {"top1": guide[0] / 100,
                                                                        "top5": guide[1] / 100}}))
    return StoredRun(d, 1e-3, seed, summary, {}, {}, {}, None)


def view(tmp_path: Path, top5: bool = True) -> CellView:
    cell = Cell(name="img", spec="x.yaml", arms=[Arm(name=a, overrides=["guide.weights=pretrained"])
                                                 if a == "pretrained" else Arm(name=a) for a in ARMS],
                paper={"metric": "top-5 (%)", "values": {"guide": 89.24, "baseline": [34.09, 1.21],
                                                         "trained": [43.01, 0.92], "untrained": [39.47, 0.31],
                                                         "pretrained": [43.01, 0.92]}})
    t5 = (lambda x: x) if top5 else (lambda x: None)
    runs = {"baseline": [run(tmp_path, "baseline", s, 40.0 + s, t5(80.0 + s)) for s in range(3)],
            "untrained": [run(tmp_path, "untrained", s, 35.0 + s, t5(85.0 + 2 * s)) for s in range(3)],
            "trained": [run(tmp_path, "trained", s, 45.0 + s, t5(90.0 + s), (50.0 + s, 95.0)) for s in range(3)],
            "pretrained": [run(tmp_path, "pretrained", s, 46.0 + s, t5(91.0 + s)) for s in range(3)]}
    arms = {a.name: ArmResult(cell, a, {}, 1e-3, runs[a.name], [], runs[a.name], 3) for a in cell.arms}
    return CellView(cell, arms, {"task": {"kind": "image_classification"}}, "top1", True, (0, 1, 2), 3.0, False)


def test_a_trained_arms_verdict_carries_its_guides_own_accuracy_and_n_a_where_not_recorded(tmp_path):
    v = view(tmp_path)
    assert v.agreement("trained").endswith(" — its guide alone: 51.00 ± 0.58 (n=3)")
    assert v.agreement("pretrained").endswith(" — its guide alone: n/a (not recorded)")
    assert "guide alone" not in v.agreement("untrained") and "guide alone" not in v.agreement("baseline")
    headline = "\n".join(headline_table(None, [v]))  # type: ignore[arg-type]
    assert headline.count("its guide alone") == 2 and "(lr 0.001 vs 0.001) — its guide alone: 51.00" in headline
    section = "\n".join(cell_section(SimpleNamespace(sweep_seed=0), v, None))  # type: ignore[arg-type]
    assert "The trained guides alone (one per seed of `trained`): test top1 (%) 51.00 ± 0.58 (n=3)" in section
    assert "guide − unguided target: Δ +10.00, 95% CI [" in section


def test_top5_sits_beside_top1_and_the_verdict_stays_on_top1(tmp_path):
    v = view(tmp_path)
    before = v.verdict("untrained")
    assert v.second_metric == "top5"
    assert before.startswith("opposite direction: Δ -5.00")  # top-1: 36 vs 41; the paper's Δ is positive
    assert v.second_text("untrained").startswith("87.00 ± 1.15; Δ +6.00, 95% CI [")  # top-5 points the other way
    assert v.second_text("baseline") == "81.00 ± 0.58"
    assert v.verdict("untrained") == before
    rows = [r for r in headline_table(None, [v]) if "| untrained |" in r]  # type: ignore[arg-type]
    assert rows and "| opposite direction: Δ -5.00" in rows[0] and "| top5 (%): 87.00 ± 1.15; Δ +6.00, 95% CI" in rows[0]
    table2 = "\n".join(image_table([v]))
    assert "top5 (%): 91.00 ± 0.58" in table2 and "top5 (%): 95.00 ± 0.00" in table2  # trained arm; its guides


def test_no_top5_in_the_records_prints_a_dash_not_a_number(tmp_path):
    v = view(tmp_path, top5=False)
    assert v.second_metric is None and v.second_text("untrained") == "—"
    assert "ours, top-5 beside top-1" in "\n".join(image_table([v]))


@pytest.mark.parametrize(("text", "out"), [("{{guide trained}}", "51.0"), ("{{guideci trained}}", "Δ +10.0, 95% CI ["),
                                           ("{{guide pretrained}}", "—")])
def test_guide_placeholders_quote_the_guides_and_their_interval(tmp_path, text, out):
    v = view(tmp_path)
    assert fill(text, [v], "cell img notes", v).startswith(out)
