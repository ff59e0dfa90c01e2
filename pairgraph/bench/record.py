"""``pairgraph bench``: one spec's record — the variants' median times, the ratios, memory and tables."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pairgraph.bench.memory import peak_memories
from pairgraph.bench.ops import count_variants
from pairgraph.bench.variants import VARIANTS, build_variants, network_autocast, time_variants
from pairgraph.compiler.pipeline import compile as compile_pair
from pairgraph.errors import PairgraphError


def bench_device(device: str) -> torch.device:
    """``device`` as a torch device, or a one-line error when it is unknown or absent."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PairgraphError(f"unknown device {device!r}", "use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PairgraphError(f"device {device!r} asked for, but this machine has no CUDA device",
                             "use --device cpu, or run on a machine with an NVIDIA GPU")
    return dev


def machine(dev: torch.device) -> dict[str, Any]:
    return {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            **({"gpu": torch.cuda.get_device_name(dev)} if dev.type == "cuda" else {})}


def ratios(t: dict[str, float]) -> dict[str, float]:
    """The overheads of one set of median times: c/(a+b), c/(a+b+g), and for the cached step e/(a+b), e/a."""
    floor = t["target"] + t["guide"]
    out = {"overhead": t["guided"] / floor}
    if "gram" in t:
        out["overhead_gram"] = t["guided"] / (floor + t["gram"])
    if "cached" in t:
        out["overhead_cached"] = t["cached"] / floor
        out["cached_vs_target"] = t["cached"] / t["target"]
    return out


def bench(spec: str, batch_size: int = 256, steps: int = 10, warmup: int = 3, device: str = "cpu",
          overrides: list[str] | None = None, memory: bool = True, batch_sizes: tuple[int, ...] = (),
          pair_counts: tuple[int, ...] = (), cache_pool: int = 0, compile_modules: bool = False,
          channels_last: bool = False, precision: str = "fp32") -> dict[str, Any]:
    """Benchmark one spec; returns a JSON-able record (also printed by the CLI).

    ``cache_pool`` > 0 adds the ``cached`` variant (guide cached over a pool of that many examples);
    ``compile_modules`` runs every variant with ``torch.compile``d networks (floor included) and the
    alignment of (c), (e) and (g) compiled as ``train.compile`` compiles it, and
    records the one-off compile time of the first round; ``channels_last`` runs every variant in the
    channels-last memory format; ``precision`` bf16 runs every variant's networks under bf16 autocast
    (the similarity's own precision is the spec's ``similarity.precision``).
    """
    overrides = list(overrides or [])
    dev = bench_device(device)
    network_autocast(dev, precision)  # a bad precision fails before any work
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    opts = {"compile_modules": compile_modules, "channels_last": channels_last, "precision": precision}
    fns, pair = build_variants(compiled, batch_size, dev, cache_pool=cache_pool, **opts)
    variants = tuple(v for v in VARIANTS if v in fns)
    t0 = time.perf_counter()
    time_variants(fns, dev, 0, 1, variants)  # first round: compiles when compile_modules
    first_round = time.perf_counter() - t0
    t = time_variants(fns, dev, steps, max(warmup - 1, 0), variants)
    # after the timing (counting runs each step twice more); not for compiled networks, which a dispatch mode
    # would count as the eager ops they replace
    ops = None if compile_modules else count_variants(fns)
    r = ratios(t)
    record: dict[str, Any] = {
        "spec": spec, "overrides": overrides, "device": str(dev), "batch_size": batch_size, "steps": steps,
        "warmup": warmup, "pairs": len(pair.pairs), "seconds": t, "compiled": compile_modules,
        "compiled_alignment": compile_modules,
        "channels_last": channels_last, "precision": precision, "similarity_precision": pair.precision,
        "first_round_seconds": first_round, "overhead": r["overhead"], "overhead_gram": r.get("overhead_gram"),
        "speedup": t["naive"] / t["guided"] if "naive" in t else None, "machine": machine(dev), "ops": ops,
    }
    if "cached" in t:
        saved = t["guided"] - t["cached"]
        record["cache"] = {
            "pool": max(cache_pool, batch_size), "bytes": pair.guide_cache.nbytes, "build_seconds": pair.cache_seconds,
            "kinds": {k: v.kind for k, v in pair.guide_cache.taps.items()},
            "overhead": r["overhead_cached"], "vs_target": r["cached_vs_target"],
            "overhead_gram": t["cached"] / (t["target"] + t["guide"] + t["gram"]) if "gram" in t else None,
            "speedup": t["naive"] / t["cached"] if "naive" in t else None,
            "break_even_steps": pair.cache_seconds / saved if saved > 0 else None,
        }
    if memory:
        mem = peak_memories(spec, tuple(v for v in variants if v not in ("naive", "gram")), fns, batch_size, dev,
                            overrides, cache_pool, precision)
        record["peak_bytes"] = mem
        record["memory_method"] = "cuda allocator" if dev.type == "cuda" else "rss, one subprocess per variant"
        record["memory_ratio"] = mem["guided"] / max(mem["target"] + mem["guide"], 1.0)
        if "cache" in record:
            record["cache"]["memory_ratio"] = mem["cached"] / max(mem["target"] + mem["guide"], 1.0)
    del fns, pair
    timed = tuple(v for v in variants if v != "naive")

    def row(fns_: dict[str, Callable[[], None]]) -> dict[str, float]:
        tt = time_variants(fns_, dev, max(3, steps // 2), 1, timed)
        return {**tt, **ratios(tt)}

    record["by_batch_size"] = [{"batch_size": bs, **row(build_variants(
        compiled, bs, dev, cache_pool=cache_pool and max(cache_pool, bs), only=timed, **opts)[0])}
        for bs in batch_sizes]
    rows = []
    for n in pair_counts:
        f, p = build_variants(compiled, batch_size, dev, max_pairs=n, cache_pool=cache_pool, only=timed, **opts)
        rows.append({"pairs": len(p.pairs), **row(f), "alignment_ops": count_variants(f)["alignment"]["ops"]})
    record["by_pairs"] = rows
    return record


def ops_record(spec: str, batch_size: int = 64, device: str = "cpu", overrides: list[str] | None = None,
               pair_counts: tuple[int, ...] = (), cache_pool: int = 0, precision: str = "fp32") -> dict[str, Any]:
    """``pairgraph bench --ops-only``: the ATen ops and host syncs per step of each variant, and of the alignment
    alone (:mod:`pairgraph.bench.ops`), without timing anything — so a busy machine can produce it."""
    overrides = list(overrides or [])
    dev = bench_device(device)
    network_autocast(dev, precision)
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    only = ("target", "guide", "gram", "guided", "cached")
    fns, pair = build_variants(compiled, batch_size, dev, cache_pool=cache_pool, precision=precision, only=only)
    by_pairs = []
    for n in pair_counts:  # uncached: the rows show how the alignment's ops grow with the pairs
        f, p = build_variants(compiled, batch_size, dev, max_pairs=n, precision=precision, only=only)
        by_pairs.append({"pairs": len(p.pairs), **count_variants(f)})
    return {"kind": "ops", "spec": spec, "overrides": overrides, "device": str(dev), "batch_size": batch_size,
            "precision": precision, "similarity_precision": pair.precision, "pairs": len(pair.pairs),
            "cache_pool": max(cache_pool, batch_size) if cache_pool else 0, "ops": count_variants(fns),
            "by_pairs": by_pairs, "machine": machine(dev)}
