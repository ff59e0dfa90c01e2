"""Issue #28 item 5's instruments: a step's kernels and device idle time from a profiler trace (synthetic and a
real CPU step), the compile-mode measurement, and scripts/gpu_targets.py's verdicts on synthetic records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_specs import copy_paste_pair

from pairgraph.bench.compile_modes import compile_modes
from pairgraph.bench.profile import STEP, outermost, profile_step, step_summaries, union_length

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _x(name: str, cat: str, ts: float, dur: float, tid: int = 1) -> dict:
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "tid": tid}


def test_union_counts_overlaps_once():
    assert union_length([]) == 0
    assert union_length([(0, 10), (5, 15), (20, 25), (21, 22)]) == 20


def test_a_gpu_trace_gives_kernels_launches_busy_and_idle_time_per_step():
    events = [
        _x(f"{STEP}0", "user_annotation", 0, 100), _x(f"{STEP}1", "user_annotation", 200, 50),
        _x("ProfilerStep#1", "user_annotation", 0, 110),  # not a step of ours
        _x("cudaLaunchKernel", "cuda_runtime", 1, 2), _x("cudaLaunchKernel", "cuda_runtime", 3, 2),
        _x("cudaMemcpyAsync", "cuda_runtime", 5, 2),  # a copy's call, not a launch
        _x("gemm", "kernel", 10, 30, 7), _x("add", "kernel", 30, 20, 8),  # two streams, overlapping: busy 10..50
        _x("Memcpy HtoD", "gpu_memcpy", 60, 10, 7),
        _x("gpu annotation", "gpu_user_annotation", 0, 100, 7),  # not a kernel
        _x("graph kernel", "kernel", 210, 10, 7), _x("cudaGraphLaunch", "cuda_runtime", 201, 5),
        _x("late kernel", "kernel", 300, 5, 7),  # outside every step
        {"ph": "f", "name": "flow", "cat": "ac2g", "ts": 10},
    ]
    s0, s1 = step_summaries(events, "cuda")
    assert (s0["kernels"], s0["copies"], s0["launches"]) == (2, 1, 2)
    assert s0["kernel_seconds"] == pytest.approx(50e-6) and s0["busy_seconds"] == pytest.approx(50e-6)
    assert s0["wall_seconds"] == pytest.approx(100e-6) and s0["idle_seconds"] == pytest.approx(50e-6)
    assert (s1["kernels"], s1["launches"], s1["idle_seconds"]) == (1, 1, pytest.approx(40e-6))


def test_on_a_cpu_the_kernels_are_the_outermost_aten_ops():
    ops = [_x("autograd::engine::evaluate_function: AddmmBackward0", "cpu_op", 0, 50), _x("aten::linear", "cpu_op", 1, 40),
           _x("aten::addmm", "cpu_op", 5, 30), _x("aten::relu", "cpu_op", 43, 5), _x("aten::mm", "cpu_op", 2, 3, 2)]
    assert sorted(e["name"] for e in outermost(ops)) == ["aten::mm",
                                                         "autograd::engine::evaluate_function: AddmmBackward0"]
    s = step_summaries([_x(f"{STEP}0", "user_annotation", 0, 60), *ops], "cpu")[0]
    assert s["kernels"] == 3 and s["busy_seconds"] == pytest.approx(45e-6) and s["idle_seconds"] == pytest.approx(15e-6)


def test_profiling_a_real_cpu_step_counts_its_ops():
    a, b = torch.randn(64, 64), torch.randn(64, 64)

    def step() -> None:
        torch.mm(a, b).add_(1.0).relu_()

    p = profile_step(step, torch.device("cpu"), steps=2, warmup=1)
    assert len(p["per_step"]) == 2 and all(s["kernels"] == 3 for s in p["per_step"])  # mm, add_, relu_
    assert 0 <= p["busy_seconds"] <= p["wall_seconds"] and p["idle_seconds"] >= 0 and p["unprofiled_seconds"] > 0
    assert 0 <= p["idle_fraction"] <= 1


def test_bench_profile_flag_records_every_variant_and_what_the_alignment_adds(tmp_path, monkeypatch, capsys):
    from tiny_specs import run_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(copy_paste_pair({"batch_size": 16})))
    code, out, err = run_cli(["bench", "s.yaml", "--profile", "--batch-size", "16", "--warmup", "1", "--cache-pool", "32",
                              "-o", "p.json"], capsys, monkeypatch)
    assert code == 0, err
    rec = json.loads((tmp_path / "p.json").read_text())
    v = rec["variants"]
    assert rec["kind"] == "profile" and set(v) == {"target", "guide", "guided", "cached", "alignment", "alignment_cached"}
    assert v["alignment"]["kernels"] == v["guided"]["kernels"] - v["target"]["kernels"] - v["guide"]["kernels"]
    assert v["guided"]["aten"]["syncs"] == v["target"]["aten"]["syncs"] and "guided:" in out and "ATen ops" in out
    code, _, err = run_cli(["bench", "s.yaml", "--profile", "--pairs", "1"], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_compile_modes_times_each_mode_and_its_first_step_apart(tmp_path, monkeypatch):
    """torch.compile stubbed by the identity (compiling is slow here; `make gpu-check` compiles for real)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(copy_paste_pair({"batch_size": 16})))
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: fn)
    rec = compile_modes("s.yaml", 16, "cpu", steps=2, warmup=1)
    assert rec["kind"] == "compile_modes" and set(rec["modes"]) == {"eager", "default"}
    assert rec["modes"]["eager"]["vs_eager"] == 1.0 and rec["fastest"] in rec["modes"]
    d = rec["modes"]["default"]
    assert d["first_step_seconds"] > 0 and d["compile_seconds"] is not None and d["fallback"] is None
    assert d["overhead_gram"] == pytest.approx(d["seconds"] / sum(rec["seconds"].values()))
    assert rec["train_compile_mode"] == "default" and set(rec["seconds"]) == {"target", "guide", "gram"}


