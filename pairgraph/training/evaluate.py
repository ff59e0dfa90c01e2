"""Evaluation: loss and the task's metrics on a split, optionally on a fixed random subset."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from pairgraph.tasks import predicted_class
from pairgraph.training.data import to_device


def eval_subset(dataset: Any, batches: int | None, batch_size: int, seed: int) -> Any:
    """``batches`` batches of a fixed, seeded random subset — never a prefix, which would be a
    biased sample of a split stored in class order; the whole split when ``batches`` is None."""
    if batches is None or batches * batch_size >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(dataset), generator=g)[: batches * batch_size].sort().values
    return torch.utils.data.Subset(dataset, keep.tolist())


@torch.no_grad()
def evaluate(target: nn.Module, dataset: Any, task: Any, *, batch_size: int, device: torch.device,
             autocast: Callable[[], AbstractContextManager[Any]], num_workers: int = 0,
             predictions: list | None = None) -> dict[str, float]:
    """Loss and task metrics of ``target`` (returning ``(output, taps)``) on ``dataset``.

    With ``predictions`` (a list), classifiers append ``(predicted class, label)`` per sample (for
    error consistency, paper §5.4). The target is left in training mode.
    """
    target.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    loss_sum, n = 0.0, 0
    sums: dict[str, list[float]] = {}
    for batch in loader:
        x, y = to_device(batch, device)
        with autocast():
            out, _ = target(x)
        out = out.float()
        loss_sum += float(task.loss(out, y)) * len(x)
        if predictions is not None and out.dim() == 2:
            predictions.extend(zip(predicted_class(out).tolist(), y.reshape(-1).long().tolist()))
        n += len(x)
        for k, (v, c) in task.metrics(out, y).items():
            acc = sums.setdefault(k, [0.0, 0])
            acc[0] += float(v)
            acc[1] += int(c)
    target.train()
    result = {"loss": loss_sum / max(n, 1)}
    result.update({k: v / max(c, 1) for k, (v, c) in sums.items()})
    return task.derived_metrics(result)
