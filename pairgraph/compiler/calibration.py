"""Calibration activations for data-driven mappers: the real pair on the first training batches.

:func:`pairgraph.compile` hands a :class:`CompileContext` to every mapper that takes a
``context`` argument (``learned``). It builds nothing until :meth:`CompileContext.activations`
is called; then it builds the pair as training would at step 0 — both networks seeded by
:func:`pairgraph.compiler.build.build_root`, the guide with the spec's weights — and yields, batch by
batch, every tap's activation of both networks on the same inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from pairgraph.compiler.build import build_networks
from pairgraph.compiler.guide_weights import resolve_guide_weights
from pairgraph.config import OPTIMIZERS, PairSpec
from pairgraph.core.distributed import pick_device
from pairgraph.core.layer_graph import LayerGraph
from pairgraph.core.loss import Balance, Feed, GuidedPair, WeightSchedule
from pairgraph.core.objectives import Baseline
from pairgraph.core.step import apply_gradients
from pairgraph.core.taps import tap_network
from pairgraph.errors import PairgraphError
from pairgraph.tasks import get_task


class TapActivations(NamedTuple):
    """One calibration batch: tap name → activation (batch first) per side, and the padding mask."""

    guide: dict[str, Tensor]
    target: dict[str, Tensor]
    mask: Tensor | None


class _Rng:
    """A private, seeded global RNG: swapped in only while calibration computes, never across a yield."""

    def __init__(self, seed: int, device: torch.device):
        self.devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self) -> list[Tensor]:
        return [torch.get_rng_state()] + [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.state[0])
            for d, s in zip(self.devices, self.state[1:]):
                torch.cuda.set_rng_state(s, d)
            yield
            self.state = self._get()


def _quiet_dropout(net: nn.Module) -> None:
    """Dropout off (the mapping should not depend on its noise); BatchNorm stays on batch statistics."""
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd | nn.MultiheadAttention):
            m.eval()


@dataclass
class CompileContext:
    """The :class:`pairgraph.compiler.mapping.MappingContext` that compile passes: spec, traced graphs, calibration data."""

    spec: PairSpec
    guide: LayerGraph
    target: LayerGraph
    notify: Callable[[str], None] | None = None

    def _train_split(self, task: Any) -> Any:
        kind = self.spec.task.get("kind")
        try:
            data = task.datasets(self.spec.train.seed)
        except PairgraphError as e:
            raise PairgraphError(f"mapping 'learned' calibrates on the task's training data: {e.message}",
                                 f"{e.hint or 'make the data available'} (or map with uniform/depth, which need no data)") from None
        except OSError as e:
            raise PairgraphError(f"mapping 'learned' cannot read the training data of task {kind!r}: {e}",
                                 "make the task's data available (task.data_dir) or map with uniform/depth") from None
        train = data.get("train")
        if train is None or len(train) < 2:
            raise PairgraphError(f"mapping 'learned' needs training examples, and task {kind!r} has none",
                                 "enlarge the task (task.size / train_size)")
        return train

    def activations(self, batches: int, batch_size: int, warmup_steps: int = 0) -> Iterator[TapActivations]:
        """Yield ``batches`` calibration batches of ``batch_size`` training examples (fewer if the split is smaller).

        Examples come from a permutation of the training split seeded by ``train.seed``; after
        ``warmup_steps`` task-loss steps (the spec's optimizer, on the batches that follow) the target
        runs in training mode without dropout, the guide frozen as in training. The caller's RNG
        state is left untouched.
        """
        spec = self.spec
        task = get_task(spec.task)
        weights = resolve_guide_weights(spec, baseline_too=True, purpose="mapping 'learned'")
        train = self._train_split(task)
        device = pick_device(spec.train.device)
        n = len(train)
        batch_size = min(batch_size, n)
        batches = max(1, min(batches, n // batch_size))
        if self.notify:
            self.notify(f"mapping 'learned': measuring {len(self.guide)}×{len(self.target)} similarities on "
                        f"{batches}×{batch_size} training examples"
                        + (f" after {warmup_steps} warm-up steps" if warmup_steps else ""))
        rng = _Rng(spec.train.seed, device)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(spec.train.seed))

        def batch(k: int) -> list[Tensor]:
            idx = [int(order[(k * batch_size + i) % n]) for i in range(batch_size)]
            return [b.to(device) for b in default_collate([train[i] for i in idx])]

        def network(graph: LayerGraph) -> Callable[[nn.Module], nn.Module]:
            return tap_network(graph.method, [t.spec() for t in graph.taps], graph.output_key)

        with rng.active():
            guide, target = build_networks(spec, network(self.guide), network(self.target), task, device, weights)
            pair = GuidedPair(guide, target, [], Baseline(), task_loss=task.loss, schedule=WeightSchedule.from_spec(spec),
                              balance=Balance.from_spec(spec), feed=Feed.from_spec(spec, task))  # the task alone
            if warmup_steps:
                pair.train()
                opt = OPTIMIZERS.get(spec.train.optimizer)(spec.train, pair.trained_parameters())
                for step in range(warmup_steps):
                    x, y = batch(batches + step)
                    loss = pair(x, y).loss  # the pair's forward, as in a training step: the task loss alone
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    apply_gradients(opt, pair.trained_parameters(), spec.train.grad_clip)  # the trainer's step
                del opt
            pair.train()  # the target as the loss sees it (BatchNorm on batch statistics); the guide frozen
            _quiet_dropout(pair.target)
        for k in range(batches):
            with rng.active(), torch.no_grad():
                x, _ = batch(k)
                _, g = pair.guide(x)
                _, t = pair.target(x)
                mask = task.valid_mask(x) if spec.similarity.mask_padding else None
            yield TapActivations(g, t, mask)