def _records(folder: Path) -> None:
    """Synthetic records of every kind gpu_targets reads: one pair's fp32 bench, one throughput, one compile, one
    profile; the other pair and bf16 are missing."""
    sec = {"target": 0.008, "guide": 0.003, "gram": 0.002, "guided": 0.016, "cached": 0.0105}
    (folder / "rnn_from_transformer-cuda.json").write_text(json.dumps({
        "batch_size": 256, "seconds": sec, "overhead_gram": 16 / 13, "cache": {"overhead": 10.5 / 11},
        "by_batch_size": [{"batch_size": 64, "overhead_gram": 2.0}, {"batch_size": 256, "overhead_gram": 1.2,
                                                                     "overhead_cached": 0.9}]}))
    machine = {"torch": "2.x", "gpu": "H200", "processor": "x", "threads": 1, "cpu_count": 1}
    (folder / "fcn_deep_50x2048_from_resnet18-cuda-throughput.json").write_text(json.dumps({
        "kind": "throughput", "precision": "fp32", "batch_size": 256, "target": {"args": {"preset": "paper"}},
        "variants": {"target": {"examples_per_second": 1000.0}, "guided": {"examples_per_second": 700.0}}}))
    modes = {"eager": {"seconds": 0.016, "vs_eager": 1.0, "overhead_gram": 1.23},
             "default": {"seconds": 0.012, "vs_eager": 0.75, "overhead_gram": 0.92, "first_step_seconds": 30.0,
                         "compile_seconds": 29.0, "fallback": None, "cudagraph_skips": 0},
             "reduce-overhead": {"seconds": 0.010, "vs_eager": 0.625, "overhead_gram": 0.77, "first_step_seconds": 31.0,
                                 "compile_seconds": 30.0, "fallback": None, "cudagraph_skips": 1}}
    common = {"spec": "specs/rnn_from_transformer.yaml", "overrides": [], "device": "cuda", "batch_size": 256,
              "pairs": 4, "steps": 3, "warmup": 3, "precision": "fp32", "similarity_precision": "fp32", "machine": machine}
    (folder / "rnn_from_transformer-cuda-compile-modes.json").write_text(json.dumps({
        **common, "kind": "compile_modes", "seconds": sec, "modes": modes, "fastest": "reduce-overhead",
        "train_compile_mode": "reduce-overhead"}))
    step = {"kernels": 900.0, "copies": 0.0, "launches": 880.0, "kernel_seconds": 0.004, "busy_seconds": 0.004,
            "wall_seconds": 0.016, "idle_seconds": 0.012, "idle_fraction": 0.75, "unprofiled_seconds": 0.015,
            "aten": {"ops": 2100, "syncs": 19}}
    (folder / "rnn_from_transformer-cuda-profile.json").write_text(json.dumps({
        **common, "kind": "profile", "kernels_are": "device kernels", "cache_pool": 1024,
        "variants": {"guided": step, "target": step, "alignment": {"kernels": 120.0, "kernel_seconds": 0.001}}}))


