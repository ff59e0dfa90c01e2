"""pairgraph study / report: lr sweep then seeds, results layout, resume, deterministic report, study-file errors.

One tiny copy-paste study (2 lrs × 2 seeds × arms baseline + untrained = 6 runs of 6 steps) is trained
once per module and shared by the tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tiny_specs import copy_paste_pair
from typer.testing import CliRunner

import pairgraph.config
import pairgraph.study.execute as execute_mod
from pairgraph.cli.main import app
from pairgraph.errors import Interrupted, PairgraphError
from pairgraph.study import format_plan, load_study, plan_study, report, run_study
from pairgraph.training import Trainer
from pairgraph.training.runs import lock_run

LRS = [1.0e-3, 3.0e-3]


def tiny_spec() -> dict:
    return copy_paste_pair({"batch_size": 16, "steps": 6, "eval_every": 3, "lr": 1e-3, "seed": 0, "device": "cpu"},
                           size=200)


def tiny_study(name: str = "tiny_study", arms: list | None = None, **extra) -> dict:
    return {
        "name": name, "lrs": LRS, "sweep_seed": 0, "seeds": [0, 1], "min_seeds": 2,
        "runs_dir": "runs/study",
        "cells": [{
            "name": "cp", "spec": "tiny.yaml", "guide_label": "Transformer", "target_label": "RNN",
            "paper": {"metric": "copy-paste accuracy (%)", "source": "Table 3",
                      "values": {"baseline": [14.35, 0.01], "untrained": [42.56, 1.51]}},
            "arms": arms if arms is not None else ["baseline", "untrained"],
        }],
        **extra,
    }


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The tiny study, trained once: (folder, study file, outcome)."""
    root = tmp_path_factory.mktemp("study")
    write(root / "tiny.yaml", tiny_spec())
    sfile = write(root / "tiny_study.yaml", tiny_study())
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("PAIRGRAPH_CACHE", str(root / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = run_study(sfile, echo=lambda m: None)
    finally:
        torch.set_num_threads(before)
        mp.undo()
    return root, sfile, outcome


@pytest.fixture
def in_study(done, monkeypatch):
    root, sfile, _ = done
    monkeypatch.chdir(root)
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(root / "cache"))
    return root, sfile


def count_training(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = Trainer.run

    def counted(self):
        calls.append(str(self.run_dir))
        return original(self)

    monkeypatch.setattr(Trainer, "run", counted)
    return calls


def test_sweep_then_seeds_picks_lowest_val_loss_and_lays_out_results(done):
    root, _, outcome = done
    assert outcome.trained == 6 and not outcome.failed and outcome.diverged == 0
    for arm in ("baseline", "untrained"):
        res = root / "results" / "tiny_study" / "cp" / arm
        val = {lr: json.loads((res / f"lr{lr:g}-s0" / "summary.json").read_text())["best_val_loss"] for lr in LRS}
        best = min(LRS, key=lambda lr: (val[lr], lr))
        assert outcome.chosen[f"cp/{arm}"] == best
        other = next(lr for lr in LRS if lr != best)
        assert sorted(p.name for p in res.iterdir()) == sorted([f"lr{1e-3:g}-s0", f"lr{3e-3:g}-s0", f"lr{best:g}-s1"])
        assert not (res / f"lr{other:g}-s1").exists()
        for run in res.iterdir():
            names = {p.name for p in run.iterdir()}
            assert {"summary.json", "metrics.jsonl.gz", "spec.yaml", "env.json", "study.json"} <= names
            assert not names & {"checkpoints", "tb", "build"}  # never checkpoints in the results
            summary = json.loads((run / "summary.json").read_text())
            spec = yaml.safe_load((run / "spec.yaml").read_text())
            assert spec["guidance"]["mode"] == ("baseline" if arm == "baseline" else "guidance")
            assert f"lr{summary['lr']:g}-s{summary['seed']}" == run.name
        # training happened under runs/, with its checkpoints
        assert list((root / "runs" / "study" / "tiny_study" / "cp" / arm).glob("*/*/checkpoints/best.safetensors"))


def test_second_invocation_trains_nothing_and_crashed_runs_are_retried(in_study, monkeypatch):
    root, sfile = in_study
    calls = count_training(monkeypatch)
    again = run_study(sfile, echo=lambda m: None)
    assert calls == [] and again.trained == 0 and not again.failed
    assert "0 left" in format_plan(plan_study(sfile))
    # a run that finished but was never copied into the results: picked up without training
    res = root / "results" / "tiny_study" / "cp" / "baseline"
    seed_run = next(p for p in res.iterdir() if p.name.endswith("-s1"))
    shutil.rmtree(seed_run)
    assert "1 left" in format_plan(plan_study(sfile))
    again = run_study(sfile, echo=lambda m: None)
    assert calls == [] and again.trained == 1 and (seed_run / "summary.json").exists()
    # a run that crashed before its first checkpoint: trained again from scratch
    shutil.rmtree(seed_run)
    run_dir = root / "runs" / "study" / "tiny_study" / "cp" / "baseline" / "tiny" / seed_run.name
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "summary.json").unlink()
    again = run_study(sfile, echo=lambda m: None)
    assert len(calls) == 1 and again.trained == 1 and (seed_run / "summary.json").exists()


def test_a_run_another_process_is_training_is_left_to_it_not_deleted(in_study, monkeypatch):
    # the same study started twice: the second finds a run folder with no checkpoint yet, held by the first
    root, sfile = in_study
    res = root / "results" / "tiny_study" / "cp" / "baseline"
    seed_run = next(p for p in res.iterdir() if p.name.endswith("-s1"))
    shutil.rmtree(seed_run)
    run_dir = root / "runs" / "study" / "tiny_study" / "cp" / "baseline" / "tiny" / seed_run.name
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "summary.json").unlink()
    lock = lock_run(run_dir)
    calls, lines = count_training(monkeypatch), []
    busy = run_study(sfile, echo=lines.append)
    assert busy.busy == 1 and busy.trained == 0 and not busy.failed and calls == []
    assert (run_dir / "metrics.jsonl").exists()  # the live run's folder is untouched
    assert any("skipped, another process is training it" in ln for ln in lines)
    lock.release()
    again = run_study(sfile, echo=lambda m: None)  # once its holder has gone, the run is trained again
    assert again.trained == 1 and again.busy == 0 and (seed_run / "summary.json").exists()


