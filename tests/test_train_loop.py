"""The training loop researchers expect (issue #20): lr schedules, gradient accumulation, W&B logging."""

from __future__ import annotations

import glob
import itertools
import json
import math
import struct
import sys
from pathlib import Path

import pytest
import torch
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.config import parse_spec
from pairgraph.config.diff import spec_diff
from pairgraph.core.weights import load_weights
from pairgraph.errors import PairgraphError
from pairgraph.training import resume_run
from pairgraph.training.data import EpochBatches
from pairgraph.training.optim import make_scheduler


def lrs(schedule, total: int, lr: float = 1.0) -> list[float]:
    """The lr of each optimizer step 0..total-1, then the lr once the last step is done."""
    cfg = parse_spec({"train": {"lr": lr, "schedule": schedule}}).train
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, out = make_scheduler(cfg, opt, total), []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return [*out, opt.param_groups[0]["lr"]]


def test_schedules_give_the_documented_lr_at_chosen_steps():
    assert lrs("constant", 5, lr=3e-4) == [3e-4] * 6  # exactly train.lr: today's behaviour
    step = lrs({"kind": "step", "every": 4, "gamma": 0.5}, 10)
    assert (step[0], step[3], step[4], step[7], step[8]) == (1.0, 1.0, 0.5, 0.5, 0.25)  # 0, every-1, every, 2·every
    cos = lrs({"kind": "cosine", "min_lr": 0.1}, 10)
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.55) and cos[10] == pytest.approx(0.1)  # start, mid, end
    assert all(a > b for a, b in itertools.pairwise(cos))
    warm = lrs({"kind": "cosine", "warmup": 3}, 13)
    assert warm[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # (s+1)/(W+1), then the decay from lr
    assert warm[8] == pytest.approx(0.5) and warm[13] == pytest.approx(0.0, abs=1e-12)
    assert lrs({"kind": "step", "every": 2, "warmup": 1}, 6) == pytest.approx([0.5, 1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(PairgraphError, match=r"warmup \(4\) must be below the run's 4 optimizer steps"):
        lrs({"kind": "cosine", "warmup": 4}, 4)


def tiny(**train) -> dict:
    return copy_paste_pair({"batch_size": 8, "steps": 6, "eval_every": 3, "lr": 3e-3, "seed": 1, **train})


def metrics(run) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact_under_a_cosine_schedule_with_accumulation(tmp_path):
    spec = tiny(schedule={"kind": "cosine", "warmup": 2}, accumulate=2)
    full = pairgraph.compile(spec, tmp_path / "b1", render=False).train(runs_dir=tmp_path, run_id="full", progress=False)
    cp = pairgraph.compile(spec, tmp_path / "b2", render=False)
    assert cp.train(runs_dir=tmp_path, run_id="cut", progress=False, stop_after=4)["stopped_at"] == 4
    resumed = resume_run(tmp_path / "tiny" / "cut", progress=False)  # from the step-3 checkpoint
    assert resumed["test"] == full["test"] and resumed["best_val_loss"] == full["best_val_loss"]
    cut, ref = metrics(tmp_path / "tiny" / "cut"), metrics(tmp_path / "tiny" / "full")
    assert [r.get("loss") for r in cut] == [r.get("loss") for r in ref]
    lr = [r["lr"] for r in ref if "lr" in r]
    assert lr[:2] == pytest.approx([3e-3 / 3, 2 * 3e-3 / 3]) and lr[2] == 3e-3 and lr[2] > lr[3] > lr[4] > lr[5]
    assert [r["lr"] for r in cut if "lr" in r] == lr
    with pytest.raises(PairgraphError, match="cannot resume .* train.steps"):  # the cosine spans the run's length
        resume_run(tmp_path / "tiny" / "full", progress=False, overrides=["train.steps=12"])
    # the guide cache serves each micro-batch by its example numbers: the same losses, no guide forward
    cached = pairgraph.compile(spec, tmp_path / "b3", ["guidance.cache_guide=true"], render=False, notify=None).train(
        runs_dir=tmp_path, run_id="cached", progress=False)
    assert cached["guide_calls"] == 0 and full["guide_calls"] == 12  # 6 steps × 2 micro-batches
    assert [r.get("loss") for r in metrics(tmp_path / "tiny" / "cached")] == pytest.approx(
        [r.get("loss") for r in ref], rel=1e-4)


def test_micro_batches_of_a_step_are_exactly_the_large_batch_across_epochs():
    """52 examples: 4 steps of 12 per epoch; micro-batches of 4 cut from each step's 12 (not 13 per epoch)."""
    micro = list(itertools.islice(iter(EpochBatches(52, 4, seed=3, accumulate=3)), 30))
    large = list(itertools.islice(iter(EpochBatches(52, 12, seed=3)), 10))
    assert [list(itertools.chain(*micro[3 * k:3 * k + 3])) for k in range(10)] == large
    resumed = list(itertools.islice(iter(EpochBatches(52, 4, seed=3, accumulate=3, start_step=6)), 6))
    assert resumed == micro[18:24]  # a resumed run starts at its optimizer step's first micro-batch


def test_accumulating_two_micro_batches_equals_one_batch_twice_the_size(tmp_path):
    """Baseline, fixed-length copy-paste (every example has the same number of loss terms), a target
    without BatchNorm or dropout, SGD (scale-sensitive, unlike Adam): the same parameters."""
    def run(run_id: str, **train) -> dict:
        spec = copy_paste_pair({"steps": 5, "eval_every": 5, "lr": 0.5, "optimizer": "sgd", "seed": 2, **train},
                               guidance={"mode": "baseline"})
        spec["task"]["length"] = [3, 3]
        pairgraph.compile(spec, tmp_path / run_id, render=False).train(runs_dir=tmp_path, run_id=run_id,
                                                                      progress=False)
        model = pairgraph.compile(spec, tmp_path / run_id, render=False).build().target
        load_weights(model, tmp_path / "tiny" / run_id / "checkpoints" / "last.safetensors", "target")
        return {"params": model.state_dict(), "metrics": metrics(tmp_path / "tiny" / run_id)}

    micro, large = run("micro", batch_size=8, accumulate=2), run("large", batch_size=16)
    for k, v in large["params"].items():
        torch.testing.assert_close(micro["params"][k], v, atol=1e-5, rtol=1e-5)
    assert [r["step"] for r in micro["metrics"]] == [r["step"] for r in large["metrics"]]  # optimizer steps
    for a, b in zip(micro["metrics"], large["metrics"]):  # the step's loss: the micro-batches' mean
        assert a.get("task_loss", a["loss"]) == pytest.approx(b.get("task_loss", b["loss"]), abs=1e-5)


def wandb_history(run_file: str) -> list[dict]:
    """The history rows of an offline W&B run file (LevelDB-style log records of protobuf ``Record``s)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, rows = Path(run_file).read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


def test_wandb_logs_the_metrics_offline_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "data"),
                       "WANDB_CONFIG_DIR": str(tmp_path / "config")}.items():
        monkeypatch.setenv(var, value)
    spec = tiny(log=["wandb"])
    cp = pairgraph.compile(spec, tmp_path / "b", render=False)
    cp.train(runs_dir=tmp_path / "runs", run_id="wb", progress=False, stop_after=3)
    resume_run(tmp_path / "runs" / "tiny" / "wb", progress=False)
    run = tmp_path / "runs" / "tiny" / "wb"
    assert not (run / "tb").exists()  # only what train.log names (metrics.jsonl always)
    wb_id = json.loads((run / "wandb.json").read_text())["id"]
    assert wb_id.startswith("wb-")
    folders = sorted(glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{wb_id}*")))  # -1: a session in the same second
    assert len(folders) == 2  # the first session and the resumed one: one W&B run id
    rows = [r for f in folders for r in wandb_history(glob.glob(f + "/run-*.wandb")[0])]
    train = {r["_step"]: r for r in rows if "train/loss" in r}
    assert sorted(train) == list(range(1, 7))
    ours = {r["step"]: r for r in metrics(run) if "split" not in r}
    assert all(train[s]["train/task_loss"] == pytest.approx(ours[s]["task_loss"]) for s in train)
    assert all(train[s]["train/lr"] == ours[s]["lr"] == 3e-3 for s in train)
    assert {r["_step"] for r in rows if "val/loss" in r} == {3, 6}


def test_wandb_not_installed_is_one_line_before_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb → ImportError
    cp = pairgraph.compile(tiny(log=["tensorboard", "wandb"]), tmp_path / "b", render=False)
    with pytest.raises(PairgraphError, match=r"wandb, which is not installed — fix: pip install 'pairgraph\[wandb\]'"):
        cp.train(runs_dir=tmp_path / "runs", run_id="x", progress=False)
    assert not (tmp_path / "runs" / "tiny" / "x").exists()


def test_a_warmup_as_long_as_an_epochs_run_is_refused_before_the_run_starts(tmp_path):
    """320 training examples, 1 epoch of 4 × 16: 5 optimizer steps (only the trainer knows it)."""
    spec = copy_paste_pair({"batch_size": 16, "accumulate": 4, "epochs": 1, "schedule": {"kind": "cosine", "warmup": 5}})
    cp = pairgraph.compile(spec, tmp_path / "b", render=False)
    with pytest.raises(PairgraphError, match=r"warmup \(5\) must be below the run's 5 optimizer steps"):
        cp.train(runs_dir=tmp_path / "runs", run_id="x", progress=False)
    assert not (tmp_path / "runs" / "tiny" / "x").exists()


def test_log_is_a_runtime_field_and_schedules_and_accumulation_are_not():
    base = parse_spec(tiny()).resolved()

    def diff(**train):
        return spec_diff(base, parse_spec(tiny(**train)).resolved())

    assert diff(log=["tensorboard", "wandb"]) == [] and diff(log="wandb") == []
    assert diff(accumulate=2) == ["train.accumulate: 1 → 2"]
    assert diff(schedule="cosine") == ["train.schedule.kind: 'constant' → 'cosine'"]
    assert math.isclose(parse_spec(tiny(schedule={"kind": "cosine", "min_lr": 1e-4})).train.schedule.min_lr, 1e-4)
