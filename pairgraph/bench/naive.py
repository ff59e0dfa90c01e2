"""The naive guided step (d): what the paper's published approach computes, for the speedup d / c.

The target runs forward twice (once for the task loss, once with freshly registered hooks), hooks
are registered and removed on every call, grams are centred with the b×b matrix H (H K H), and
linear CKA computes each gram three times (in HSIC(X, Y), HSIC(X, X) and HSIC(Y, Y)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pairgraph.core.taps import select_output, split_call


def _naive_hsic(x: Tensor, y: Tensor) -> Tensor:
    b = x.shape[0]
    h = torch.eye(b, device=x.device) - torch.ones(b, b, device=x.device) / b
    kx, ky = x @ x.T, y @ y.T
    return torch.sum((h @ kx @ h) * (h @ ky @ h))


def naive_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA as the published code computes it (H-matrix centring, each gram thrice)."""
    return _naive_hsic(x, y) / (torch.sqrt(_naive_hsic(x, x)) * torch.sqrt(_naive_hsic(y, y)))


def _hooked_forward(model: nn.Module, x: Tensor, taps: dict[str, tuple[int | None, int]]) -> dict[str, Tensor]:
    """Register hooks, run a forward, remove them — on every call, as the published extractor does.

    A tap ``module@k`` is the k-th call of a shared module in this forward.
    """
    store: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = []
    for name, (index, axis) in taps.items():
        module, call = split_call(name)
        count = [0]

        def hook(m: nn.Module, a: Any, out: Any, name: str = name, index: int | None = index, axis: int = axis,
                 call: int | None = call, count: list[int] = count) -> None:
            if call is None or call == count[0]:
                store[name] = select_output(out, index, axis)
            count[0] += 1
        handles.append(modules[module].register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return store


class NaiveStep:
    """The naive guided step (d) on the same eager models, taps and pairs as the compiled pair."""

    def __init__(self, pair: Any, guide_taps: dict[str, tuple[int | None, int]],
                 target_taps: dict[str, tuple[int | None, int]]):
        self.pair = pair
        self.guide_taps, self.target_taps = guide_taps, target_taps

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        target = self.pair.target
        out, _ = target(x)
        task = self.pair.task_loss(out, y)
        with torch.no_grad():
            g = _hooked_forward(self.pair.guide, x, self.guide_taps)
        t = _hooked_forward(target, x, self.target_taps)  # the second forward of the target
        total = task
        for gname, tname, w in self.pair.pairs:
            a = t[tname].reshape(len(x), -1).float()
            b = g[gname].reshape(len(x), -1).float()
            total = total + w * (1 - naive_cka(a, b))
        return total