def test_a_stopped_run_stops_the_study_instead_of_counting_as_failed(in_study, monkeypatch):
    # SIGTERM or Ctrl-C reach the run training in-process: it keeps its checkpoint and the study stops there
    root, sfile = in_study
    for arm in ("baseline", "untrained"):  # two runs left to do
        res = root / "results" / "tiny_study" / "cp" / arm
        shutil.rmtree(next(p for p in res.iterdir() if p.name.endswith("-s1")))
    started: list[str] = []

    def stopped(job):
        started.append(job.title())
        raise Interrupted("terminated (SIGTERM) at step 2; the last good checkpoint is kept")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(Interrupted, match="terminated"):
        mp.setattr(execute_mod, "train_job", stopped)
        run_study(sfile, echo=lambda m: None)
    assert len(started) == 1  # not carried on to the next job
    assert run_study(sfile, echo=lambda m: None).trained == 2  # restore the shared study for later tests


def test_report_is_byte_identical_with_mean_and_standard_error(in_study):
    root, sfile = in_study
    out = report(sfile, root / "docs" / "results.md")
    first = out.read_bytes()
    report(sfile, root / "docs" / "results.md")
    assert out.read_bytes() == first
    text = first.decode()
    for arm in ("baseline", "untrained"):
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {arm} |"))
        assert " ± " in row and "/2" in row  # mean ± s.e. over 2 seeds
    assert "42.56 ± 1.51" in text  # the paper's number
    untrained = next(ln for ln in text.splitlines() if ln.startswith("| untrained |"))
    assert any(w in untrained for w in ("same direction: Δ", "opposite direction: Δ", "tie: Δ",
                                        "not resolved at CPU scale: Δ", "the paper's Δ not resolved: Δ"))
    assert "This report draws 1 verdicts" in text and "Welch t 95% interval" in text
    assert "(sweep's edge)" in untrained  # 2 lrs: the chosen one is at an end of the sweep
    assert "Untrained Transformer → RNN" in text  # the Table 3 shaped table
    # the Machines table names where the runs ran (their env.json), counting all 6 finished runs there
    env = json.loads(next((root / "results" / "tiny_study" / "cp" / "baseline").glob("*/env.json")).read_text())
    machine = next(ln for ln in text.splitlines() if ln.startswith(f"| {env['processor']} | "))
    assert machine.startswith(f"| {env['processor']} | {env['cpu_count']} | {env['threads']} | {env['torch']} | "
                              f"{env['device']} |") and machine.endswith("| 6 |")
    assert (root / "docs" / "figures" / "tiny_study" / "cp-curves.png").exists()
    assert "Guide disconnected after 150 steps" in text and "no arm with guidance.until_step" in text


