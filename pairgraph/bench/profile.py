"""One step under ``torch.profiler``: how many kernels it launches, how long they run, how long the device idles.

A launch-bound GPU step (issue #28) shows as many short kernels and a device that waits on the host between
them. :func:`profile_step` runs a step ``warmup`` times, times ``steps`` calls without the profiler, then
profiles ``steps`` more calls (after one profiled warm-up call, which pays the profiler's own start-up), each
inside a ``record_function`` annotation that ends with a device sync, so every kernel a step launches runs
inside its annotation. From the exported Chrome trace, per step (:func:`step_summaries`):

- ``kernels``: device kernels that started inside the step (trace category ``kernel``; kernels replayed from
  a CUDA graph are counted one by one, as CUPTI reports them); ``copies``: memcpy/memset activities;
  ``launches``: the host's launch calls (CUDA runtime/driver events named ``*Launch*``; a graph replay is one);
- ``kernel_seconds``: the kernels' summed durations; ``busy_seconds``: the length of the union of the
  kernels' and copies' intervals (overlapping kernels on several streams count once);
- ``wall_seconds``: the annotation's length on the host (the step, its final sync included), under the
  profiler — which slows the host's side, so the unprofiled median ``unprofiled_seconds`` is recorded too;
- ``idle_seconds`` = wall − busy: the time inside the step in which no kernel or copy ran on the device.

On a CPU there are no device kernels: the "kernels" are the outermost ATen ops of the profiler's CPU ops
(``aten::*`` events inside no other ATen op on their thread: ``aten::linear``, not the ``aten::addmm`` inside it;
the autograd engine's wrappers are not ATen ops), and idle is the step's time outside every such op — the
host's own overhead (Python, autograd, dispatch). That keeps the summary
testable here; its numbers mean a GPU's only on a GPU. Medians over the profiled steps are reported.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from pairgraph.bench.ops import count_step
from pairgraph.bench.record import bench_device, machine
from pairgraph.bench.variants import build_variants, sync
from pairgraph.compiler.pipeline import compile as compile_pair

#: the annotation of each profiled step: ``pairgraph.step#<i>``
STEP = "pairgraph.step#"
DEVICE_COPIES = ("gpu_memcpy", "gpu_memset")
SUMMARY_FIELDS = ("kernels", "copies", "launches", "kernel_seconds", "busy_seconds", "wall_seconds", "idle_seconds")


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by ``(start, end)`` intervals, overlaps counted once."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def outermost(ops: list[dict]) -> list[dict]:
    """The ops (trace events with ``ts``, ``dur``, ``tid``) that lie inside no other of them on their thread."""
    out = []
    by_thread: dict[Any, list[dict]] = {}
    for e in ops:
        by_thread.setdefault(e.get("tid"), []).append(e)
    for evs in by_thread.values():
        end = float("-inf")
        for e in sorted(evs, key=lambda e: (e["ts"], -e["dur"])):
            if e["ts"] >= end:
                out.append(e)
                end = e["ts"] + e["dur"]
    return out


def step_summaries(events: list[dict], device: str) -> list[dict[str, float]]:
    """Per annotated step (``STEP`` + i) of a Chrome trace's events: kernels, copies, launches, kernel time,
    busy time, wall time and idle time in seconds (module docstring). ``device``: ``cuda`` or ``cpu``."""
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    steps = sorted((e for e in complete if e.get("cat") == "user_annotation" and str(e["name"]).startswith(STEP)),
                   key=lambda e: e["ts"])
    if device == "cpu":
        ops = [e for e in complete if e.get("cat") == "cpu_op" and str(e["name"]).startswith("aten::")]
        kernels, copies = outermost(ops), []
    else:
        kernels = [e for e in complete if e.get("cat") == "kernel"]
        copies = [e for e in complete if e.get("cat") in DEVICE_COPIES]
    launches = [e for e in complete if e.get("cat") in ("cuda_runtime", "cuda_driver") and "Launch" in str(e["name"])]
    out = []
    for st in steps:
        lo, hi = st["ts"], st["ts"] + st["dur"]

        def inside(evs: list[dict], lo: float = lo, hi: float = hi) -> list[dict]:
            return [e for e in evs if lo <= e["ts"] < hi]

        k, c = inside(kernels), inside(copies)
        busy = union_length([(e["ts"], min(e["ts"] + e["dur"], hi)) for e in k + c])
        out.append({"kernels": len(k), "copies": len(c), "launches": len(inside(launches)),
                    "kernel_seconds": sum(e["dur"] for e in k) * 1e-6, "busy_seconds": busy * 1e-6,
                    "wall_seconds": st["dur"] * 1e-6, "idle_seconds": (st["dur"] - busy) * 1e-6})
    return out


def median_summary(per_step: list[dict[str, float]]) -> dict[str, float]:
    """The median of each field over the profiled steps, and the idle fraction of the median wall time."""
    med = {f: statistics.median(s[f] for s in per_step) for f in SUMMARY_FIELDS}
    return {**med, "idle_fraction": med["idle_seconds"] / med["wall_seconds"] if med["wall_seconds"] else 0.0}


def profile_step(step: Callable[[], None], device: torch.device, steps: int = 3, warmup: int = 3) -> dict[str, Any]:
    """Warm ``step`` up, time ``steps`` calls without the profiler, then profile ``steps`` annotated calls;
    the median summary of the profiled steps (module docstring), ``unprofiled_seconds`` and ``per_step``."""
    for _ in range(warmup):
        step()
    plain = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        plain.append(time.perf_counter() - t0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=steps), acc_events=True,
                     on_trace_ready=lambda p: p.export_chrome_trace(str(trace))) as prof:
            for i in range(steps + 1):
                with record_function(f"{STEP}{i}"):
                    step()
                    sync(device)
                prof.step()
        events = json.loads(trace.read_text())["traceEvents"]
    per_step = step_summaries(events, device.type)
    return {**median_summary(per_step), "unprofiled_seconds": statistics.median(plain), "per_step": per_step}


def profile_record(spec: str, batch_size: int = 256, device: str = "cuda", overrides: list[str] | None = None,
                   precision: str = "fp32", cache_pool: int = 1024, steps: int = 3, warmup: int = 3,
                   variants: tuple[str, ...] = ("target", "guide", "guided", "cached")) -> dict[str, Any]:
    """``kind: profile``: each variant's step profiled (:func:`profile_step`) with its ATen ops and host syncs
    (:func:`pairgraph.bench.ops.count_step`), and what the alignment adds: (c) − (a) − (b), (e) − (a)."""
    overrides = list(overrides or [])
    dev = bench_device(device)
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    fns, pair = build_variants(compiled, batch_size, dev, cache_pool=cache_pool, precision=precision, only=variants)
    out: dict[str, Any] = {}
    for v in (v for v in variants if v in fns):
        out[v] = {**profile_step(fns[v], dev, steps, warmup), "aten": count_step(fns[v])}
    derived = {"alignment": ("guided", "target", "guide"), "alignment_cached": ("cached", "target")}
    for name, (top, *floor) in derived.items():
        if {top, *floor} <= set(out):
            out[name] = {f: out[top][f] - sum(out[v][f] for v in floor) for f in ("kernels", "kernel_seconds")}
    return {"kind": "profile", "spec": spec, "overrides": overrides, "device": str(dev), "batch_size": batch_size,
            "precision": precision, "similarity_precision": pair.precision, "pairs": len(pair.pairs), "steps": steps,
            "warmup": warmup, "cache_pool": max(cache_pool, batch_size) if "cached" in out else 0,
            "kernels_are": "device kernels" if dev.type == "cuda" else "outermost ATen ops on the CPU (no device here)",
            "variants": out, "machine": machine(dev)}
