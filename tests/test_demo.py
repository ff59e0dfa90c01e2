"""`pairgraph demo` (issue #22): the target alone and guided, same start, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from tiny_specs import copy_paste_pair, run_cli

from pairgraph.demo import default_spec

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_spec_ships_with_the_package_and_is_the_default_spec():
    assert default_spec().read_bytes() == (ROOT / "specs" / "rnn_from_transformer.yaml").read_bytes()


def test_demo_trains_alone_and_guided_from_the_same_start_and_draws_them(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(copy_paste_pair({"batch_size": 16, "lr": 3e-3, "seed": 0})))
    code, out, err = run_cli(["demo", str(spec), "--steps", "4", "--runs-dir", "d", "--no-progress"], capsys,
                             monkeypatch)
    assert code == 0, err
    alone, guided = sorted((tmp_path / "d" / "tiny").iterdir())  # <time>-alone, <time>-guided
    assert alone.name.endswith("-alone") and guided.name.endswith("-guided")
    specs = [yaml.safe_load((r / "spec.yaml").read_text()) for r in (alone, guided)]
    assert [s["guidance"]["mode"] for s in specs] == ["baseline", "guidance"]
    assert all(s["train"]["steps"] == 4 for s in specs)
    rows = [[json.loads(ln) for ln in (r / "metrics.jsonl").read_text().splitlines()] for r in (alone, guided)]
    assert rows[0][0]["task_loss"] == rows[1][0]["task_loss"]  # same weights and batch before the first update
    assert (tmp_path / "d" / "curves.png").stat().st_size > 10_000 and (tmp_path / "d" / "mapping.png").exists()
    record = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert [Path(r["run_dir"]).name for r in record["runs"].values()] == [alone.name, guided.name]
    flat = " ".join(out.split())
    assert "train: rnn alone" in flat and "train: rnn guided by an untrained transformer_decoder" in flat
    assert "sequence accuracy" in flat and "next: pairgraph plot" in flat