def test_report_fills_the_readme_headline_block_and_keeps_the_rest(in_study):
    root, sfile = in_study
    readme = root / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- results:begin -->\nstale\n<!-- results:end -->\nafter\n")
    report(sfile, root / "docs" / "results.md", readme=readme)
    first = readme.read_text()
    report(sfile, root / "docs" / "results.md", readme=readme)
    assert readme.read_text() == first and "stale" not in first
    assert first.startswith("# x\n\nbefore\n<!-- results:begin -->") and first.endswith("<!-- results:end -->\nafter\n")
    block = first.split("<!-- results:begin -->")[1]
    untrained = next(ln for ln in block.splitlines() if "| untrained |" in ln)
    assert "2/2" in untrained and " ± " in untrained and "42.56 ± 1.51" in untrained
    assert "[docs/results.md](docs/results.md)" in block
    assert "## Headline" in (root / "docs" / "results.md").read_text()
    readme.write_text("no markers\n")
    with pytest.raises(PairgraphError, match="results:begin"):
        report(sfile, root / "docs" / "results.md", readme=readme)


def test_error_consistency_from_stored_predictions(in_study, tmp_path):
    root, sfile = in_study
    # the trainer writes test_predictions.json for classification tasks; fake them in a copy of the results
    data = yaml.safe_load(sfile.read_text())
    data["results_dir"] = str(tmp_path / "res")
    shutil.copytree(root / "results" / "tiny_study", tmp_path / "res")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (50,))
    for arm in ("baseline", "untrained"):
        run = next((tmp_path / "res" / "cp" / arm).glob("*-s0"))
        pred = torch.where(torch.rand(50, generator=g) < 0.7, labels, (labels + 1) % 3)
        (run / "test_predictions.json").write_text(json.dumps({"pred": pred.tolist(), "label": labels.tolist()}))
    out = report(write(root / "ec_study.yaml", data), tmp_path / "r.md", tmp_path / "figs")
    text = out.read_text()
    assert "Error consistency κ between arms" in text and "| κ | baseline | untrained |" in text
    assert (tmp_path / "figs" / "cp-error-consistency.png").exists()


def test_diverged_lr_loses_the_sweep(in_study, monkeypatch):
    root, _ = in_study
    sfile = write(root / "div.yaml", tiny_study("div_study", arms=["baseline"]))
    original = execute_mod.train_job

    def diverge_at_high_lr(job):
        if job.lr == 3e-3:
            raise PairgraphError("loss became nan at step 2 (task nan, guidance 0); no checkpoint was written yet",
                                 "lower train.lr")
        return original(job)

    monkeypatch.setattr(execute_mod, "train_job", diverge_at_high_lr)
    outcome = run_study(sfile, echo=lambda m: None)
    assert outcome.diverged == 1 and outcome.trained == 2 and outcome.chosen["cp/baseline"] == 1e-3
    assert (root / "results" / "div_study" / "cp" / "baseline" / f"lr{3e-3:g}-s0" / "diverged.json").exists()
    again = run_study(sfile, echo=lambda m: None)  # a divergence is an outcome, not retried
    assert again.trained == 0 and again.diverged == 0
    text = report(sfile, root / "div.md").read_text()
    assert "diverged" in text


def test_lr_from_arm_takes_the_sources_chosen_lr_and_runs_every_seed(in_study, monkeypatch):
    root, _ = in_study
    data = tiny_study("from_study", arms=["baseline", {"name": "noise", "lr_from": "baseline"}])
    sfile = write(root / "from.yaml", data)
    assert "(lr of baseline)" in format_plan(plan_study(sfile))
    calls = count_training(monkeypatch)
    outcome = run_study(sfile, echo=lambda m: None)
    chosen = outcome.chosen["cp/baseline"]
    res = root / "results" / "from_study" / "cp" / "noise"
    # no sweep of its own: every seed at the source's chosen lr, started only after the source's sweep
    assert sorted(p.name for p in res.iterdir()) == [f"lr{chosen:g}-s0", f"lr{chosen:g}-s1"]
    assert outcome.trained == 5 and len(calls) == 5
    first_noise = next(i for i, c in enumerate(calls) if "/noise/" in c)
    assert sum("/baseline/" in c for c in calls[:first_noise]) >= len(LRS)
    spec = yaml.safe_load((res / f"lr{chosen:g}-s1" / "spec.yaml").read_text())
    assert spec["guidance"]["guide_input"] == "noise" and spec["train"]["lr"] == chosen
    text = report(sfile, root / "from.md").read_text()
    assert f"{chosen:g} (from baseline)" in text


