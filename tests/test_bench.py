"""The benchmark: its naive reference computes the same CKA, a record has every variant (the gram floor and
the cached guide included) and its ratios, the report renders old and new records, and the precision and
throughput measurements run (on a CPU here, on CUDA under the gpu marker)."""

from __future__ import annotations

import pytest
import torch
import yaml

from pairgraph.bench import bench, naive_cka
from pairgraph.core.similarity import get_measure
from pairgraph.errors import PairgraphError

MNIST1D = {
    "name": "benchy",
    "task": {"kind": "image_classification", "dataset": "mnist1d"},
    "guide": {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 64}},
    "target": {"model": "deep_fcn", "args": {"num_blocks": 3, "width": 32}},
}
COPY = {
    "name": "benchy_rnn",
    "task": {"kind": "copy_paste", "length": [2, 4], "size": 64},
    "guide": {"model": "transformer_decoder", "args": {"preset": "cpu", "num_layers": 2, "d_model": 32},
              "layers": {"include": ["blocks.*"]}},
    "target": {"model": "rnn", "args": {"num_layers": 2, "hidden": 32}},
}


def _report():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_naive_reference_computes_the_same_cka():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 30, generator=g)
    y = x @ torch.randn(30, 12, generator=g) + torch.randn(40, 12, generator=g)
    assert naive_cka(x, y).item() == pytest.approx(get_measure("cka")(x, y).item(), rel=1e-4)


def test_bench_record_times_every_variant_including_the_gram_floor_and_the_cached_guide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(MNIST1D))
    rec = bench("s.yaml", batch_size=32, steps=2, warmup=1, memory=False, batch_sizes=(16,), pair_counts=(1,),
                cache_pool=48)
    sec = rec["seconds"]
    assert set(sec) == {"target", "guide", "gram", "guided", "naive", "cached"}
    assert all(v > 0 for v in sec.values())
    assert rec["overhead_gram"] == pytest.approx(sec["guided"] / (sec["target"] + sec["guide"] + sec["gram"]))
    assert rec["precision"] == "fp32" and rec["similarity_precision"] == "fp32"
    c = rec["cache"]
    assert c["pool"] == 48 and c["bytes"] > 0 and set(c["kinds"].values()) <= {"feat", "gram"}
    assert c["overhead"] == pytest.approx(sec["cached"] / (sec["target"] + sec["guide"]))
    assert c["vs_target"] == pytest.approx(sec["cached"] / sec["target"])
    for row in (*rec["by_batch_size"], *rec["by_pairs"]):
        assert row["overhead_gram"] == pytest.approx(row["guided"] / (row["target"] + row["guide"] + row["gram"]))
        assert row["cached_vs_target"] == pytest.approx(row["cached"] / row["target"]) and "overhead_cached" in row
    assert [r["batch_size"] for r in rec["by_batch_size"]] == [16]
    assert rec["by_pairs"][0]["pairs"] == 1


@pytest.mark.parametrize("spec", [MNIST1D, COPY], ids=["images", "sequences"])
def test_the_gram_floor_is_the_similarity_work_of_the_guided_step(spec, tmp_path):
    """(g) computes the guided step's own alignment terms (same taps, same batch, mask included) and
    backpropagates them to the target's taps, without running either network."""
    import pairgraph
    from pairgraph.bench.variants import fake_labels, gram_step, mapped_taps, random_pool
    from pairgraph.core.loss import alignment_terms
    from pairgraph.tasks import get_task

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    cp = pairgraph.compile(tmp_path / "s.yaml", tmp_path / "build", render=False, notify=None)
    pair, task = cp.build(), get_task(cp.spec.task)
    x = random_pool(task, 16, False)[0]
    out = pair(x, fake_labels(pair.target(x)[0], task), 0)
    taps = mapped_taps(pair, x)
    assert (taps[2] is not None) == (spec is COPY)
    terms = alignment_terms(*taps[:2], pair.pairs, pair.measure, taps[2], pair.sequence, aliases=pair.guide_aliases)
    assert terms.keys() == out.terms.keys()
    assert all(terms[k].item() == pytest.approx(out.terms[k].item(), abs=1e-6) for k in terms)
    calls = {"target": 0, "guide": 0}
    pair.target.register_forward_hook(lambda *a: calls.__setitem__("target", calls["target"] + 1))
    pair.guide.register_forward_hook(lambda *a: calls.__setitem__("guide", calls["guide"] + 1))
    gram_step(pair, taps, "fp32")()
    assert calls == {"target": 0, "guide": 0}
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in taps[1].values())


