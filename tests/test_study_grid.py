"""``grid: true`` (every seed at every lr; the lr chosen on the mean over seeds) and ``when_unconverged``
(a cell run only if an earlier cell's baseline was still improving). Runs are faked: each job writes the
summary the test chooses, so nothing trains."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_study import tiny_spec, tiny_study, write

import pairgraph.study.execute as execute_mod
from pairgraph.errors import PairgraphError
from pairgraph.study import format_plan, load_study, plan_study, run_study
from pairgraph.study.plan import Job


def fake_runs(monkeypatch, best_val, best_at_end) -> list[str]:
    """Replace training: a job stores a summary with ``best_val(job)`` and its best evaluation at the last
    step when ``best_at_end(job)``; returns the titles of the jobs in the order they ran."""
    ran: list[str] = []

    def fake(job: Job) -> dict:
        ran.append(f"{job.cell}/{job.arm} {job.lr:g} s{job.seed} {job.phase}")
        out = Path(job.out)
        out.mkdir(parents=True)
        summary = {"steps": 6, "best_step": 6 if best_at_end(job) else 3, "best_val_loss": best_val(job),
                   "primary_metric": "accuracy", "test": {"accuracy": 0.5}}
        (out / "summary.json").write_text(json.dumps(summary))
        return {"status": "done", "summary": summary}

    monkeypatch.setattr(execute_mod, "execute_job", fake)
    return ran


def scored_run(job: Job) -> dict:
    """A run that stores test accuracy 30 % (baseline) or 60 % (any other arm), + 1 point per seed, its best
    evaluation at step 3, a falling training loss, and a spec naming its arm and seed (for the curves)."""
    out = Path(job.out)
    out.mkdir(parents=True)
    a = (0.30 if job.arm == "baseline" else 0.60) + 0.01 * job.seed
    summary = {"steps": 6, "best_step": 3, "best_val_loss": 1.0 + job.lr, "primary_metric": "accuracy",
               "val": {"accuracy": a}, "test": {"accuracy": a}}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "spec.yaml").write_text(f"name: fake\nguide: {{weights: {job.arm}}}\ntrain: {{seed: {job.seed}, lr: {job.lr}}}\n")
    rows = [{"step": s, "task_loss": 2.0 - 0.1 * s} for s in range(1, 7)]
    (out / "metrics.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return {"status": "done", "summary": summary}


@pytest.fixture
def grid_study(tmp_path, monkeypatch):
    write(tmp_path / "tiny.yaml", tiny_spec())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "cache"))
    data = tiny_study(grid=True)
    data["cells"].append({**data["cells"][0], "name": "cp_long", "when_unconverged": "cp"})
    return write(tmp_path / "s.yaml", data)


def seed0_prefers_1e3_mean_prefers_3e3(job: Job) -> float:
    if job.lr == 1e-3:
        return 1.0 if job.seed == 0 else 3.0  # mean 2.0
    return 1.5  # mean 1.5: better on the mean, worse on seed 0


def test_grid_runs_every_seed_at_every_lr_point_by_point_and_chooses_on_the_mean(grid_study, monkeypatch):
    ran = fake_runs(monkeypatch, seed0_prefers_1e3_mean_prefers_3e3, lambda j: False)
    run_study(grid_study, echo=lambda m: None)
    assert ran == [f"cp/{arm} {lr} s{seed} sweep" for lr in ("0.001", "0.003") for seed in (0, 1)
                   for arm in ("baseline", "untrained")]  # whole (lr, seed) points first; cp_long not needed
    plans = plan_study(grid_study)
    assert {p.arm.name: p.chosen() for p in plans if p.cell.name == "cp"} == {"baseline": 3e-3, "untrained": 3e-3}
    text = format_plan(plans)
    assert "0.001:2 0.003:2" in text and "seeds [0, 1] at every lr (grid)" in text
    assert "cell cp_long runs only if cp's baseline had not reached its best validation loss" in text
    assert text.rstrip().endswith("not needed") and "runs: 8 in all, 8 done" in text


def test_a_gated_cell_runs_when_the_baseline_was_still_improving_in_most_seeds(grid_study, monkeypatch):
    # the baseline's best evaluation is its last on seed 1 only at the chosen lr: 1 of 2 is not most
    ran = fake_runs(monkeypatch, lambda j: 1.0, lambda j: j.seed == 1)
    run_study(grid_study, echo=lambda m: None)
    assert not any(r.startswith("cp_long") for r in ran)
    for d in Path("results/tiny_study/cp").glob("*/lr*-s0"):  # now most seeds of every arm ended improving
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "best_step": 6}))
    assert "undecided" not in format_plan(plan_study(grid_study))
    run_study(grid_study, echo=lambda m: None)
    assert sorted(r for r in ran if r.startswith("cp_long")) == sorted(
        f"cp_long/{arm} {lr} s{seed} sweep" for lr in ("0.001", "0.003") for seed in (0, 1)
        for arm in ("baseline", "untrained"))


def test_the_gate_is_undecided_until_the_baselines_seeds_are_done(grid_study, monkeypatch):
    fake_runs(monkeypatch, lambda j: 1.0, lambda j: True)
    run_study(grid_study, only=["cp/untrained"], echo=lambda m: None)
    text = format_plan(plan_study(grid_study))
    assert text.rstrip().endswith("undecided until its baseline seeds are done")


@pytest.mark.parametrize("change, words", [
    ({"grid": True, "close_seeds": [3]}, "remove close_seeds"),
    ({"cells": "gate_later"}, "when_unconverged 'cp2' is not an earlier cell"),
    ({"cells": "gate_unknown"}, "when_unconverged 'nope' is not an earlier cell"),
])
def test_grid_and_gate_errors_are_one_line(tmp_path, change, words):
    data = tiny_study()
    gate = {"gate_later": "cp2", "gate_unknown": "nope"}.get(change.get("cells", ""))
    if gate:
        data["cells"] = [{**data["cells"][0], "when_unconverged": gate}, {**data["cells"][0], "name": "cp2"}]
    else:
        data.update(change)
    with pytest.raises(PairgraphError) as e:
        load_study(write(tmp_path / "s.yaml", data))
    assert words in e.value.message and "\n" not in e.value.message


def _grid_text(grid_study: Path, change, only=None) -> tuple[str, object, list]:
    """Apply ``change`` to the study file, run it (faked), and return its grid section's text, the study and
    its cell views."""
    from pairgraph.study.grid import grid_section
    from pairgraph.study.results import cell_views, collect

    data = yaml.safe_load(grid_study.read_text())
    change(data)
    write(grid_study, data)
    run_study(grid_study, only=only, echo=lambda m: None)
    study = load_study(grid_study)
    views = cell_views(study, collect(study))
    return "\n".join(grid_section(study, views, Path("figs"), lambda p: p.as_posix())), study, views


def test_a_grid_reports_delta_against_lr_the_baselines_trainability_and_the_rules_reading(grid_study, monkeypatch):
    monkeypatch.setattr(execute_mod, "execute_job", scored_run)  # baseline 30 %, under the rule's 50 %; guided 60 %
    text, _, _ = _grid_text(grid_study, lambda d: d.update(untrainable_below=50))
    assert "## Δ against lr (every seed at every lr)" in text
    assert "| cp | 0.001 | +30.00 [+" in text and "| 2/2 | guide better |" in text
    assert "![Δ against lr](figs/tiny_study-delta-vs-lr.png)" in text and Path("figs/tiny_study-delta-vs-lr.png").exists()
    # the baseline's trainability: test 30.5, training CE 1.65 (steps 1–6), best validation loss 1.003
    assert "| cp | 0.001 | 2 | 30.50 ± 0.50 | 30.50 ± 0.50 | 1.65 | 1.00 | -0.65 |" in text
    assert "untrainable by the rule, whose bar is 50 %" in text
    assert "**Reading (the study file's rule):** rescue at CPU scale" in text


def test_a_grid_whose_cells_have_different_arms_and_no_rule_reports_each_cells_own(grid_study, monkeypatch):
    # paper_cpu_next: a cell without the first cell's guided arm, and no untrainable_below (no reading)
    fake_runs(monkeypatch, lambda j: 1.0 + j.lr, lambda j: False)

    def trained_cell(d):
        d["cells"][1] = {**d["cells"][0], "name": "cp_trained", "arms": ["baseline", "trained"]}

    text, _, _ = _grid_text(grid_study, trained_cell)
    assert "Δ = arm − baseline" in text
    assert "| cp: untrained | 0.001 |" in text and "| cp_trained: trained | 0.001 |" in text
    assert "Reading" not in text


def test_a_gated_cell_due_but_not_run_is_named_and_its_gate_cell_read_in_its_place(grid_study, monkeypatch):
    from pairgraph.study.grid import reading

    fake_runs(monkeypatch, lambda j: 1.0 + j.lr, lambda j: True)  # the baseline still improving: cp_long is due
    text, study, views = _grid_text(grid_study, lambda d: d.update(untrainable_below=50), only=["cp"])
    assert "- cp_long: due by the rule (cp's baseline was still improving at its last evaluation) but not run yet; " \
           "cp is read in its place." in text
    assert reading(study, views).startswith("no untrainable depth (baseline below 50 %)")  # fakes score 50 %
    text, _, _ = _grid_text(grid_study, lambda d: None)  # now it runs: it is read, and no longer named as due
    assert "- cp_long: baseline 50.0 % at its best lr" in text and "due by the rule" not in text
    assert "- cp: baseline" not in text  # read in cp_long's place


def test_a_grid_arm_with_a_seed_left_is_reported_as_such_not_as_diverged(grid_study, monkeypatch):
    from pairgraph.study import collect, load_study
    from pairgraph.study.results import coverage

    fake_runs(monkeypatch, lambda j: 1.0 + j.lr, lambda j: False)
    run_study(grid_study, echo=lambda m: None)
    shutil.rmtree(Path("results/tiny_study/cp/untrained/lr0.003-s1"))  # the grid's last run of that arm, not run
    study = load_study(grid_study)
    text = coverage(study, collect(study))
    assert "Not complete: cp/untrained (grid 3/4 runs)." in text and "diverged)" not in text