@pytest.mark.parametrize("arms, words", [
    (["baseline", {"name": "noise", "lr_from": "basline"}], "not another arm"),
    (["baseline", {"name": "noise", "lr_from": "baseline", "lr": 1e-3}], "both lr and lr_from"),
    ([{"name": "baseline", "lr": 1e-3}, {"name": "noise", "lr_from": "baseline"}], "does not sweep"),
])
def test_lr_from_errors(tmp_path, arms, words):
    with pytest.raises(PairgraphError, match=words):
        load_study(write(tmp_path / "s.yaml", tiny_study(arms=arms)))


def test_cli_dry_run_and_report(in_study):
    root, sfile = in_study
    res = CliRunner().invoke(app, ["study", str(sfile), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "cp/baseline" in res.output and "0 left" in res.output
    res = CliRunner().invoke(app, ["study", str(sfile), "--dry-run", "--only", "cp/untrained"])
    assert "cp/untrained" in res.output and "cp/baseline" not in res.output
    res = CliRunner().invoke(app, ["report", str(sfile), "-o", str(root / "cli.md")])
    assert res.exit_code == 0, res.output
    assert (root / "cli.md").read_bytes() == report(sfile, root / "cli2.md").read_bytes()


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(seeds=[0]), "at least 2"),
    (lambda d: d.pop("min_seeds"), "at least 3"),
    (lambda d: d.update(seeds=[0, 0, 1]), "repeats"),
    (lambda d: d.update(lrz=[1]), "did you mean 'lrs'"),
    (lambda d: d.pop("lrs"), "lrs: required field missing"),
    (lambda d: d.update(lrs=[-1.0]), "> 0"),
    (lambda d: d["cells"][0].update(arms=["baseline", "untrianed"]), "did you mean 'untrained'"),
    (lambda d: d["cells"][0].update(arms=["baseline", "baseline"]), "twice"),
    (lambda d: d["cells"][0]["paper"]["values"].update(trainedd=1.0), "trainedd"),
    (lambda d: d["cells"][0].update(overrides=["train.steps"]), "key.path=value"),
    (lambda d: d["cells"][0].update(name="a b"), "cells[a b].name"),
])
def test_study_file_errors_are_one_line(tmp_path, change, words):
    data = tiny_study()
    change(data)
    path = write(tmp_path / "s.yaml", data)
    with pytest.raises(PairgraphError) as e:
        load_study(path)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_key_written_twice_in_a_study_file_is_a_one_line_error_naming_its_line(tmp_path):
    text = yaml.safe_dump(tiny_study(), sort_keys=False)
    lines = text.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("spec: tiny.yaml"))
    lines.insert(at + 1, lines[at].replace("tiny.yaml", "other.yaml"))  # the cell's spec, twice
    path = write(tmp_path / "dup.yaml", "\n".join(lines) + "\n")
    with pytest.raises(PairgraphError) as e:
        load_study(path)
    assert f"dup.yaml:{at + 2}: key 'spec' appears twice (first on line {at + 1})" in str(e.value)
    assert "\n" not in str(e.value)
    res = CliRunner().invoke(app, ["study", str(path), "--dry-run"])
    assert isinstance(res.exception, PairgraphError) and res.exception.exit_code == 2


