"""pairgraph.analysis: error consistency κ, curve aggregation, plot_runs on real tiny runs,
similarity heatmaps and the `pairgraph similarity` command (generated tasks only, no data files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import pairgraph
from pairgraph.analysis import (
    aggregate,
    error_consistency,
    error_consistency_matrix,
    load_run,
    plot_matrix,
    plot_runs,
    similarity_heatmap,
    smooth,
)
from pairgraph.cli.main import app
from pairgraph.errors import PairgraphError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_spec(name: str = "tiny", **train) -> dict:
    """A small copy-paste pair that compiles and trains in about a second."""
    return {
        "name": name,
        "task": {"kind": "copy_paste", "length": [2, 5], "size": 200},
        "guide": {"model": "transformer_decoder", "args": {"num_layers": 2, "d_model": 32, "nhead": 2}},
        "target": {"model": "rnn", "args": {"num_layers": 2, "hidden": 32}},
        "train": {"batch_size": 16, "steps": 6, "eval_every": 3, "lr": 1e-3, "seed": 0, **train},
    }


def is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000


# ------------------------------------------------------------------ error consistency κ


def test_kappa_identical_predictions_is_one():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (500,), generator=g)
    pred = torch.where(torch.rand(500, generator=g) < 0.6, labels, (labels + 1) % 10)
    assert error_consistency(pred, pred, labels) == pytest.approx(1.0)


def test_kappa_independent_errors_is_about_zero():
    rng = np.random.default_rng(0)
    n, acc = 200_000, 0.7
    labels = rng.integers(0, 10, n)

    def model() -> np.ndarray:
        wrong = (labels + rng.integers(1, 10, n)) % 10  # always a different class
        return np.where(rng.random(n) < acc, labels, wrong)

    kappa = error_consistency(model(), model(), labels)
    assert abs(kappa) < 0.02  # standard error ≈ 1/√n · O(1)


def test_kappa_hand_computed():
    labels = [0, 1, 2, 3]
    a = [0, 1, 2, 0]  # right, right, right, wrong → a1 = 0.75
    b = [0, 1, 0, 0]  # right, right, wrong, wrong → a2 = 0.5
    # c_obs = 3/4 (samples 0, 1 both right; 3 both wrong); c_exp = .75·.5 + .25·.5 = .5 → κ = .25/.5
    assert error_consistency(a, b, labels) == pytest.approx(0.5)
    assert error_consistency(b, a, labels) == pytest.approx(0.5)


def test_kappa_anti_correlated_is_negative():
    labels = torch.zeros(8, dtype=torch.long)
    a = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    b = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])  # right exactly where a is wrong
    assert error_consistency(a, b, labels) == pytest.approx(-1.0)
    c = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])  # mostly opposite
    assert error_consistency(a, c, labels) < 0


def test_kappa_degenerate_logits_and_ignored_positions():
    labels = torch.tensor([1, 2, 3, -100])
    assert error_consistency(labels.clamp_min(0), labels.clamp_min(0), labels) == 1.0  # c_exp == 1: both always right
    assert error_consistency([0, 0, 0, 5], [0, 0, 0, 7], labels) == 1.0  # both always wrong
    logits = torch.nn.functional.one_hot(torch.tensor([1, 2, 0, 0]), 4).float()  # argmax → [1, 2, 0, 0]
    assert error_consistency(logits, torch.tensor([1, 2, 0, 9]), labels) == error_consistency(
        [1, 2, 0, 0], [1, 2, 0, 9], labels)
    with pytest.raises(PairgraphError, match="shape"):
        error_consistency([0, 1], [0, 1, 2], [0, 1, 2])


def test_kappa_matrix_and_plot(tmp_path):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (300,), generator=g)
    preds = {name: torch.where(torch.rand(300, generator=g) < acc, labels, (labels + 1) % 5)
             for name, acc in [("resnet18", 0.8), ("vit_b16", 0.7), ("fcn", 0.4)]}
    names, m = error_consistency_matrix(preds, labels)
    assert names == ["resnet18", "vit_b16", "fcn"] and m.shape == (3, 3)
    assert torch.allclose(m, m.T) and torch.all(m.diagonal() == 1)
    assert m[0, 1] == pytest.approx(error_consistency(preds["resnet18"], preds["vit_b16"], labels))
    out = plot_matrix(names, m, tmp_path / "k" / "kappa.png", "κ")
    assert is_png(out)


# ------------------------------------------------------------------ curves


def test_aggregate_mean_and_standard_error():
    agg = aggregate([([1, 2, 3], [1.0, 2.0, 3.0]), ([1, 2, 3], [3.0, 4.0, 5.0]), ([1, 2], [2.0, 3.0])])
    assert agg.steps.tolist() == [1, 2, 3] and agg.n.tolist() == [3, 3, 2]
    np.testing.assert_allclose(agg.mean, [2.0, 3.0, 4.0])
    np.testing.assert_allclose(agg.sem[:2], [1 / np.sqrt(3)] * 2)  # std (ddof 1) = 1
    np.testing.assert_allclose(agg.sem[2], np.sqrt(2) / np.sqrt(2))
    single = aggregate([([0, 5], [1.0, 2.0])])
    assert np.isnan(single.sem).all() and single.mean.tolist() == [1.0, 2.0]
    np.testing.assert_allclose(smooth([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])


# ------------------------------------------------------------------ real tiny runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs: guided seeds 0 and 1, and a baseline."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for rid, spec in [("g0", tiny_spec()), ("g1", tiny_spec(seed=1)),
                      ("b0", {**tiny_spec(), "guidance": {"mode": "baseline"}})]:
        cp = pairgraph.compile(spec, root / f"build-{rid}", render=False, notify=None)
        summary = cp.train(runs_dir=root, run_id=rid, progress=False)
        out[rid] = Path(summary["run_dir"])
    return out


def test_runs_are_complete(runs):
    run = load_run(runs["g0"])
    assert [r["step"] for r in run.steps] == list(range(1, 7)) and [r["step"] for r in run.val] == [3, 6]
    assert run.label() == "tiny · guidance · untrained · seed 0"
    # default taps: guide blocks.0, blocks.1, norm; target layers.0, layers.1 (3 uniform pairs)
    assert sorted(run.guidance_terms()) == ["blocks.0->layers.0", "blocks.1->layers.0", "norm->layers.1"]
    steps, total = run.total_dissimilarity()
    assert steps.size == 6 and np.all((total >= 0) & (total <= 3))
    assert load_run(runs["b0"]).guidance_terms() == {}


def test_a_stored_run_with_gzipped_metrics_loads_the_same(runs, tmp_path):
    """A study's results keep metrics.jsonl gzipped: load_run reads it as it reads the plain file."""
    import gzip
    import shutil

    stored = tmp_path / "stored"
    shutil.copytree(runs["g0"], stored, ignore=shutil.ignore_patterns("checkpoints", "tb", "build"))
    raw = (stored / "metrics.jsonl").read_bytes()
    (stored / "metrics.jsonl.gz").write_bytes(gzip.compress(raw, mtime=0))
    (stored / "metrics.jsonl").unlink()
    a, b = load_run(runs["g0"]), load_run(stored)
    assert a.steps == b.steps and a.val == b.val and a.guidance_terms().keys() == b.guidance_terms().keys()


