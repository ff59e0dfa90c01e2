"""Images (or sequences) per second and peak memory of a pair's train steps, e.g. at the paper's size.

Unlike :func:`pairgraph.bench.record.bench` this runs each step back to back (not interleaved) for
``steps`` steps after ``warmup``, as training would: (a) the target's step alone and (c) the guided step,
on one fixed random batch (synthetic data: no dataset is read). Peak memory is that of
:func:`pairgraph.bench.memory.steady_peak` (the CUDA allocator's peak on a GPU, the resident set's on a CPU).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pairgraph.bench.memory import steady_peak
from pairgraph.bench.record import bench_device, machine
from pairgraph.bench.variants import build_variants, network_autocast, sync
from pairgraph.compiler.pipeline import compile as compile_pair


def throughput(spec: str, batch_size: int = 256, steps: int = 30, warmup: int = 3, device: str = "cuda",
               overrides: list[str] | None = None, precision: str = "fp32",
               variants: tuple[str, ...] = ("target", "guided")) -> dict[str, Any]:
    """Per variant: seconds per step, examples per second over ``steps`` back-to-back steps, peak bytes."""
    overrides = list(overrides or [])
    dev = bench_device(device)
    network_autocast(dev, precision)
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    t0 = time.perf_counter()
    fns, pair = build_variants(compiled, batch_size, dev, precision=precision, only=variants)
    build = time.perf_counter() - t0
    out = {}
    for v in variants:
        for _ in range(warmup):
            fns[v]()
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            fns[v]()
        sync(dev)
        dt = time.perf_counter() - t0
        out[v] = {"seconds_per_step": dt / steps, "examples_per_second": batch_size * steps / dt,
                  "peak_bytes": steady_peak(fns[v], dev)}
    return {"kind": "throughput", "spec": spec, "overrides": overrides, "device": str(dev), "batch_size": batch_size,
            "steps": steps, "warmup": warmup, "precision": precision, "similarity_precision": pair.precision,
            "pairs": len(pair.pairs), "build_seconds": build,
            "target_parameters": sum(p.numel() for p in pair.target.parameters()),
            "memory_method": "cuda allocator" if dev.type == "cuda" else "rss",
            "variants": out, "machine": machine(dev)}
