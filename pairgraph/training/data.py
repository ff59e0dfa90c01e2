"""Data order for training: a seeded permutation per epoch that can start at any step (exact resume)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from pairgraph.errors import PairgraphError


class EpochBatches:
    """Batches of a seeded permutation per epoch, starting at any global step (for resume)."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1):
        if n < batch_size:
            raise PairgraphError(f"the training split has {n} examples, fewer than train.batch_size={batch_size}",
                                 "lower train.batch_size or enlarge the dataset (task size)")
        self.n, self.bs, self.seed, self.start = n, batch_size, seed, start_step
        self.per_epoch = n // batch_size  # drop_last: CKA wants the same batch size every step
        self.rank, self.world = rank, world  # each rank takes its contiguous slice of the global batch

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            epoch, pos = divmod(step, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            for p in range(pos, self.per_epoch):
                batch = perm[p * self.bs:(p + 1) * self.bs]
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
