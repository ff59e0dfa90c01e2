"""Data order for training: a seeded permutation per epoch that can start at any step (exact resume)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from pairgraph.errors import PairgraphError


class EpochBatches:
    """Batches of a seeded permutation per epoch, starting at any optimizer step (for resume).

    With ``accumulate`` N, optimizer step k takes the k-th slice of N × ``batch_size`` examples of its
    epoch's permutation and yields it as N consecutive micro-batches of ``batch_size``: together they
    are exactly the batch that ``batch_size`` N × B without accumulation would give.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1,
                 accumulate: int = 1):
        step_size = batch_size * accumulate
        if n < step_size:
            what = f"train.batch_size={batch_size}" + (f" × train.accumulate={accumulate}" if accumulate > 1 else "")
            raise PairgraphError(f"the training split has {n} examples, fewer than {what}",
                                 "lower train.batch_size or enlarge the dataset (task size)")
        self.n, self.bs, self.seed, self.start, self.accumulate = n, batch_size, seed, start_step, accumulate
        self.per_epoch = n // step_size  # drop_last: CKA wants the same batch size every step
        self.rank, self.world = rank, world  # each rank takes its contiguous slice of the global batch

    def __iter__(self) -> Iterator[list[int]]:
        step, size = self.start, self.bs * self.accumulate
        while True:
            epoch, pos = divmod(step, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            for p in range(pos, self.per_epoch):
                for m in range(self.accumulate):
                    batch = perm[p * size + m * self.bs:p * size + (m + 1) * self.bs]
                    local = self.bs // self.world
                    yield batch[self.rank * local:(self.rank + 1) * local].tolist()
                step += 1


class Indexed(torch.utils.data.Dataset):
    """A dataset whose items also carry their example number (for the guide cache)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return (*self.dataset[i], torch.tensor(i))


def to_device(batch: Any, device: torch.device) -> list[Any]:
    return [b.to(device, non_blocking=True) for b in batch]
