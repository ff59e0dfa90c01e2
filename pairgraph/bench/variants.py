"""The benchmark's variants as closures on a fixed random batch, and their interleaved timing.

(a) ``target``  the target's train step alone        (b) ``guide``   the guide's forward, no grad
(g) ``gram``    the similarity work alone (below)    (c) ``guided``  pairgraph's guided step
(d) ``naive``   the published approach's step        (e) ``cached``  (c) reading the guide from its cache

(g) is exactly the similarity work of (c) without either network: on detached copies of this batch's
mapped taps (captured once, from the same networks, batch and autocast as (c)), every distinct mapped
guide tap is prepared once without gradient (a tap whose CKA is provably another's,
:mod:`pairgraph.core.shared_taps`, is not prepared again: exact CKA does not need it) and every distinct mapped target tap once with gradient —
the centring, the gram F Fᵀ (or the feature-space FᵀF when d < b, whichever the measure takes), and the
norms — then every pair is scored, the weighted terms summed and backpropagated to the target taps (the
gram's backward and the scores'). That is :func:`pairgraph.core.loss.alignment_terms` at the pair's
``similarity.precision``, plus one backward. Not in (g): anything (a) or (b) does, and the cost of
capturing taps in a forward.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pairgraph.bench.naive import NaiveStep
from pairgraph.compiler.pipeline import CompiledPair
from pairgraph.core.host_memory import keep_freed_memory
from pairgraph.core.loss import Activations, alignment_terms, tap_key
from pairgraph.errors import PairgraphError
from pairgraph.tasks import get_task

VARIANTS = ("target", "guide", "gram", "guided", "naive", "cached")
#: the networks' autocast in every variant (``pairgraph bench --precision``)
NETWORK_PRECISIONS = ("fp32", "bf16")

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]
#: (guide taps, target taps requiring grad, padding mask or None), detached from the networks
MappedTaps = tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_autocast(device: torch.device, precision: str) -> Autocast:
    """A factory of the context every variant's networks run in: none (fp32) or bf16 autocast."""
    if precision not in NETWORK_PRECISIONS:
        raise PairgraphError(f"unknown benchmark precision {precision!r}", "use fp32 or bf16")
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def build_variants(compiled: CompiledPair, batch_size: int, device: torch.device, max_pairs: int | None = None,
                   cache_pool: int = 0, compile_modules: bool = False, channels_last: bool = False,
                   precision: str = "fp32", only: tuple[str, ...] = VARIANTS,
                   ) -> tuple[dict[str, Callable[[], None]], Any]:
    """Closures running one step of each variant on a fixed random batch.

    With ``cache_pool`` > 0 the batch is drawn from a pool of that many random examples, the
    guide is cached over the pool (:meth:`GuidedPair.cache_guide`, timed into ``pair.cache_seconds``)
    and a further variant, ``cached``, is the guided step reading the guide from the cache.
    ``compile_modules`` wraps the generated target and guide networks in ``torch.compile`` and compiles the
    alignment of (c), (e) and (g) as ``train.compile`` does (:meth:`GuidedPair.compile_alignment`); the
    naive step (d) is then left out, since registering hooks afresh on every call (what it
    reproduces) would recompile the networks on every step. ``channels_last`` puts both networks
    and 4-d inputs in the channels-last memory format (every variant, the floor included).
    ``precision`` bf16 runs every variant's networks under bf16 autocast (the floor too). ``only``
    leaves out the variants it does not name. (g), ``gram``, exists for the guidance mode only. On a CPU it keeps
    freed memory in the process, as the trainer does (:func:`pairgraph.core.host_memory.keep_freed_memory`).
    """
    task = get_task(compiled.spec.task)
    autocast = network_autocast(device, precision)
    if device.type == "cpu":  # as the trainer does: the memory a step frees stays for the next
        keep_freed_memory()
    pair = compiled.build(device)
    if max_pairs is not None:
        pair.pairs = pair.pairs[:max_pairs]
    n = max(cache_pool, batch_size)
    pool, gen = random_pool(task, n, channels_last)
    index = torch.randperm(n, generator=gen)[:batch_size]
    x = pool[index].to(device)
    index = index.to(device)
    if channels_last:
        pair.target.to(memory_format=torch.channels_last)
        pair.guide.to(memory_format=torch.channels_last)
    gram = gram_floor(pair, x, autocast) if "gram" in only else None  # eager networks: taps as (c) sees them
    if compile_modules:
        pair.target = torch.compile(pair.target)
        pair.guide = torch.compile(pair.guide)
        pair.compile_alignment(device)  # as train.compile runs it; (g) too
    pair.cache_seconds = None
    if cache_pool and "cached" in only:
        t0 = time.perf_counter()
        pair.cache_guide(lambda i: pool[i], n, chunk=batch_size)
        sync(device)
        pair.cache_seconds = time.perf_counter() - t0
    with torch.no_grad(), autocast():
        out, _ = pair.target(x)
    y = fake_labels(out, task)
    opt = torch.optim.AdamW(pair.target.parameters(), lr=1e-6)

    def guide_forward() -> None:
        with torch.no_grad(), autocast():
            pair.guide(x)

    fns = {"target": optimizer_step(opt, lambda: pair.task_loss(pair.target(x)[0], y), autocast),
           "guide": guide_forward, "guided": optimizer_step(opt, lambda: pair(x, y, 0).loss, autocast)}
    if gram is not None:
        fns["gram"] = gram
    if not compile_modules and "naive" in only:
        naive = _naive_step(compiled, pair)
        fns["naive"] = optimizer_step(opt, lambda: naive.loss(x, y), autocast)
    if pair.guide_cache is not None:
        fns["cached"] = optimizer_step(opt, lambda: pair(x, y, 0, index).loss, autocast)
    return {v: f for v, f in fns.items() if v in only}, pair