def test_bench_runs_the_networks_in_bf16_and_refuses_bad_input_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(COPY))
    rec = bench("s.yaml", batch_size=16, steps=1, warmup=1, memory=False, precision="bf16",
                overrides=["similarity.precision=bf16"])
    assert rec["precision"] == "bf16" and rec["similarity_precision"] == "bf16" and rec["seconds"]["gram"] > 0
    with pytest.raises(PairgraphError, match="unknown benchmark precision 'fp16' — fix: use fp32 or bf16"):
        bench("s.yaml", batch_size=16, steps=1, warmup=1, memory=False, precision="fp16")
    with pytest.raises(PairgraphError, match="unknown device 'gpu'"):
        bench("s.yaml", batch_size=16, steps=1, warmup=1, memory=False, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(PairgraphError, match="no CUDA device"):
            bench("s.yaml", batch_size=16, steps=1, warmup=1, memory=False, device="cuda")


@pytest.mark.slow  # four fresh processes, ~30 s on 2 cores
def test_bench_measures_peak_memory_in_subprocesses_on_a_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(COPY))
    rec = bench("s.yaml", batch_size=16, steps=1, warmup=1, cache_pool=32)
    assert set(rec["peak_bytes"]) == {"target", "guide", "guided", "cached"}
    assert rec["memory_method"].startswith("rss") and "memory_ratio" in rec["cache"]


def test_report_renders_a_compiled_record_without_the_naive_step():
    mod = _report()
    rec = {"spec": "s.yaml", "overrides": [], "device": "cpu", "batch_size": 8, "steps": 2, "warmup": 1, "pairs": 3,
           "compiled": True, "first_round_seconds": 12.0, "seconds": {"target": 0.1, "guide": 0.1, "guided": 0.3},
           "overhead": 1.5, "speedup": None, "by_batch_size": [], "by_pairs": [],
           "machine": {"processor": "x86_64", "threads": 2, "cpu_count": 2, "torch": "2"}}
    text = "\n".join(mod._section(rec, "r.json"))
    assert "`torch.compile`" in text and "first round, compiling included: 12 s" in text
    assert "networks compiled (first" in text  # a record from before the alignment was compiled too
    assert "networks compiled and the alignment (first" in "\n".join(mod._section({**rec, "compiled_alignment": True},
                                                                                  "r.json"))
    assert "| 300.0 ms | — | 1.50 (misses ≤ 1.10) | — | — (naive step not timed) |" in text  # (d), c/(a+b+g): —
    assert "| 100.0 ms | 100.0 ms | — | 300.0 ms |" in text  # an old record has no (g)


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


def _records() -> dict[str, dict]:
    """A bench record of today (every new key), a gram_precision and a throughput record, all made up."""
    sec = {"target": 0.1, "guide": 0.1, "gram": 0.05, "guided": 0.3, "naive": 0.6, "cached": 0.15}
    row = {**sec, "overhead": 1.5, "overhead_gram": 1.2, "overhead_cached": 0.75, "cached_vs_target": 1.5}
    machine = {"processor": "x86_64", "threads": 2, "cpu_count": 2, "torch": "2"}
    bench_rec = {"spec": "s.yaml", "overrides": [], "device": "cpu", "batch_size": 8, "steps": 2, "warmup": 1,
                 "pairs": 3, "compiled": False, "channels_last": False, "precision": "bf16",
                 "similarity_precision": "fp32", "first_round_seconds": 1.0, "seconds": sec, "overhead": 1.5,
                 "overhead_gram": 1.2, "speedup": 2.0, "machine": machine,
                 "cache": {"pool": 16, "bytes": 2**20, "build_seconds": 0.5, "kinds": {"a": "gram"}, "overhead": 0.75,
                           "vs_target": 1.5, "overhead_gram": 0.6, "speedup": 4.0, "break_even_steps": 3.3},
                 "by_batch_size": [{"batch_size": 8, **row}], "by_pairs": [{"pairs": 1, **row}]}
    prec = {"gram_seconds": 0.05, "vs_fp32": 1.0, "max_abs_dcka": 0.0, "dcka": {}, "grad_rel_err": 0.0}
    precision_rec = {
        "kind": "gram_precision", "device": "cpu", "machine": machine, "gpu": None, "tf32": "fp32 here",
        "cpu": {"model": "Some CPU", "avx512_bf16": True, "amx_bf16": False, "amx_tile": None,
                "torch_cpu_capability": "AVX512", "mkldnn_available": True, "mkldnn_bf16_supported": True},
        "pairs": {"p": {"batch_size": 8, "pairs": 3, "fp32_repeat_grad_rel_err": 0.0, "precisions": {
            "fp32": prec, "bf16": {**prec, "gram_seconds": 0.02, "vs_fp32": 0.4, "max_abs_dcka": 3e-4,
                                   "grad_rel_err": 2e-3}}}}}
    throughput_rec = {"kind": "throughput", "spec": "paper.yaml", "overrides": ["x=1"], "device": "cpu",
                      "batch_size": 8, "steps": 3, "warmup": 1, "precision": "fp32", "similarity_precision": "fp32",
                      "pairs": 3, "target_parameters": 12345, "memory_method": "rss", "machine": machine,
                      "variants": {"target": {"seconds_per_step": 0.1, "examples_per_second": 80.0,
                                              "peak_bytes": 3 * 2**20},
                                   "guided": {"seconds_per_step": 0.2, "examples_per_second": 40.0,
                                              "peak_bytes": 5 * 2**20}}}
    return {"a-bench.json": bench_rec, "b-precision.json": precision_rec, "c-throughput.json": throughput_rec}