def test_plot_runs_writes_png(runs, tmp_path):
    out = plot_runs([runs["g0"], runs["g1"], runs["b0"]], tmp_path / "plots" / "runs.png")
    assert is_png(out)
    assert is_png(plot_runs([runs["g0"]], tmp_path / "one.png"))


def test_plot_runs_does_not_count_one_seed_twice(runs, tmp_path):
    """Two runs of one configuration and seed were once averaged as 'n=2'."""
    import shutil

    copy = tmp_path / "g0-again"
    shutil.copytree(runs["g0"], copy, ignore=shutil.ignore_patterns("checkpoints", "tb", "build"))
    with pytest.raises(PairgraphError, match=r"same configuration with seed 0: their mean would count one seed twice"):
        plot_runs([runs["g0"], copy], tmp_path / "twice.png")


def test_plot_runs_rejects_a_folder_that_is_not_a_run(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairgraphError, match="empty is not a run folder .no metrics.jsonl.") as e:
        plot_runs([runs["g0"], tmp_path / "empty"], tmp_path / "x.png")
    assert "runs/<name>/<id>" in str(e.value)
    with pytest.raises(PairgraphError, match="holds runs"):  # runs/<name>: points at its runs
        plot_runs([runs["g0"].parent], tmp_path / "x.png")
    with pytest.raises(PairgraphError, match="does not exist"):
        plot_runs([tmp_path / "nope"], tmp_path / "x.png")