def gram_floor(pair: Any, x: Tensor, autocast: Autocast = contextlib.nullcontext) -> Callable[[], None] | None:
    """(g): the similarity work of one guided step on ``x`` alone (module docstring), as a closure, at the
    pair's ``similarity.precision``; None where the pair's step computes no similarity (modes other than
    guidance)."""
    if not pair.objective.compares_similarity or not pair.pairs:
        return None
    return gram_step(pair, mapped_taps(pair, x, autocast), pair.precision)


def mapped_taps(pair: Any, x: Tensor, autocast: Autocast = contextlib.nullcontext) -> MappedTaps:
    """Detached copies of the mapped guide taps and (requiring grad) target taps of ``x``, and its mask."""
    with torch.no_grad(), autocast():
        _, t_all = pair.target(x)
        _, g_all = pair.guide(x)
    guide_taps = {g: g_all[g].detach().clone() for g in pair.guide_taps()}  # a tap sharing another's CKA: once
    target_taps = {t: t_all[t].detach().clone().requires_grad_(True) for t in dict.fromkeys(p[1] for p in pair.pairs)}
    return guide_taps, target_taps, pair.mask_fn(x) if pair.mask_fn is not None else None


def gram_step(pair: Any, taps: MappedTaps, precision: str) -> Callable[[], None]:
    """(g) on already captured ``taps`` at ``precision``: alignment terms, their weighted sum, its backward."""
    guide_taps, target_taps, mask = taps
    pairs = list(pair.pairs)

    acts = Activations(None, guide_taps, None, target_taps, mask)  # type: ignore[arg-type]  # taps only, no outputs

    def step() -> None:
        compiled = pair.compiled_terms if precision == pair.precision else None  # --compile: as (c) runs it
        terms = compiled(pairs, acts) if compiled is not None else alignment_terms(
            guide_taps, target_taps, pairs, pair.measure, mask, pair.sequence, aliases=pair.guide_aliases,
            precision=precision)
        loss = sum(w * terms[tap_key(g, t)] for g, t, w in pairs)
        for t in target_taps.values():
            t.grad = None
        loss.backward()

    return step


def _naive_step(compiled: CompiledPair, pair: Any) -> NaiveStep:
    used_g, used_t = {p[0] for p in pair.pairs}, {p[1] for p in pair.pairs}
    gtaps = {t.name: (t.output_index, t.batch_axis) for t in compiled.guide.taps if t.name in used_g}
    ttaps = {t.name: (t.output_index, t.batch_axis) for t in compiled.target.taps if t.name in used_t}
    return NaiveStep(pair, gtaps, ttaps)


def random_pool(task: Any, n: int, channels_last: bool) -> tuple[Tensor, torch.Generator]:
    """``n`` random inputs of the task's kind (images: normal noise; tokens: uniform ids) and the generator."""
    pool = task.example_input(n, device="cpu")
    gen = torch.Generator().manual_seed(0)
    if pool.is_floating_point():
        pool = torch.randn(pool.shape, generator=gen)
    else:
        pool = torch.randint(1, task.model_kwargs()["vocab_size"], pool.shape, generator=gen)
    if channels_last and pool.dim() == 4:
        pool = pool.contiguous(memory_format=torch.channels_last)
    return pool, gen


def optimizer_step(opt: torch.optim.Optimizer, loss_of: Callable[[], Tensor],
                   autocast: Autocast = contextlib.nullcontext) -> Callable[[], None]:
    """One optimizer step on the loss ``loss_of()`` computes (forward under ``autocast``, backward outside)."""

    def step() -> None:
        with autocast():
            loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def fake_labels(out: Tensor, task: Any) -> Tensor:
    """Labels of the right shape for the task loss (timing does not depend on their values)."""
    if out.dim() == 3:
        return torch.randint(0, out.shape[-1], out.shape[:2], device=out.device)
    if out.shape[-1] == 1:
        return torch.randint(0, 2, (out.shape[0],), device=out.device)
    return torch.randint(0, out.shape[-1], (out.shape[0],), device=out.device)


def time_variants(steps_fn: dict[str, Callable[[], None]], device: torch.device, steps: int = 10, warmup: int = 3,
                  variants: tuple[str, ...] = VARIANTS) -> dict[str, float]:
    """Median seconds per step of each variant, interleaved round by round."""
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(warmup + steps):
        for v in variants:
            sync(device)
            t0 = time.perf_counter()
            steps_fn[v]()
            sync(device)
            if r >= warmup:
                times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(ts) for v, ts in times.items() if ts}
