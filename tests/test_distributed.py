"""DDP on CPU (gloo, 2 processes): the alignment loss is computed over the global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pairgraph
from pairgraph.compiler.pipeline import import_generated
from pairgraph.core import distributed

ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(mode: str = "guidance", **train) -> dict:
    return {
        "guidance": {"mode": mode, "projector_dim": 8},
        "name": "ddp",
        "task": {"kind": "copy_paste", "length": [2, 4], "size": 400},
        "guide": {"model": "transformer_decoder", "args": {"num_layers": 2, "d_model": 32, "nhead": 4},
                  "layers": {"include": ["blocks.*"]}},
        "target": {"model": "rnn", "args": {"num_layers": 2, "hidden": 32}},
        "train": {"batch_size": 16, "steps": 6, "eval_every": 3, "lr": 3e-3, "seed": 2, **train},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(pair_dir: Path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 14, (16, 10), generator=g)
    x[:, 8:] = 0  # some padding, so the mask is gathered too
    y = torch.randint(0, 14, (16, 10), generator=g)
    return x, y


def _worker(rank: int, world: int, port: int, pair_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    pair = import_generated(Path(pair_dir) / "guided_pair.py", "guided_pair_worker").build()
    pair.target = torch.nn.parallel.DistributedDataParallel(pair.target)
    pair.global_batch = True
    x, y = _batch(Path(pair_dir))
    shard = slice(rank * 8, (rank + 1) * 8)
    res = pair(x[shard], y[shard], 0)
    res.loss.backward()
    if rank == 0:
        grads = {k: p.grad for k, p in pair.target.module.named_parameters()}
        if pair.projectors is not None:  # outside DDP: every rank computes the global loss, so they agree
            grads.update({f"projectors.{k}": p.grad for k, p in pair.projectors.named_parameters()})
        torch.save({"guidance": res.guidance_loss.detach(), "terms": {k: v.detach() for k, v in res.terms.items()},
                    "grads": grads}, out)
    distributed.end_worker()  # barrier, destroy, os._exit(0): the interpreter's teardown can abort after gloo's all_gather


@pytest.mark.parametrize("mode", ["guidance", "fitnets"])
def test_distributed_step_equals_single_process_on_global_batch(mode, tmp_path):
    cp = pairgraph.compile(tiny_spec(mode), tmp_path / "pair", render=False)
    out = tmp_path / "rank0.pt"
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "pair"), str(out)), nprocs=2,
                       start_method="spawn")
    ddp = torch.load(out, weights_only=True)
    pair = cp.build()
    x, y = _batch(tmp_path)
    res = pair(x, y, 0)
    res.loss.backward()
    torch.testing.assert_close(ddp["guidance"], res.guidance_loss.detach(), atol=1e-5, rtol=1e-5)
    for k, v in res.terms.items():
        torch.testing.assert_close(ddp["terms"][k], v.detach(), atol=1e-5, rtol=1e-5)
    params = dict(pair.target.named_parameters())
    if pair.projectors is not None:
        params.update({f"projectors.{k}": p for k, p in pair.projectors.named_parameters()})
    assert set(ddp["grads"]) == set(params)
    for k, p in params.items():
        torch.testing.assert_close(ddp["grads"][k], p.grad, atol=1e-5, rtol=1e-4)


def test_per_rank_cka_would_differ(tmp_path):
    """The reason for gathering: CKA of half batches is not CKA of the whole batch."""
    cp = pairgraph.compile(tiny_spec(), tmp_path / "pair", render=False)
    pair = cp.build()
    x, y = _batch(tmp_path)
    whole = pair(x, y, 0).guidance_loss
    halves = (pair(x[:8], y[:8], 0).guidance_loss + pair(x[8:], y[8:], 0).guidance_loss) / 2
    assert abs(whole.item() - halves.item()) > 1e-3


def test_two_process_run_matches_one_process_run(tmp_path):
    """`pairgraph train --nproc 2` (torchrun, gloo) follows the 1-process loss curve on the same global batch."""
    import yaml

    # parity: one label per sample, so each rank's mean loss weighs samples exactly as one process does
    # (with per-token losses over a variable number of real tokens, DDP averages per-rank means instead)
    parity = {"name": "ddp", "task": {"kind": "parity", "length": [2, 10], "size": 400},
              "guide": {"model": "rnn_classifier"}, "target": {"model": "transformer_classifier"},
              "train": {"batch_size": 16, "steps": 6, "eval_every": 3, "lr": 3e-3, "seed": 2}}
    spec = tmp_path / "ddp.yaml"
    spec.write_text(yaml.safe_dump(parity))
    one = pairgraph.compile(spec, tmp_path / "b1", render=False).train(runs_dir=tmp_path / "runs", run_id="one",
                                                                       progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "pairgraph", "train", str(spec), "--nproc", "2", "--run-id", "two",
                          "--runs-dir", str(tmp_path / "runs"), "--no-progress"], capture_output=True, text=True,
                         env=env, timeout=300, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    curves = {}
    for rid in ("one", "two"):
        lines = [json.loads(ln) for ln in (tmp_path / "runs" / "ddp" / rid / "metrics.jsonl").read_text().splitlines()]
        curves[rid] = [(r["step"], r.get("task_loss", r.get("loss")), r.get("guidance_loss")) for r in lines]
    assert [c[0] for c in curves["one"]] == [c[0] for c in curves["two"]]
    for a, b in zip(curves["one"], curves["two"]):
        assert a[1] == pytest.approx(b[1], abs=1e-4) and (a[2] is None or a[2] == pytest.approx(b[2], abs=1e-4))
    summary = json.loads((tmp_path / "runs" / "ddp" / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["test"] == pytest.approx(one["test"], abs=1e-4)


def test_end_worker_flushes_and_exits_with_its_code():
    """A finished worker ends by os._exit (no interpreter teardown), so what it printed must be flushed first."""
    code = ("import sys; from pairgraph.core.distributed import end_worker; "
            "sys.stdout.write('summary'); sys.stderr.write('notice'); end_worker(3)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # piped stdout is buffered, as under a launcher
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, "summary", "notice")
