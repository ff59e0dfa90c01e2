"""Peak memory of a benchmark variant: the CUDA allocator's peak on a GPU (in process), the peak
resident set on a CPU (in a fresh subprocess per variant, so variants do not share a high-water mark)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from pairgraph.bench.variants import build_variants, sync
from pairgraph.compiler.pipeline import compile as compile_pair


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


def steady_peak(fn: Callable[[], None], device: torch.device, repeats: int = 3) -> float:
    """Peak bytes above the state after one untimed call of ``fn`` (which allocates optimizer state and
    caches), over ``repeats`` further calls: the CUDA allocator's peak, or the resident set's on a CPU."""
    fn()
    sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(repeats):
            fn()
        sync(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    base = _rss_bytes()
    _reset_peak_rss()
    for _ in range(repeats):
        fn()
    return float(_peak_rss_bytes() - base)


def peak_memory_child(spec: str, variant: str, batch_size: int, device: str, overrides: list[str],
                      cache_pool: int = 0, precision: str = "fp32") -> dict[str, float]:
    """Run in a fresh process: peak memory of ``variant`` above the state after building the pair
    (and, for ``cached``, after building the cache, whose size is reported separately)."""
    dev = torch.device(device)
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    fns, _ = build_variants(compiled, batch_size, dev, cache_pool=cache_pool if variant == "cached" else 0,
                            precision=precision, only=(variant,))
    return {"peak_bytes": steady_peak(fns[variant], dev)}


def peak_memory(spec: str, variant: str, batch_size: int, device: str, overrides: list[str],
                cache_pool: int = 0, precision: str = "fp32") -> float:
    code = ("import json,sys; from pairgraph.bench.memory import peak_memory_child; "
            "print(json.dumps(peak_memory_child(*json.loads(sys.argv[1]))))")
    args = json.dumps([spec, variant, batch_size, device, overrides, cache_pool, precision])
    res = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True)
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])


def peak_memories(spec: str, variants: tuple[str, ...], fns: dict[str, Callable[[], None]], batch_size: int,
                  device: torch.device, overrides: list[str], cache_pool: int, precision: str) -> dict[str, float]:
    """Peak bytes of each variant: in this process from the CUDA allocator on a GPU (``fns``, already
    warm), else one fresh subprocess per variant (peak RSS)."""
    if device.type == "cuda":
        return {v: steady_peak(fns[v], device) for v in variants}
    return {v: peak_memory(spec, v, batch_size, str(device), overrides, cache_pool, precision) for v in variants}
