"""The benchmark: its naive reference computes the same CKA, and a record has every variant, cached included."""

from __future__ import annotations

import pytest
import torch
import yaml

from pairgraph.bench import bench, naive_cka
from pairgraph.core.similarity import get_measure


def test_naive_reference_computes_the_same_cka():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 30, generator=g)
    y = x @ torch.randn(30, 12, generator=g) + torch.randn(40, 12, generator=g)
    assert naive_cka(x, y).item() == pytest.approx(get_measure("cka")(x, y).item(), rel=1e-4)


def test_bench_record_times_every_variant_including_the_cached_guide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = {
        "name": "benchy",
        "task": {"kind": "image_classification", "dataset": "mnist1d"},
        "guide": {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 64}},
        "target": {"model": "deep_fcn", "args": {"num_blocks": 3, "width": 32}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    rec = bench("s.yaml", batch_size=32, steps=2, warmup=1, memory=False, batch_sizes=(16,), pair_counts=(1,),
                cache_pool=48)
    assert set(rec["seconds"]) == {"target", "guide", "guided", "naive", "cached"}
    assert all(v > 0 for v in rec["seconds"].values())
    c = rec["cache"]
    assert c["pool"] == 48 and c["bytes"] > 0 and set(c["kinds"].values()) <= {"feat", "gram"}
    assert c["overhead"] == pytest.approx(rec["seconds"]["cached"] / (rec["seconds"]["target"] + rec["seconds"]["guide"]))
    assert [r["batch_size"] for r in rec["by_batch_size"]] == [16] and "overhead_cached" in rec["by_batch_size"][0]
    assert rec["by_pairs"][0]["pairs"] == 1


def test_report_renders_a_compiled_record_without_the_naive_step():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rec = {"spec": "s.yaml", "overrides": [], "device": "cpu", "batch_size": 8, "steps": 2, "warmup": 1, "pairs": 3,
           "compiled": True, "first_round_seconds": 12.0, "seconds": {"target": 0.1, "guide": 0.1, "guided": 0.3},
           "overhead": 1.5, "speedup": None, "by_batch_size": [], "by_pairs": [],
           "machine": {"processor": "x86_64", "threads": 2, "cpu_count": 2, "torch": "2"}}
    text = "\n".join(mod._section(rec, "r.json"))
    assert "`torch.compile`" in text and "first round, compiling included: 12 s" in text
    assert "| — | 1.50 (misses ≤ 1.10) | — (naive step not timed) |" in text


def test_channels_last_runs_every_variant_in_that_format(tmp_path, monkeypatch):
    import pairgraph
    from pairgraph.bench import build_variants

    monkeypatch.chdir(tmp_path)
    spec = {
        "name": "benchy_cl",
        "task": {"kind": "image_classification", "dataset": "cifar10", "num_classes": 10, "image_size": [8, 8]},
        "guide": {"model": "resnet18", "args": {"stem": "cifar"}},
        "target": {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 16}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    compiled = pairgraph.compile("s.yaml", tmp_path / "build", render=False, notify=None)
    fns, pair = build_variants(compiled, 4, torch.device("cpu"), cache_pool=8, channels_last=True)
    assert pair.guide.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for fn in fns.values():
        fn()
    rec = bench("s.yaml", batch_size=4, steps=1, warmup=1, memory=False, channels_last=True)
    assert rec["channels_last"] is True and rec["overhead"] > 0 and rec["speedup"] > 0
