"""ATen ops and host syncs per step: whether a step is bound by kernel launches, counted on any device.

Every ATen op a step dispatches is at least one kernel launch on a GPU; at small sizes a launch costs more
than the work it starts, so a step's op count says, on a CPU too, whether it would be launch-bound there.
A host sync (``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``) makes the host wait for
the device. :class:`OpCounter` is a ``TorchDispatchMode`` that counts both (forward and backward: the
autograd engine runs the backward's ops under the mode too). :func:`count_step` counts one call of a step
after one uncounted call (first calls allocate optimizer state and warm caches).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

#: the ATen op a host sync dispatches
SYNC_OP = "aten._local_scalar_dense"


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside the block, by name (``aten.mm``…): ``with OpCounter() as c: …``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> int:
        return sum(self.counts.values())

    @property
    def syncs(self) -> int:
        return self.counts[SYNC_OP]


def count_step(step: Callable[[], Any], warm: bool = True) -> dict[str, int]:
    """``{"ops": …, "syncs": …}`` of one call of ``step`` (after one uncounted call when ``warm``)."""
    if warm:
        step()
    with OpCounter() as c:
        step()
    return {"ops": c.ops, "syncs": c.syncs}


def count_variants(fns: dict[str, Callable[[], None]]) -> dict[str, Any]:
    """Ops and syncs per step of each variant, and the alignment's own: (c) − (a) − (b), (e) − (a)."""
    out: dict[str, Any] = {v: count_step(f) for v, f in fns.items()}
    if {"target", "guide", "guided"} <= set(out):
        out["alignment"] = {k: out["guided"][k] - out["target"][k] - out["guide"][k] for k in ("ops", "syncs")}
    if {"target", "cached"} <= set(out):
        out["alignment_cached"] = {k: out["cached"][k] - out["target"][k] for k in ("ops", "syncs")}
    return out