# ------------------------------------------------------------------ similarity heatmap


def test_similarity_heatmap_at_init(tmp_path):
    cp = pairgraph.compile(tiny_spec(), tmp_path / "build", render=False, notify=None)
    m, g, t = similarity_heatmap(cp, tmp_path / "sim.png", batch_size=20)
    assert g == cp.guide.names and t == cp.target.names
    assert m.shape == (len(cp.guide.names), len(cp.target.names))
    assert torch.isfinite(m).all() and m.min() >= -1e-5 and m.max() <= 1 + 1e-5
    assert is_png(tmp_path / "sim.png")
    m2, _, _ = similarity_heatmap(cp, tmp_path / "rsa.png", batch_size=20, measure="rsa")
    assert m2.shape == m.shape and not torch.allclose(m, m2)
    with pytest.raises(PairgraphError, match="measure"):
        similarity_heatmap(cp, tmp_path / "x.png", measure="nope")


def test_similarity_heatmap_loads_a_checkpoint(runs, tmp_path):
    cp = pairgraph.compile(runs["g0"] / "spec.yaml", tmp_path / "build", render=False, notify=None)
    init, _, _ = similarity_heatmap(cp, tmp_path / "init.png", batch_size=20)
    from_run, _, _ = similarity_heatmap(cp, tmp_path / "run.png", checkpoint=runs["g0"], batch_size=20)
    from_file, _, _ = similarity_heatmap(cp, tmp_path / "file.png", batch_size=20,
                                         checkpoint=runs["g0"] / "checkpoints" / "best.safetensors")
    torch.testing.assert_close(from_run, from_file)
    assert not torch.equal(init, from_run)  # six steps of training moved the target
    with pytest.raises(PairgraphError, match="not found"):
        similarity_heatmap(cp, tmp_path / "x.png", checkpoint=tmp_path / "missing.safetensors")
    other = pairgraph.compile({**tiny_spec(), "target": {"model": "rnn", "args": {"num_layers": 2, "hidden": 48}}},
                              tmp_path / "other", render=False, notify=None)
    with pytest.raises(PairgraphError, match="does not fit"):
        similarity_heatmap(other, tmp_path / "x.png", checkpoint=runs["g0"])


# ------------------------------------------------------------------ CLI


def test_cli_similarity_on_spec_and_run(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny.yaml").write_text(yaml.safe_dump(tiny_spec("clitiny")))
    cli = CliRunner()
    res = cli.invoke(app, ["similarity", "tiny.yaml", "--batch-size", "20", "--set", "train.seed=2"])
    assert res.exit_code == 0, res.output
    assert "build/clitiny/similarity.png" in res.output and "min " in res.output and "max " in res.output
    assert is_png(tmp_path / "build" / "clitiny" / "similarity.png")
    res = cli.invoke(app, ["similarity", str(runs["g0"]), "-o", "run.png", "--batch-size", "20", "--measure", "rsa"])
    assert res.exit_code == 0, res.output
    assert "rsa of 3 guide × 2 target taps" in res.output and is_png(tmp_path / "run.png")
    res = cli.invoke(app, ["similarity", "missing.yaml"])
    assert res.exit_code != 0 and isinstance(res.exception, PairgraphError)


def test_cli_similarity_default_output_in_run(runs):
    res = CliRunner().invoke(app, ["similarity", str(runs["g1"]), "--batch-size", "20"])
    assert res.exit_code == 0, res.output
    assert is_png(runs["g1"] / "similarity.png")
    assert json.loads((runs["g1"] / "summary.json").read_text())["seed"] == 1