def test_study_errors_outside_the_schema(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PairgraphError, match="not found"):
        load_study(tmp_path / "nope.yaml")
    with pytest.raises(PairgraphError, match="YAML syntax error"):
        load_study(write(tmp_path / "bad.yaml", "name: [x\n"))
    with pytest.raises(PairgraphError, match="a study file is a mapping"):
        load_study(write(tmp_path / "list.yaml", "- a\n"))
    with pytest.raises(PairgraphError, match="spec file 'tiny.yaml' not found"):
        plan_study(write(tmp_path / "s.yaml", tiny_study()))
    write(tmp_path / "tiny.yaml", tiny_spec())
    data = tiny_study(arms=["baseline", {"name": "typo", "overrides": ["guidance.mdoe=x"]}])
    with pytest.raises(PairgraphError, match="cell 'cp', arm 'typo'") as e:
        plan_study(write(tmp_path / "s.yaml", data))
    assert "mode" in str(e.value)
    with pytest.raises(PairgraphError, match="no cell 'zz'"):
        plan_study(write(tmp_path / "s.yaml", tiny_study()), only=["zz"])
    with pytest.raises(PairgraphError, match="no arm 'trained'"):
        plan_study(tmp_path / "s.yaml", only=["cp/trained"])
    res = CliRunner().invoke(app, ["study", str(tmp_path / "nope.yaml"), "--dry-run"])
    assert res.exit_code != 0


def test_results_of_another_spec_are_refused(in_study, tmp_path):
    root, sfile = in_study
    data = yaml.safe_load(sfile.read_text())
    data["overrides"] = ["train.steps=7"]
    with pytest.raises(PairgraphError, match="different spec") as e:
        plan_study(write(root / "changed.yaml", data))
    assert "train.steps" in str(e.value)


def test_dry_run_counts_the_guides_an_lr_from_arm_will_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "cache"))
    write(tmp_path / "tiny.yaml", tiny_spec())
    arms = ["untrained", {"name": "trained_late", "lr_from": "untrained",
                          "overrides": ["guide.weights=train", "guide.train.lr=1.0e-3"]}]
    sfile = write(tmp_path / "s.yaml", tiny_study(arms=arms))
    # nothing has run: the source's sweep is not done, yet the trained guides (one per seed) are counted
    assert "plus up to 2 guide trainings" in format_plan(plan_study(sfile))


def test_an_arm_without_a_paper_number_is_compared_with_the_arm_it_varies(tmp_path, monkeypatch):
    from pairgraph.study import CellView

    write(tmp_path / "tiny.yaml", tiny_spec())
    monkeypatch.chdir(tmp_path)
    study = load_study(write(tmp_path / "s.yaml", tiny_study(arms=["baseline", "untrained",
                                                                     {"name": "depth", "lr_from": "untrained"}])))
    view = CellView(study.cells[0], {}, {}, "accuracy", True)
    stats = {"baseline": (14.0, 1.0, 2), "untrained": (40.0, 3.0, 2), "depth": (36.0, 4.0, 2)}
    monkeypatch.setattr(CellView, "stat", lambda self, key, seeds=None: stats.get(key))
    assert view.agreement("depth") == "n/a (no paper number); vs untrained: Δ -4.00, 95% CI [-27.21, +19.21] (Welch df 1.9)"
    assert view.agreement("untrained").startswith("not resolved at CPU scale: Δ +26.00")  # 2 seeds: Welch df 1.2
    stats["untrained"] = (40.0, 3.0, 5)
    assert view.agreement("untrained").startswith("same direction: Δ +26.00")
    stats["untrained"] = (15.5, 0.5, 2)  # Δ 1.5 ± 1.1: no direction either way
    assert view.agreement("untrained") == ("not resolved at CPU scale: Δ +1.50, 95% CI [-5.42, +8.42] (Welch df 1.5) "
                                           "vs paper Δ +28.21, 95% CI [+24.02, +32.40] (Welch df 4.0)")
    # 2.5 s.e. on 3 seeds a side (the old normal-approximation rule called that a direction): Welch df 2.9
    stats.update(baseline=(14.0, 1.0, 3), untrained=(16.8, 0.5, 3))
    assert view.agreement("untrained").startswith("not resolved at CPU scale: Δ +2.80, 95% CI [-0.""")