def test_report_renders_the_gram_floor_the_precision_and_the_throughput_records(tmp_path):
    import json

    mod = _report()
    for name, rec in _records().items():
        (tmp_path / name).write_text(json.dumps(rec))
    doc = tmp_path / "perf.md"
    doc.write_text("# P\n\nprose\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\nmore prose\n")
    mod.main(str(tmp_path), str(doc))
    text = doc.read_text()
    assert text.startswith("# P\n\nprose\n") and text.endswith("more prose\n") and "old" not in text
    assert "— networks bf16 (autocast)" in text and "similarity products in fp32" in text
    assert "| 100.0 ms | 100.0 ms | 50.0 ms | 300.0 ms | 600.0 ms | 1.50 (misses ≤ 1.10) | 1.20 | 2.00 (meets" in text
    assert "| 150.0 ms | 0.75 (meets ≤ 1.10) | 1.50 | 4.00 (meets ≥ 2.00) | not measured |" in text
    assert "| 8 | 100.0 ms | 100.0 ms | 50.0 ms | 300.0 ms | 1.500 | 1.200 | 150.0 ms | 0.750 | 1.500 |" in text
    assert "| 1 | 100.0 ms | 100.0 ms | 50.0 ms | 300.0 ms | 1.500 | 1.200 | 150.0 ms | 0.750 | 1.500 |" in text
    assert "avx512_bf16 yes, amx_bf16 no, amx_tile —" in text
    assert "| p (3 pairs) | 8 | bf16 | 20.0 ms | 0.40 | 3.0e-04 | 2.0e-03 |" in text
    assert "| (c) guided step | 200.0 ms | 40 | 5 MiB |" in text and "12,345 target parameters" in text
    mod.main(str(tmp_path), str(doc))
    assert doc.read_text() == text  # deterministic


def test_gram_precision_compares_fp32_tf32_and_bf16_on_a_pair(tmp_path, monkeypatch):
    from pairgraph.bench import gram_precision

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(COPY))
    rec = gram_precision({"copy": ("s.yaml", [])}, batch_size=16, steps=1, warmup=0)
    assert rec["kind"] == "gram_precision" and "fp32" in rec["tf32"]
    assert {"avx512_bf16", "amx_bf16", "amx_tile", "torch_cpu_capability", "mkldnn_available"} <= set(rec["cpu"])
    p = rec["pairs"]["copy"]
    assert set(p["precisions"]) == {"fp32", "tf32", "bf16"} and p["pairs"] == len(p["cka_fp32"])
    fp32, tf32, bf16 = (p["precisions"][k] for k in ("fp32", "tf32", "bf16"))
    assert fp32["max_abs_dcka"] == tf32["max_abs_dcka"] == 0 and fp32["grad_rel_err"] == tf32["grad_rel_err"] == 0
    assert 0 < bf16["max_abs_dcka"] < 1e-2 and 0 < bf16["grad_rel_err"] < 0.1
    assert all(v["gram_seconds"] > 0 for v in p["precisions"].values())


def test_throughput_of_the_paper_pair_on_synthetic_data_at_a_tiny_size(tmp_path, monkeypatch):
    """The paper-size spec needs no dataset on disk; shrunk here, it runs the path make gpu-check runs at size."""
    from pathlib import Path

    from pairgraph.bench import throughput

    spec = str(Path(__file__).resolve().parents[1] / "specs" / "paper" / "fcn_deep_from_resnet18.yaml")
    monkeypatch.chdir(tmp_path)
    rec = throughput(spec, batch_size=8, steps=1, warmup=1, device="cpu",
                     overrides=["task.image_size=[32,32]", "target.args.num_blocks=2", "target.args.width=32"])
    assert rec["kind"] == "throughput" and set(rec["variants"]) == {"target", "guided"} and rec["pairs"] > 0
    assert all(v["examples_per_second"] > 0 for v in rec["variants"].values())


# ------------------------------------------------------------------ on a GPU (make gpu-check)


