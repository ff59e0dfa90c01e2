"""Which ``torch.compile`` mode ``train.compile`` should use, by measurement (issue #28 items 4 and 5).

:func:`compile_modes` times pairgraph's guided step (c) with the alignment eager and compiled in each mode
(``default``; ``reduce-overhead``, CUDA graphs, on a GPU only), as ``train.compile`` compiles it: through
:meth:`GuidedPair.compile_alignment`, the networks eager. Each mode gets its own pair (same seed, same
weights, same batch); the floor's parts (a), (b) and (g), eager, are timed in the same interleaved rounds,
so each mode's c / (a + b + g) compares like with like. The first step of each compiled mode — tracing,
compiling both passes, for CUDA graphs recording — is timed apart (``first_step_seconds``, with the
compile time ``compile_seconds`` the step reports) and is not in any median. A mode whose compile fails runs
eager and says why (``fallback``); ``cudagraph_skips`` counts the times inductor declined CUDA graphs for a
mode's graphs (it then runs them as ``default`` would, with a warning). ``fastest`` names the mode with the
lowest median.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pairgraph.bench.record import bench_device, machine
from pairgraph.bench.variants import build_variants, sync, time_variants
from pairgraph.compiler.pipeline import compile as compile_pair
from pairgraph.core.compiled import compile_mode

EAGER = "eager"


def _cudagraph_skips() -> int:
    """Inductor's running count of graphs it declined to run as CUDA graphs (0 where torch keeps no count)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["inductor"]["cudagraph_skips"])


def available_modes(device: torch.device) -> tuple[str, ...]:
    """The compiled modes worth measuring on ``device``: CUDA graphs only exist on a GPU."""
    return ("default", "reduce-overhead") if device.type == "cuda" else ("default",)


def compile_modes(spec: str, batch_size: int = 256, device: str = "cuda", overrides: list[str] | None = None,
                  steps: int = 10, warmup: int = 3, precision: str = "fp32",
                  modes: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``kind: compile_modes``: (c) eager and compiled per mode, its first step apart, and the fastest mode."""
    overrides = list(overrides or [])
    dev = bench_device(device)
    modes = available_modes(dev) if modes is None else modes
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    floor, pair = build_variants(compiled, batch_size, dev, precision=precision,
                                 only=("target", "guide", "gram", "guided"))
    fns = {**{v: f for v, f in floor.items() if v != "guided"}, EAGER: floor["guided"]}
    first: dict[str, dict[str, Any]] = {}
    for mode in modes:
        f, p = build_variants(compiled, batch_size, dev, precision=precision, only=("guided",))
        terms = p.compile_alignment(dev, mode)
        sync(dev)
        skips, t0 = _cudagraph_skips(), time.perf_counter()
        f["guided"]()  # compiles both passes (inductor decides here whether its graphs can be CUDA graphs)
        sync(dev)
        first[mode] = {"first_step_seconds": time.perf_counter() - t0, "compile_seconds": terms.seconds,
                       "fallback": terms.fallback, "cudagraph_skips": _cudagraph_skips() - skips}
        fns[mode] = f["guided"]
    t = time_variants(fns, dev, steps, warmup, tuple(fns))
    base = t["target"] + t["guide"] + t.get("gram", 0.0)
    out = {m: {"seconds": t[m], "vs_eager": t[m] / t[EAGER], "overhead_gram": t[m] / base, **first.get(m, {})}
           for m in (EAGER, *modes)}
    return {"kind": "compile_modes", "spec": spec, "overrides": overrides, "device": str(dev),
            "batch_size": batch_size, "steps": steps, "warmup": warmup, "precision": precision,
            "similarity_precision": pair.precision, "pairs": len(pair.pairs),
            "seconds": {v: t[v] for v in ("target", "guide", "gram") if v in t}, "modes": out,
            "fastest": min(out, key=lambda m: out[m]["seconds"]), "train_compile_mode": compile_mode(dev),
            "machine": machine(dev)}
