"""When a run caches its guide (:class:`pairgraph.core.cache.GuideCache`), and building that cache.

``guidance.cache_guide`` is ``null`` by default: the cache turns itself on whenever it is exact and
pays for itself, with a one-line notice; ``true`` forces it (a run where it would be inexact is
refused with the reason); ``false`` turns it off.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pairgraph.config import PairSpec
from pairgraph.core.cache import CacheTooLarge
from pairgraph.core.loss import GuidedPair
from pairgraph.core.objectives import objective_class
from pairgraph.core.similarity import get_measure
from pairgraph.errors import PairgraphError

OFF_HINT = "set guidance.cache_guide: false"


def inexact(spec: PairSpec, distributed: bool = False) -> str | None:
    """Why a guide cache would not give exactly the guide's taps of every step (None: it would)."""
    g, s = spec.guidance, spec.similarity
    if not objective_class(g.mode).compares_similarity:
        return f"guidance.mode is {g.mode} (the cache serves CKA-style guidance only)"
    if spec.task.get("augment") not in (None, False, "none"):
        return "task.augment is on: the guide sees another view of each example every step"
    if g.guide_input != "same":
        return "guidance.guide_input is noise"
    if g.guide_bn != "eval":
        return "guidance.guide_bn is batch: the guide's statistics depend on the batch"
    if s.sequence != "flatten":
        return f"similarity.sequence is {s.sequence} (the cache keeps flattened rows)"
    if not get_measure(s.measure).supports_gram:
        return f"similarity.measure {s.measure} needs raw rows of wide taps"
    if distributed:
        return "several processes (torchrun) share the batch"
    return None


def not_worth_it(spec: PairSpec, examples: int, steps: int) -> str | None:
    """Why an exact cache would cost more guide forwards than it saves (None: it saves)."""
    batch = spec.train.batch_size * spec.train.accumulate
    guided = min(steps, spec.guidance.until_step) if spec.guidance.until_step is not None else steps
    if guided * batch < examples:
        return (f"the run shows the guide {guided * batch:,} examples, fewer than the {examples:,} a cache "
                "pass would run")
    return None


def build_cache(spec: PairSpec, pair: GuidedPair, train: Any, steps: int, distributed: bool,
                progress: bool, verbose: bool = True) -> bool:
    """Cache the guide over the training set when ``guidance.cache_guide`` asks or (null) when it is exact
    and saves guide forwards; with ``verbose``, prints one line saying what happened (``progress``: a bar on a
    terminal while it builds). True when the run uses the cache."""
    g = spec.guidance
    if g.cache_guide is False or not objective_class(g.mode).compares_similarity:  # other modes ignore it (a study cell sets it for all arms)
        return False
    why = inexact(spec, distributed)
    if why is not None and g.cache_guide:
        raise PairgraphError(f"guidance.cache_guide is true, but the cache would not be exact: {why}", OFF_HINT)
    why = why or (None if g.cache_guide else not_worth_it(spec, len(train), steps))
    if why is not None:
        return False

    def inputs(index: Tensor) -> Tensor:
        return torch.stack([train[int(i)][0] for i in index])

    t0 = time.time()
    try:
        with _bar(progress, len(train)) as advance:
            cache = pair.cache_guide(inputs, len(train), max_bytes=g.cache_max_gb * 2**30,
                                     chunk=spec.train.batch_size, progress=advance)
    except CacheTooLarge as e:
        if g.cache_guide:
            raise
        if verbose:
            print(f"guide cache off: {e.message}", flush=True)
        return False
    if verbose:
        how = "asked for" if g.cache_guide else "on by default: exact here"
        off = "" if g.cache_guide else f" ({OFF_HINT} to turn it off)"
        print(f"guide cache ({how}): {len(train):,} examples, {cache.nbytes / 2**20:.0f} MiB, built in "
              f"{time.time() - t0:.1f} s; the guide is not run again{off}", flush=True)
    return True


class _bar:
    """A progress bar over the examples of the cache pass on a terminal; nothing otherwise."""

    def __init__(self, show: bool, total: int):
        self.progress: Any = None
        if show and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("guide cache"), BarColumn(), MofNCompleteColumn())
            self.task = self.progress.add_task("cache", total=total)

    def __enter__(self) -> Callable[[int], None] | None:
        if self.progress is None:
            return None
        self.progress.start()
        return lambda n: self.progress.update(self.task, advance=n)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
