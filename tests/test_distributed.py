"""DDP on CPU (gloo, 2 processes): the alignment loss is computed over the global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pairgraph
from pairgraph.compiler import import_generated

ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(**train) -> dict:
    return {
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
    pair = import_generated(Path(pair_dir) / "guided_pair.py").build()
    pair.target = torch.nn.parallel.DistributedDataParallel(pair.target)
    pair.global_batch = True
    x, y = _batch(Path(pair_dir))
    shard = slice(rank * 8, (rank + 1) * 8)
    res = pair(x[shard], y[shard], 0)
    res.loss.backward()
    if rank == 0:
        grads = {k: p.grad for k, p in pair.target.module.named_parameters()}
        torch.save({"guidance": res.guidance_loss.detach(), "terms": {k: v.detach() for k, v in res.terms.items()},
                    "grads": grads}, out)
    dist.destroy_process_group()


def test_distributed_step_equals_single_process_on_global_batch(tmp_path):
    cp = pairgraph.compile(tiny_spec(), tmp_path / "pair", render=False)
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
    for k, p in pair.target.named_parameters():
        torch.testing.assert_close(ddp["grads"][k], p.grad, atol=1e-5, rtol=1e-4)


def test_per_rank_cka_would_differ(tmp_path):
    """The reason for gathering: CKA of half batches is not CKA of the whole batch."""
    cp = pairgraph.compile(tiny_spec(), tmp_path / "pair", render=False)
    pair = cp.build()
    x, y = _batch(tmp_path)
    whole = pair(x, y, 0).guidance_loss
    halves = (pair(x[:8], y[:8], 0).guidance_loss + pair(x[8:], y[8:], 0).guidance_loss) / 2
    assert abs(whole.item() - halves.item()) > 1e-3
