"""studies/paper_gpu.yaml: every (cell, arm) trains for 2 steps at a tiny size on the CPU, through the study's
own jobs (its overrides, lr and seed), and the dry-run prints a GPU-hour estimate. The tiny size changes only
sizes and data: images come from a small ImageFolder, text from a small file with the char tokenizer, and the
pretrained torchvision guides run untrained (this machine cannot download their weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pairgraph.study import format_plan, load_study, plan_study
from pairgraph.study.execute import train_job

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "studies" / "paper_gpu.yaml"


def tiny_overrides(kind: str, spec_target: str, data: Path) -> list[str]:
    common = ["train.steps=2", "train.epochs=null", "train.eval_every=1", "train.batch_size=4", "train.device=cpu",
              "guide.train.steps=2", "guide.train.epochs=null", "guide.train.batch_size=4", "guide.train.device=cpu"]
    if kind == "image_classification":
        target = {"deep_fcn": ["target.args.num_blocks=2", "target.args.width=8", "target.args.first_width=16"],
                  "wide_fcn": ["target.args.width=16"]}[spec_target]
        return [*common, f"task.dataset=folder:{data / 'images'}", "task.image_size=[16, 16]", "task.num_classes=2",
                "task.train_size=6", "task.val_size=2", "task.test_size=4", *target]
    if kind == "language_modeling":
        return [*common, f"task.source={data / 'text.txt'}", "task.tokenizer=char", "task.context=8",
                "guide.args.d_model=16", "guide.args.nhead=2", "target.args.hidden=16"]
    sequence = ["task.size=32", "task.length=[2, 4]"] if kind == "parity" else [
        "task.size=32", "task.length=[2, 4]", "guide.args.d_model=16", "guide.args.nhead=2", "target.args.hidden=16"]
    return [*common, *sequence]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paper_gpu_data")
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            (root / "images" / split / c).mkdir(parents=True)
            for i in range(n):
                arr = (torch.rand(16, 16, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(root / "images" / split / c / f"{i}.png")
    (root / "text.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    return root


def test_every_cell_and_arm_trains_two_steps_at_a_tiny_size(data, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "cache"))
    study = load_study(STUDY)
    for cell in study.cells:
        spec = study.spec_path(cell).read_text()
        kind = next(k for k in ("image_classification", "language_modeling", "parity", "copy_paste") if k in spec)
        target = "wide_fcn" if "wide_fcn" in spec else "deep_fcn"
        cell.overrides = [*cell.overrides, *tiny_overrides(kind, target, data)]
        for arm in cell.arms:  # after the arm's own guide.weights=pretrained: no download here
            if "guide.weights=pretrained" in arm.overrides:
                arm.overrides = [*arm.overrides, "guide.weights=untrained"]
    study.runs_dir = str(tmp_path / "runs")
    study.results_dir = str(tmp_path / "results")
    trained = []
    for p in plan_study(study):
        job = p.job("sweep", (p.sweep() or [1e-4])[0], 0)
        run_dir, spec, _ = train_job(job)
        assert (run_dir / "summary.json").is_file(), job.title()
        trained.append(f"{p.cell.name}/{p.arm.name}")
    assert len(trained) == sum(len(c.arms) for c in study.cells) == 22
    assert {"fcn_deep/noise", "fcn_deep/noise_code"} <= set(trained)  # both noise-guide variants (appendix E)


def test_the_dry_run_prints_the_runs_and_a_gpu_hour_estimate(monkeypatch):
    monkeypatch.chdir(ROOT)
    text = format_plan(plan_study(load_study(STUDY)))
    assert "runs: 182 in all" in text
    assert "estimated GPU time left:" in text and "GPU-hours" in text
    for cell in ("copy_paste", "parity", "lm", "fcn_deep_cifar", "fcn_deep_cifar_mse", "fcn_deep", "fcn_wide"):
        assert f"  {cell}: " in text  # each cell's hours with the measurement and the scale behind them
    assert "no estimate for" not in text