def test_a_paper_difference_inside_its_own_error_bars_is_not_called_a_direction(tmp_path, monkeypatch):
    from pairgraph.study import CellView

    write(tmp_path / "tiny.yaml", tiny_spec())
    monkeypatch.chdir(tmp_path)
    data = tiny_study(arms=["baseline", "untrained", "trained"])
    # paper: untrained −1.85 ± 2.96 (0.6 s.e., the Deep ConvNet's); trained has no s.e., so its sign counts
    data["cells"][0]["paper"]["values"] = {"baseline": [70.02, 1.52], "untrained": [68.17, 2.54], "trained": 78.91}
    study = load_study(write(tmp_path / "s.yaml", data))
    view = CellView(study.cells[0], {}, {}, "accuracy", True)
    stats = {"baseline": (33.3, 0.5, 3), "untrained": (28.2, 0.09, 3), "trained": (27.4, 0.4, 3)}
    monkeypatch.setattr(CellView, "stat", lambda self, key, seeds=None: stats.get(key))
    assert view.agreement("untrained") == ("same sign, the paper's Δ not resolved: Δ -5.10, 95% CI [-7.16, -3.04] "
                                           "(Welch df 2.1) vs paper Δ -1.85, 95% CI [-8.95, +5.25] (Welch df 6.5)")
    assert view.agreement("trained") == ("opposite direction: Δ -5.90, 95% CI [-7.71, -4.09] (Welch df 3.8) vs paper "
                                         "Δ +8.89 (no interval: the paper gives no s.e.)")


def test_cell_notes_are_printed_under_the_cells_table(in_study):
    root, sfile = in_study
    data = yaml.safe_load(sfile.read_text())
    data["cells"][0]["notes"] = "The guide\n  helps here;\n  see `untrained`."
    noted = write(root / "noted_study.yaml", data)
    text = report(noted, root / "docs" / "noted.md").read_text()
    section = text.split("### cp")[1] if "### cp" in text else text.split("### ")[-1]
    table_end = section.index("| untrained |")
    assert "**Notes.** The guide helps here; see `untrained`." in section[table_end:]
    assert "**Notes.**" not in report(sfile, root / "docs" / "plain.md").read_text()


def test_jobs_follow_the_study_files_order_so_an_earlier_cell_finishes_first(tmp_path, monkeypatch):
    write(tmp_path / "tiny.yaml", tiny_spec())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "cache"))
    data = tiny_study(arms=["baseline"])
    data["cells"].append({**data["cells"][0], "name": "cp2"})
    sfile = write(tmp_path / "s.yaml", data)
    started: list[str] = []
    run_study(sfile, echo=lambda m: started.append(m.removeprefix("start ")) if m.startswith("start ") else None)
    cells = [s.split("/")[0] for s in started]
    assert cells == ["cp"] * 3 + ["cp2"] * 3  # cp's seed run before cp2's sweep
    assert "(seeds)" in started[2] and "(sweep)" in started[3]


def in_threads(monkeypatch, fake_execute) -> None:
    """run_parallel's workers as threads of this process, each job run by ``fake_execute``."""
    import concurrent.futures

    class Threads(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, max_workers, mp_context=None, initializer=None, initargs=()):
            super().__init__(max_workers)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Threads)
    monkeypatch.setattr(execute_mod, "execute_job", fake_execute)


def test_runs_training_one_guide_wait_for_it_then_share_it(tmp_path, monkeypatch):
    """While a guide is being trained, no second run trains it too; once it is cached, runs share it."""
    import threading
    import time
    from collections import deque

    from pairgraph.study import Job
    from pairgraph.study.execute import run_parallel

    guide = tmp_path / "guide.safetensors"
    lock, running, peak, order = threading.Lock(), [0], [0], []

    def fake_execute(job):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            order.append((job.seed, guide.exists()))
        time.sleep(0.05)
        guide.write_bytes(b"trained")  # the first run trains (and caches) the guide
        with lock:
            running[0] -= 1
        return {"status": "done"}

    in_threads(monkeypatch, fake_execute)
    jobs = deque(Job("s", "c", "trained", 1e-3, seed, "seeds", "x.yaml", (), "runs", "out", str(guide))
                 for seed in range(3))
    run_parallel(jobs, 2, lambda job, res: None, lambda m: None)
    assert order[0] == (0, False)  # one run trains the guide, alone
    assert all(cached for _, cached in order[1:])
    assert peak[0] == 2  # the two runs after it share the cached guide


def test_a_run_waiting_for_a_guide_starts_once_it_is_cached_not_when_its_trainer_ends(tmp_path, monkeypatch):
    """The guide is cached long before the run that trains it ends; the waiting run starts then."""
    import threading
    import time
    from collections import deque

    from pairgraph.study import Job
    from pairgraph.study.execute import run_parallel

    guide, second_started, saw = tmp_path / "guide.safetensors", threading.Event(), []

    def fake_execute(job):
        if job.seed == 0:  # trains and caches the guide, then trains the target for a long while
            time.sleep(0.3)  # the scheduler has seen the second run wait for the guide by now
            guide.write_bytes(b"trained")
            saw.append(second_started.wait(timeout=10))
        else:
            second_started.set()
        return {"status": "done"}

    in_threads(monkeypatch, fake_execute)
    monkeypatch.setattr(execute_mod, "GUIDE_POLL_SECONDS", 0.01)
    jobs = deque(Job("s", "c", "trained", 1e-3, seed, "seeds", "x.yaml", (), "runs", "out", str(guide))
                 for seed in range(2))
    run_parallel(jobs, 2, lambda job, res: None, lambda m: None)
    assert saw == [True]  # the second run started while the first was still running


