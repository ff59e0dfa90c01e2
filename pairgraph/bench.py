"""``pairgraph bench``: what guidance costs above its floor, measured in one process.

The floor of a guided step is the target's own train step (a) plus one no-grad forward of the
guide (b). We time, interleaved round by round so drift hits all alike, the median of ``steps``
rounds after ``warmup``:

    (a) target train step alone        (b) guide forward alone, no grad
    (c) pairgraph's guided step        (d) a naive step written from the paper's published approach

and report overhead = c / (a + b) and speedup = d / c. Peak memory is measured per variant in a
fresh subprocess (peak RSS above the process's state after building the pair, on CPU; the CUDA
allocator's peak on GPU), and reported as c against a + b.

The naive step (d) follows the published implementation: the target runs forward twice (once
for the task loss, once with freshly registered hooks), hooks are registered and removed on
every call, grams are centred with the b×b matrix H (H K H), and linear CKA computes each gram
three times (in HSIC(X, Y), HSIC(X, X) and HSIC(Y, Y)).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pairgraph.compiler.pipeline import CompiledPair
from pairgraph.compiler.pipeline import compile as compile_pair
from pairgraph.core.taps import select_output, split_call
from pairgraph.tasks import get_task

VARIANTS = ("target", "guide", "guided", "naive", "cached")


# ---------------------------------------------------------------- the naive reference


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


# ---------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_variants(compiled: CompiledPair, batch_size: int, device: torch.device, max_pairs: int | None = None,
                   cache_pool: int = 0, compile_modules: bool = False,
                   channels_last: bool = False) -> tuple[dict[str, Callable[[], None]], Any]:
    """Closures running one step of each variant on a fixed random batch.

    With ``cache_pool`` > 0 the batch is drawn from a pool of that many random examples, the
    guide is cached over the pool (:meth:`GuidedPair.cache_guide`, timed into ``pair.cache_seconds``)
    and a fifth variant, ``cached``, is the guided step reading the guide from the cache.
    ``compile_modules`` wraps the generated target and guide networks in ``torch.compile``; the
    naive step (d) is then left out, since registering hooks afresh on every call (what it
    reproduces) would recompile the networks on every step. ``channels_last`` puts both networks
    and 4-d inputs in the channels-last memory format (every variant, the floor included).
    """
    task = get_task(compiled.spec.task)
    pair = compiled.build(device)
    if max_pairs is not None:
        pair.pairs = pair.pairs[:max_pairs]
    if channels_last:
        pair.target.to(memory_format=torch.channels_last)
        pair.guide.to(memory_format=torch.channels_last)
    if compile_modules:
        pair.target = torch.compile(pair.target)
        pair.guide = torch.compile(pair.guide)
    n = max(cache_pool, batch_size)
    pool, gen = _random_pool(task, n, channels_last)
    index = torch.randperm(n, generator=gen)[:batch_size]
    x = pool[index].to(device)
    index = index.to(device)
    pair.cache_seconds = None
    if cache_pool:
        t0 = time.perf_counter()
        pair.cache_guide(lambda i: pool[i], n, chunk=batch_size)
        _sync(device)
        pair.cache_seconds = time.perf_counter() - t0
    with torch.no_grad():
        out, _ = pair.target(x)
    y = _fake_labels(out, task)
    opt = torch.optim.AdamW(pair.target.parameters(), lr=1e-6)
    gtaps = {t.name: (t.output_index, t.batch_axis) for t in compiled.guide.taps if t.name in {p[0] for p in pair.pairs}}
    ttaps = {t.name: (t.output_index, t.batch_axis) for t in compiled.target.taps if t.name in {p[1] for p in pair.pairs}}
    naive = NaiveStep(pair, gtaps, ttaps)

    def guide_forward() -> None:
        with torch.no_grad():
            pair.guide(x)

    fns = {"target": _optimizer_step(opt, lambda: pair.task_loss(pair.target(x)[0], y)), "guide": guide_forward,
           "guided": _optimizer_step(opt, lambda: pair(x, y, 0).loss)}
    if not compile_modules:
        fns["naive"] = _optimizer_step(opt, lambda: naive.loss(x, y))
    if cache_pool:
        fns["cached"] = _optimizer_step(opt, lambda: pair(x, y, 0, index).loss)
    return fns, pair


def _random_pool(task: Any, n: int, channels_last: bool) -> tuple[Tensor, torch.Generator]:
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


def _optimizer_step(opt: torch.optim.Optimizer, loss_of: Callable[[], Tensor]) -> Callable[[], None]:
    """One optimizer step on the loss ``loss_of()`` computes."""

    def step() -> None:
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _fake_labels(out: Tensor, task: Any) -> Tensor:
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
            _sync(device)
            t0 = time.perf_counter()
            steps_fn[v]()
            _sync(device)
            if r >= warmup:
                times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(ts) for v, ts in times.items() if ts}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of resident memory (VmHWM) for this process (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_child(spec: str, variant: str, batch_size: int, device: str, overrides: list[str],
                      cache_pool: int = 0) -> dict[str, float]:
    """Run in a fresh process: peak memory of ``variant`` above the state after building the pair
    (and, for ``cached``, after building the cache, whose size is reported separately)."""
    dev = torch.device(device)
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    fns, _ = build_variants(compiled, batch_size, dev, cache_pool=cache_pool if variant == "cached" else 0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            fns[variant]()
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - base}
    fns[variant]()  # first call allocates optimizer state and caches; measure the steady state
    base = _rss_bytes()
    _reset_peak_rss()
    for _ in range(3):
        fns[variant]()
    return {"peak_bytes": _peak_rss_bytes() - base}


def peak_memory(spec: str, variant: str, batch_size: int, device: str, overrides: list[str],
                cache_pool: int = 0) -> float:
    code = ("import json,sys; from pairgraph.bench import peak_memory_child; "
            "print(json.dumps(peak_memory_child(*json.loads(sys.argv[1]))))")
    args = json.dumps([spec, variant, batch_size, device, overrides, cache_pool])
    res = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True)
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])


# ---------------------------------------------------------------- the benchmark


def bench(spec: str, batch_size: int = 256, steps: int = 10, warmup: int = 3, device: str = "cpu",
          overrides: list[str] | None = None, memory: bool = True, batch_sizes: tuple[int, ...] = (),
          pair_counts: tuple[int, ...] = (), cache_pool: int = 0, compile_modules: bool = False,
          channels_last: bool = False) -> dict[str, Any]:
    """Benchmark one spec; returns a JSON-able record (also printed by the CLI).

    ``cache_pool`` > 0 adds the ``cached`` variant (guide cached over a pool of that many examples);
    ``compile_modules`` runs every variant with ``torch.compile``d networks (floor included), and
    records the one-off compile time of the first round; ``channels_last`` runs every variant in the
    channels-last memory format.
    """
    overrides = list(overrides or [])
    dev = torch.device(device)
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    opts = {"compile_modules": compile_modules, "channels_last": channels_last}
    fns, pair = build_variants(compiled, batch_size, dev, cache_pool=cache_pool, **opts)
    variants = tuple(v for v in VARIANTS if v in fns)
    t0 = time.perf_counter()
    time_variants(fns, dev, 0, 1, variants)  # first round: compiles when compile_modules
    first_round = time.perf_counter() - t0
    t = time_variants(fns, dev, steps, max(warmup - 1, 0), variants)
    record: dict[str, Any] = {
        "spec": spec, "overrides": overrides, "device": str(dev), "batch_size": batch_size, "steps": steps,
        "warmup": warmup, "pairs": len(pair.pairs), "seconds": t, "compiled": compile_modules,
        "channels_last": channels_last,
        "first_round_seconds": first_round,
        "overhead": t["guided"] / (t["target"] + t["guide"]),
        "speedup": t["naive"] / t["guided"] if "naive" in t else None,
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    **({"gpu": torch.cuda.get_device_name(dev)} if dev.type == "cuda" else {})},
    }
    if cache_pool:
        saved = t["guided"] - t["cached"]
        record["cache"] = {
            "pool": max(cache_pool, batch_size), "bytes": pair.guide_cache.nbytes, "build_seconds": pair.cache_seconds,
            "kinds": {k: v.kind for k, v in pair.guide_cache.taps.items()},
            "overhead": t["cached"] / (t["target"] + t["guide"]),
            "speedup": t["naive"] / t["cached"] if "naive" in t else None,
            "break_even_steps": pair.cache_seconds / saved if saved > 0 else None,
        }
    if memory:
        mem = {v: peak_memory(spec, v, batch_size, device, overrides, cache_pool) for v in variants if v != "naive"}
        record["peak_bytes"] = mem
        record["memory_ratio"] = mem["guided"] / max(mem["target"] + mem["guide"], 1.0)
        if cache_pool:
            record["cache"]["memory_ratio"] = mem["cached"] / max(mem["target"] + mem["guide"], 1.0)
    timed = tuple(v for v in variants if v != "naive")

    def row(fns_: dict[str, Callable[[], None]]) -> dict[str, float]:
        tt = time_variants(fns_, dev, max(3, steps // 2), 1, timed)
        extra = {"overhead_cached": tt["cached"] / (tt["target"] + tt["guide"])} if "cached" in tt else {}
        return {**tt, "overhead": tt["guided"] / (tt["target"] + tt["guide"]), **extra}

    record["by_batch_size"] = [{"batch_size": bs, **row(build_variants(
        compiled, bs, dev, cache_pool=cache_pool and max(cache_pool, bs), **opts)[0])}
        for bs in batch_sizes]
    rows = []
    for n in pair_counts:
        f, p = build_variants(compiled, batch_size, dev, max_pairs=n, cache_pool=cache_pool, **opts)
        rows.append({"pairs": len(p.pairs), **row(f)})
    record["by_pairs"] = rows
    return record