def test_gpu_targets_says_met_or_missed_by_how_much_and_what_was_not_measured(tmp_path):
    _records(tmp_path)
    gt = _script("gpu_targets")
    rows = {r["target"]: r for r in gt.check(tmp_path, "cuda")}
    over = rows["rnn_from_transformer fp32: c/(a+b+g)"]
    assert over["status"] == "missed" and over["by"] == pytest.approx(16 / 13 - 1.15)
    assert over["note"] == "batch 256, guided step 16.00 ms; the batch-size table's row: 1.200"
    assert rows["rnn_from_transformer fp32: cached e/(a+b)"]["status"] == "met"
    assert rows["rnn_from_transformer bf16: c/(a+b+g)"]["status"] == "not measured"
    assert rows["fcn_deep_1024_from_resnet18 fp32: c/(a+b+g)"]["status"] == "not measured"
    paper = rows["paper size (preset paper) fp32: guided / target examples/s"]
    assert paper["status"] == "missed" and paper["by"] == pytest.approx(0.05)
    mode = rows["rnn_from_transformer: train.compile's mode 'reduce-overhead' against the fastest, 'reduce-overhead'"]
    assert mode["status"] == "met" and mode["value"] == 1.0
    assert rows["rnn_from_transformer: (c) device idle share of the step"]["value"] == 0.75
    text = gt.render(list(rows.values()))
    assert "MISSED" in text and "by 0.081 (7.0 % of the bound)" in text and "NOT MEASURED" in text
    doc = tmp_path / "perf.md"  # the report renders the new kinds too
    for name in ("rnn_from_transformer-cuda.json", "fcn_deep_50x2048_from_resnet18-cuda-throughput.json"):
        (tmp_path / name).unlink()  # these two synthetic records lack the fields the report shows
    _script("bench_report").main(str(tmp_path), str(doc))
    md = doc.read_text()
    assert "### Profile of one step" in md and "| 75% |" in md and "1 graphs not run as CUDA graphs" in md


def test_gpu_check_records_a_failed_part_in_one_line_and_runs_the_next(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # gpu_check imports gpu_targets from beside it
    parts = _script("gpu_check").Parts(budget=60.0)

    def oom() -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    kept: list = []
    assert parts.run("paper size", oom, kept.append) is None
    assert parts.run("profile", lambda: {"kind": "profile"}, kept.append) == {"kind": "profile"}
    assert parts.run("compile modes", lambda: 1, kept.append, expect=120.0) is None  # would not fit the budget
    assert parts.failed == {"paper size": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert kept == [{"kind": "profile"}] and parts.skipped == ["compile modes"] and set(parts.seconds) == {
        "paper size", "profile"}
    assert "Traceback" in capsys.readouterr().err