def test_sizes_table_says_when_a_cell_pins_its_lrs_instead_of_sweeping(tmp_path, monkeypatch):
    write(tmp_path / "tiny.yaml", tiny_spec())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "cache"))
    pinned = write(tmp_path / "pinned.yaml", tiny_study("pinned", arms=[{"name": "baseline", "lr": 1e-3},
                                                                        {"name": "untrained", "lr": 3e-3}]))
    swept = write(tmp_path / "swept.yaml", tiny_study("swept"))
    row = next(line for line in report(pinned, tmp_path / "p.md").read_text().splitlines() if line.startswith("| cp |"))
    assert row.endswith("| none; pinned: baseline 0.001, untrained 0.003 |")
    row = next(line for line in report(swept, tmp_path / "s.md").read_text().splitlines() if line.startswith("| cp |"))
    assert row.endswith("| 0.001, 0.003 |")


def test_a_run_sharing_another_pairs_cached_guide_finds_that_guides_training_record(tmp_path):
    from pairgraph.study.execute import guide_run_dir

    guides = tmp_path / "guides"
    weights = guides / "resnet18-0123456789ab.safetensors"
    trained_by = guides / "runs" / "fcn_deep_from_resnet18-guide" / "0123456789ab"
    trained_by.mkdir(parents=True)
    assert guide_run_dir(str(weights), "fcn_wide_from_resnet18") is None  # no record yet
    (trained_by / "summary.json").write_text("{}")
    assert guide_run_dir(str(weights), "fcn_deep_from_resnet18") == trained_by
    assert guide_run_dir(str(weights), "fcn_wide_from_resnet18") == trained_by  # shared: same key
    assert guide_run_dir(str(guides / "resnet18-ffffffffffff.safetensors"), "fcn_wide_from_resnet18") is None
    assert guide_run_dir(str(tmp_path / "my_weights.safetensors"), "fcn_wide_from_resnet18") is None


def test_runs_stored_before_a_field_was_added_are_not_stale():
    """Adding a spec field (layers.leaf_types) once made every committed study run 'run with a different spec'."""
    from pairgraph.config import with_defaults
    from pairgraph.study.plan import plan_study

    repo = Path(__file__).resolve().parents[1]
    plans = plan_study(repo / "studies" / "paper_cpu.yaml")  # checks every committed run folder against today's spec
    assert plans
    spec = pairgraph.config.PairSpec.model_validate({"task": {"kind": "copy_paste"}}).resolved()
    old = {**spec, "train": {k: v for k, v in spec["train"].items() if k != "eval_batches"}}
    assert with_defaults(old) == spec
    assert with_defaults({**old, "bogus": 1}) == {**old, "bogus": 1}  # no longer valid: kept as it was


def test_pooled_sd_closeness_and_the_papers_checkpoint_rule():
    from pairgraph.study.stats import is_close, paper_rule, pooled_sd

    assert pooled_sd([1.0, 3.0], [2.0, 4.0]) == pytest.approx(2 ** 0.5)
    assert is_close([1.0, 3.0], [2.0, 4.0], 3) and not is_close([10.0, 12.0], [2.0, 4.0], 3)
    assert is_close([1.0], [2.0], 3) is None  # one value each: no spread to compare with
    # seed-averaged validation loss is lowest at step 20, though seed 0 alone is best at step 10
    curves = [{10: (0.5, 70.0), 20: (0.6, 72.0), 30: (0.9, 60.0)},
              {10: (1.2, 50.0), 20: (0.7, 66.0), 30: (0.8, 64.0), 40: (0.1, 99.0)}]
    assert paper_rule(curves) == (20, [72.0, 66.0])


