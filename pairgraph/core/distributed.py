"""Distributed training on PyTorch's own engine: torchrun + DistributedDataParallel.

CKA is a statistic of the whole batch (its gram compares every sample with every other), so the
alignment loss of a data-parallel step must be computed over the GLOBAL batch: per-rank CKA on
local batches is a different, noisier quantity. pairgraph all-gathers each mapped tap across
ranks (``torch.distributed.nn.functional.all_gather``, which is differentiable: the backward
reduce-scatters the gradient, so each rank's shard receives its part of the global loss's
gradient). Every rank then computes the same global loss; DDP's gradient averaging turns the
world-size-times-counted alignment gradient back into exactly the single-process gradient of
(mean task loss over the global batch + global alignment loss).

Communication per step: for every tap that takes part in a pair, (N−1)/N · B · d activations in
the forward (B the global batch, d the tap's features per sample, N the world size), plus the same
again in the backward for target taps — in fp32, 4 bytes each; plus DDP's own gradient all-reduce.
"""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from pairgraph.errors import PairgraphError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group: NCCL on GPU, gloo on CPU (idempotent)."""
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def gather_batch(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along the batch axis, differentiably (identity when alone)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a functional collective without gloo autograd
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(t.contiguous()), dim=0)


def mean_over_ranks(value: float) -> float:
    """The average of a scalar across ranks (for logging the global-batch loss)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (e.g. a run id made from the clock)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def no_sync(module: torch.nn.Module, skip: bool) -> AbstractContextManager[Any]:
    """Under torchrun, gradients are averaged over ranks once per optimizer step, at its last micro-batch:
    ``module.no_sync()`` on the others (a DDP-wrapped target); a plain context elsewhere."""
    if skip and isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return nullcontext()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_worker(code: int = 0) -> NoReturn:
    """End a worker process of a distributed run whose work is done and saved: every rank past its last
    collective (a barrier), the group destroyed, stdout and stderr flushed, then ``os._exit(code)``.

    Why not return and let Python exit: once gloo has run an ``all_gather`` (``gather_batch``, every
    global-batch alignment step), ``destroy_process_group`` no longer frees its ``ProcessGroupGloo``
    (torch 2.14: its ``pt_gloo_runloop`` and ``gloo_tcp_loop`` threads outlive the call and a ``gc``,
    with no Python object left holding the group; after an ``all_reduce`` alone they are gone). The
    interpreter's teardown then runs with those threads alive, and now and then a worker aborts there
    (SIGABRT, "terminate called without an active exception": a C++ thread destroyed while still
    joinable; tests/test_distributed.py saw it about once in 8 to 14 runs) after its work was done, so
    the launcher (torchrun, ``torch.multiprocessing``) reports a failed worker. ``os._exit`` skips that
    teardown; nothing of the run is lost, since every file the run writes is closed before this is called.
    """
    barrier()
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def pick_device(name: str) -> torch.device:
    """``train.device`` as a torch device: ``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PairgraphError(f"train.device is {name!r} but CUDA is not available", "use train.device=auto or cpu")
    return torch.device(name)
