"""A ``when_unconverged`` cell that differs from its gate cell only in length continues the gate's finished runs
(copy, then resume for the remaining steps) instead of starting them over — and ends where a fresh run ends."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_study import tiny_spec, tiny_study, write

from pairgraph.study import format_plan, plan_study, run_study

RUN = "lr0.001-s0"


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "time" not in k and "wall" not in k} for r in rows]


def test_a_longer_gated_cell_continues_its_gates_runs_and_ends_as_a_fresh_run_would(tmp_path, monkeypatch):
    write(tmp_path / "tiny.yaml", tiny_spec())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "cache"))
    data = tiny_study(grid=True, lrs=[1e-3], arms=["baseline"])
    cp = data["cells"][0]
    data["cells"] += [{**cp, "name": "cp_long", "overrides": ["train.steps=12"], "when_unconverged": "cp"},
                      {**cp, "name": "cp_other", "overrides": ["train.steps=12", "train.batch_size=8"],
                       "when_unconverged": "cp"},
                      {**cp, "name": "cp_fresh", "overrides": ["train.steps=12"]}]
    sfile = write(tmp_path / "s.yaml", data)
    run_study(sfile, only=["cp/baseline"], echo=lambda m: None)
    for done in (tmp_path / "results/tiny_study/cp/baseline").glob("*/summary.json"):
        summary = json.loads(done.read_text())  # the gate opens: the baseline was still improving at its last step
        done.write_text(json.dumps({**summary, "best_step": summary["steps"]}))
    plan = format_plan(plan_study(sfile))  # cp_long: 6 steps left a run; cp_other and cp_fresh: 12
    assert "2 done, 0 diverged, 6 left = 60 optimizer steps left" in plan
    assert "cell cp_long runs only if cp's baseline" in plan and "runs; its runs continue cp's from step 6" in plan
    run_study(sfile, echo=lambda m: None)

    results = tmp_path / "results/tiny_study"
    origin = json.loads((results / "cp_long/baseline" / RUN / "continued_from.json").read_text())
    assert origin == {"run": f"runs/study/tiny_study/cp/baseline/tiny/{RUN}", "step": 6, "steps": 12}
    assert not (results / "cp_other/baseline" / RUN / "continued_from.json").exists()  # another batch size: fresh
    assert not (results / "cp_fresh/baseline" / RUN / "continued_from.json").exists()  # not gated: fresh
    runs = tmp_path / "runs/study/tiny_study"
    long, fresh = runs / "cp_long/baseline/tiny" / RUN, runs / "cp_fresh/baseline/tiny" / RUN
    assert json.loads((long / "summary.json").read_text())["steps"] == 12
    assert _metrics(long) == _metrics(fresh) and len(_metrics(long)) > 12
    a, b = load_file(long / "checkpoints/last.safetensors"), load_file(fresh / "checkpoints/last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (runs / "cp/baseline/tiny" / RUN / "summary.json").is_file()  # the gate's own run is left as it was
    assert json.loads((runs / "cp/baseline/tiny" / RUN / "summary.json").read_text())["steps"] == 6