def test_a_verdict_that_changes_with_the_close_seeds_says_so(tmp_path, monkeypatch):
    from pairgraph.study import CellView

    write(tmp_path / "tiny.yaml", tiny_spec())
    monkeypatch.chdir(tmp_path)
    study = load_study(write(tmp_path / "s.yaml", tiny_study(close_seeds=[2, 3])))
    view = CellView(study.cells[0], {}, {}, "accuracy", True, (0, 1))
    runs = {"baseline": {0: 14.0, 1: 16.0}, "untrained": {0: 40.0, 1: 44.0}}
    monkeypatch.setattr(CellView, "values", lambda self, arm, seeds=None, metric=None: [
        v for s, v in runs.get(arm, {}).items() if seeds is None or s in seeds])
    assert view.agreement("untrained").startswith("same direction: Δ +27.00")  # 27 / 2.2 pooled s.d.: not close
    # close on seeds 0–1 (Δ 3, Welch df 2); with seeds 2–3 added to both resolved (Δ 3, df 6)
    runs.update(baseline={0: 14.0, 1: 16.0, 2: 15.0, 3: 15.0}, untrained={0: 17.0, 1: 19.0, 2: 18.0, 3: 18.0})
    assert view.close("untrained")
    text = view.agreement("untrained")
    assert text.startswith("same direction: Δ +3.00") and text.endswith(
        'changed with 4 seeds: on 2 it read "not resolved at CPU scale"')
    runs["untrained"] = {0: 15.0, 1: 19.0}
    runs["baseline"] = {0: 14.0, 1: 16.0}
    assert view.agreement("untrained").endswith("close (|Δ| < 3 pooled s.d.): rests on 2 seeds, wants 5")


@pytest.fixture
def study_copy(done, tmp_path, monkeypatch):
    """A private copy of the trained tiny study (its results may change)."""
    root = tmp_path / "copy"
    shutil.copytree(done[0], root, ignore=shutil.ignore_patterns("runs"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(root / "cache"))
    return root


@pytest.mark.parametrize(("below", "more"), [(1e-9, False), (1e9, True)])
def test_close_seeds_go_to_a_close_arm_and_its_baseline_only(study_copy, monkeypatch, below, more):
    sfile = write(study_copy / "c.yaml", {**tiny_study(), "close_seeds": [2], "close_below": below})
    ready = {p.arm.name: p.ready() for p in plan_study(sfile)}
    assert all((("seeds", 3e-3, 2) in r or ("seeds", 1e-3, 2) in r) == more for r in ready.values())
    calls = count_training(monkeypatch)
    run_study(sfile, echo=lambda m: None)
    assert len(calls) == (2 if more else 0)
    text = report(sfile, study_copy / "docs" / "c.md").read_text()
    assert ("| 3/3 |" in text) == more and ("close (|Δ| < 1e+09 pooled s.d.)" in text) is False


def test_a_repeat_arm_reruns_its_sources_seeds_on_its_own_thread_count(study_copy, monkeypatch):
    arms = ["baseline", "untrained", {"name": "baseline_t2", "repeat": "baseline", "threads": 2}]
    sfile = write(study_copy / "r.yaml", tiny_study(arms=arms))
    (plan,) = [p for p in plan_study(sfile) if p.arm.name == "baseline_t2"]
    base = next(p for p in plan_study(sfile) if p.arm.name == "baseline")
    assert plan.sweep() == [] and plan.chosen() == base.chosen()
    assert [j.phase for j in (plan.job(*r) for r in plan.ready())] == ["seeds", "seeds"]
    seen: list[int] = []
    monkeypatch.setattr(execute_mod, "train_job", lambda job, real=execute_mod.train_job: (
        seen.append(torch.get_num_threads()), real(job))[1])
    run_study(sfile, echo=lambda m: None)
    assert seen == [2, 2] and torch.get_num_threads() == 1  # the arm's threads, then the process's again
    out = study_copy / "results" / "tiny_study" / "cp" / "baseline_t2"
    for s in (0, 1):
        d = out / f"lr{base.chosen():g}-s{s}"
        assert json.loads((d / "env.json").read_text())["threads"] == 2
        assert json.loads((d / "study.json").read_text())["threads"] == 2
        assert (d / "spec.yaml").read_text() == (out.parent / "baseline" / d.name / "spec.yaml").read_text()
    text = report(sfile, study_copy / "docs" / "r.md").read_text()
    row = next(ln for ln in text.splitlines() if ln.startswith("| cp | baseline | 0, 1 | 1 → 2 |"))
    assert row.count("|") == 10
