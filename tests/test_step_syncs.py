"""No host sync in a guided step: the alignment adds none, and the trainer reads losses once per log interval
(issue #28)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.bench.ops import SYNC_OP, OpCounter, count_variants
from pairgraph.bench.variants import build_variants
from pairgraph.core.loss import GuidedPair
from pairgraph.training.trainer import Trainer


def _spec(**train):
    return copy_paste_pair({"batch_size": 16, "steps": 8, "eval_every": 8, "lr": 3e-3, "seed": 1, **train})


def test_a_guided_step_syncs_no_more_than_the_target_step(tmp_path):
    cp = pairgraph.compile(_spec(), tmp_path / "b", render=False, notify=None)
    fns, _ = build_variants(cp, 16, torch.device("cpu"), cache_pool=32, only=("target", "guide", "guided", "cached"))
    ops = count_variants(fns)
    assert ops["alignment"]["syncs"] == 0 and ops["alignment_cached"]["syncs"] == 0, ops
    assert ops["guided"]["syncs"] == ops["target"]["syncs"]  # the optimizer's own, if any


def _train_counting(tmp_path, monkeypatch, log_every: int) -> tuple[list[dict], dict[str, int]]:
    """Train 8 steps; count host syncs in the steps (beyond the optimizer's) and in logging, and the reads."""
    counts = {"forward": 0, "check": 0, "backward": 0, "update": 0, "optimizer": 0, "log": 0, "reads": 0}
    log, flush, opt_step = Trainer._log_step, Trainer._flush, torch.optim.AdamW.step

    def counted(key, fn):
        def wrapper(*args, **kwargs):
            with OpCounter() as c:
                out = fn(*args, **kwargs)
            counts[key] += c.counts[SYNC_OP]
            return out
        return wrapper

    def reading(self, loop):
        counts["reads"] += 1
        return flush(self, loop)

    monkeypatch.setattr(GuidedPair, "forward", counted("forward", GuidedPair.forward))
    monkeypatch.setattr(Trainer, "_check_finite", counted("check", Trainer._check_finite))
    monkeypatch.setattr(torch.Tensor, "backward", counted("backward", torch.Tensor.backward))
    monkeypatch.setattr(Trainer, "_update", counted("update", Trainer._update))
    monkeypatch.setattr(Trainer, "_log_step", counted("log", log))
    monkeypatch.setattr(Trainer, "_flush", reading)
    monkeypatch.setattr(torch.optim.AdamW, "step", counted("optimizer", opt_step))
    cp = pairgraph.compile(_spec(log_every=log_every), tmp_path / f"b{log_every}", render=False, notify=None)
    cp.train(runs_dir=tmp_path, run_id=f"every{log_every}", progress=False)
    rows = [json.loads(line) for line in (Path(tmp_path) / cp.spec.name / f"every{log_every}" / "metrics.jsonl")
            .read_text().splitlines()]
    return [r for r in rows if "split" not in r], counts


def test_the_trainer_reads_the_losses_once_per_log_interval_and_logs_every_step(tmp_path, monkeypatch):
    rows, counts = _train_counting(tmp_path, monkeypatch, 4)
    assert counts["forward"] == counts["check"] == counts["backward"] == 0, counts  # no sync of their own
    assert counts["update"] == counts["optimizer"]  # the clip adds none to the optimizer's own, if any
    assert counts["log"] == 0 and counts["reads"] == 2  # steps 4 and 8
    every, _ = _train_counting(tmp_path, monkeypatch, 1)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows == every  # the same rows, read in two batches instead of eight


@pytest.mark.gpu
def test_guided_steps_on_a_gpu_never_sync(tmp_path):
    cp = pairgraph.compile(_spec(), tmp_path / "b", render=False, notify=None)
    fns, _ = build_variants(cp, 16, torch.device("cuda"), cache_pool=32, only=("guided", "cached"))
    for fn in fns.values():
        fn()  # the first step allocates optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            for fn in fns.values():
                fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
