"""Run folders that cannot lie: a run id holding another spec is refused, a finished run is not
re-reported with settings it never used, and --resume changes only what is safe to change."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.errors import PairgraphError
from pairgraph.training import resume_run


def tiny(**train):
    return copy_paste_pair({"batch_size": 16, "steps": 8, "eval_every": 4, "lr": 3e-3, "seed": 1, **train})


def _train(tmp_path, spec, run_id="r", **kw):
    cp = pairgraph.compile(spec, tmp_path / "build", render=False, notify=None)
    return cp.train(runs_dir=tmp_path / "runs", run_id=run_id, progress=False, **kw)


def _files(run):
    return {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".jsonl")}


def test_a_finished_run_id_is_not_rerun_and_keeps_its_files(tmp_path):
    _train(tmp_path, tiny())
    run = tmp_path / "runs" / "tiny" / "r"
    before = _files(run)
    with pytest.raises(PairgraphError, match="already finished .*--resume .*train.steps=N"):
        _train(tmp_path, tiny())
    assert _files(run) == before


def test_a_finished_run_id_with_another_lr_is_refused_naming_the_difference(tmp_path):
    _train(tmp_path, tiny())
    run = tmp_path / "runs" / "tiny" / "r"
    before = _files(run)
    with pytest.raises(PairgraphError, match=r"holds a run of another spec \(train.lr: 0.003 → 0.01\)"):
        _train(tmp_path, tiny(lr=1e-2))
    assert _files(run) == before  # summary.json still says what was really run


def test_an_interrupted_run_id_with_another_lr_is_refused(tmp_path):
    _train(tmp_path, tiny(), stop_after=4)
    run = tmp_path / "runs" / "tiny" / "r"
    state = (run / "checkpoints" / "last_state.pt").read_bytes()
    with pytest.raises(PairgraphError, match="holds a run of another spec"):
        _train(tmp_path, tiny(lr=1e-2))
    assert (run / "checkpoints" / "last_state.pt").read_bytes() == state
    assert yaml.safe_load((run / "spec.yaml").read_text())["train"]["lr"] == 3e-3


def test_resume_refuses_a_change_of_what_the_run_computes(tmp_path):
    _train(tmp_path, tiny(), stop_after=4)
    run = tmp_path / "runs" / "tiny" / "r"
    with pytest.raises(PairgraphError, match=r"cannot resume .* with train.lr: 0.01 \(it was started with 0.003\)"):
        resume_run(run, progress=False, overrides=["train.lr=1e-2"])
    assert not (run / "summary.json").exists()


def test_resume_with_more_steps_continues_a_finished_run_and_records_them(tmp_path):
    first = _train(tmp_path, tiny())
    run = tmp_path / "runs" / "tiny" / "r"
    said = []
    summary = resume_run(run, progress=False, overrides=["train.steps=12"], notify=said.append)
    assert said == ["resuming with train.steps: 8 → 12"]
    assert summary["steps"] == 12 and first["steps"] == 8
    assert yaml.safe_load((run / "spec.yaml").read_text())["train"]["steps"] == 12
    assert json.loads((run / "summary.json").read_text())["steps"] == 12
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s > 8] and max(steps) == 12


def test_resume_with_a_spec_file_applies_its_safe_fields(tmp_path):
    _train(tmp_path, tiny(), stop_after=4)
    run = tmp_path / "runs" / "tiny" / "r"
    spec_file = tmp_path / "longer.yaml"
    spec_file.write_text(yaml.safe_dump(tiny(steps=10, device="cpu")))
    summary = resume_run(run, progress=False, spec=spec_file)
    assert summary["steps"] == 10
    bad = tmp_path / "other.yaml"
    bad.write_text(yaml.safe_dump(tiny(seed=5)))
    with pytest.raises(PairgraphError, match="cannot resume .* with train.seed: 5"):
        resume_run(run, progress=False, spec=bad)


def test_same_run_id_and_spec_after_an_interrupt_continues_exactly(tmp_path):
    ref = _train(tmp_path / "ref", tiny())
    _train(tmp_path, tiny(), stop_after=4)
    again = _train(tmp_path, tiny())
    assert again["test"] == ref["test"] and again["steps"] == 8
    assert torch.isfinite(torch.tensor(again["best_val_loss"]))