@pytest.mark.gpu
def test_bench_on_cuda_reads_the_allocators_peak_in_process(tmp_path, monkeypatch):
    from pairgraph.bench import gram_precision, throughput

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(COPY))
    rec = bench("s.yaml", batch_size=16, steps=1, warmup=1, device="cuda", cache_pool=32, precision="bf16")
    assert rec["memory_method"] == "cuda allocator" and set(rec["peak_bytes"]) == {"target", "guide", "guided", "cached"}
    assert rec["machine"]["gpu"] and rec["seconds"]["gram"] > 0
    t = throughput("s.yaml", batch_size=16, steps=2, warmup=1, device="cuda")
    assert t["variants"]["guided"]["peak_bytes"] > 0
    p = gram_precision({"copy": ("s.yaml", [])}, batch_size=16, steps=1, warmup=0, device="cuda")
    assert p["gpu"]["name"] and p["pairs"]["copy"]["precisions"]["bf16"]["max_abs_dcka"] < 1e-2


def test_gpu_check_runs_every_cpu_part_at_a_tiny_size(tmp_path):
    """`make gpu-check`'s script with --quick --device cpu: every part but the CPU/GPU agreement, tiny, on the
    CPU (the compile modes eager only); the records it writes render, and the item-5 targets are read back from
    them; a part past the budget is skipped and recorded so."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "scripts" / "gpu_check.py"), "--quick", "--device", "cpu", "--skip-tests",
           "--compile-modes", "eager", "--out", str(tmp_path / "gc")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    names = sorted(Path(p).name for p in rec["records"])
    pairs = ("fcn_deep_1024_from_resnet18", "rnn_from_transformer")
    paper = ("fcn_deep_50x2048_from_resnet18", "fcn_deep_paper_from_resnet18")
    assert names == sorted([f"{p}-cpu{s}.json" for p in pairs for s in ("", "-bf16", "-profile", "-compile-modes")]
                           + [f"{p}-cpu{s}-throughput.json" for p in paper for s in ("", "-bf16")]
                           + ["gram_precision-cpu.json"])
    assert len(rec["training"]) == 4 and rec["skipped"] == [] and rec["agreement"] == []
    targets = {r["target"]: r for r in rec["targets"]}
    unmeasured = [t for t, r in targets.items() if r["status"] == "not measured"]
    assert len(targets) == len(rec["targets"]) and len(unmeasured) == 2  # the compile-mode rows: eager only here
    assert all("train.compile's mode 'default'" in t for t in unmeasured)
    layouts = {r["target"] for r in rec["targets"] if r["target"].startswith("paper size")}
    assert any("preset paper" in t for t in layouts) and any("preset authors" in t for t in layouts)
    profile = json.loads((tmp_path / "gc" / "bench" / "rnn_from_transformer-cpu-profile.json").read_text())
    assert profile["variants"]["guided"]["kernels"] > profile["variants"]["target"]["kernels"] > 0
    assert json.loads((tmp_path / "gc" / "bench" / "rnn_from_transformer-cpu-bf16.json").read_text())["precision"] == "bf16"
    _report().main(str(tmp_path / "gc" / "bench"), str(tmp_path / "perf.md"))
    proc = subprocess.run([*cmd[:-1], str(tmp_path / "late"), "--budget", "0"], capture_output=True, text=True,
                          check=False)
    late = json.loads((tmp_path / "late" / "gpu_check.json").read_text())
    assert proc.returncode == 0 and late["records"] == [] and "training" in late["skipped"]


def test_ops_only_counts_ops_and_syncs_without_timing_and_the_report_shows_them(tmp_path, monkeypatch, capsys):
    import json

    from tiny_specs import run_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(COPY))
    code, out, err = run_cli(["bench", "s.yaml", "--ops-only", "--batch-size", "16", "--pairs", "1,2",
                              "-o", "ops.json"], capsys, monkeypatch)
    assert code == 0, err
    rec = json.loads((tmp_path / "ops.json").read_text())
    assert rec["kind"] == "ops" and "seconds" not in rec and [r["pairs"] for r in rec["by_pairs"]] == [1, 2]
    ops = rec["ops"]
    assert ops["alignment"]["ops"] == ops["guided"]["ops"] - ops["target"]["ops"] - ops["guide"]["ops"] > 0
    assert ops["alignment"]["syncs"] == 0 and "ATen ops (host syncs) per step" in out
    doc = tmp_path / "perf.md"
    doc.write_text("<!-- bench:begin -->\n<!-- bench:end -->\n")
    _report().main(str(tmp_path), str(doc))
    assert f"| {ops['alignment']['ops']:,} (0) |" in doc.read_text() and "| mapped pairs | (c) guided step" in doc.read_text()
    code, _, err = run_cli(["bench", "s.yaml", "--ops-only", "--compile"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--ops-only and --profile each look at the eager step at one batch size" in " ".join(err.split())
