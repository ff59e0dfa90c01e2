"""What ``similarity.precision`` costs and changes on a benchmark pair (``scripts/gram_precision.py``).

For one fixed random batch of the pair, per precision (fp32, tf32, bf16):

* ``gram_seconds`` — the median time of the gram work (g) (:mod:`pairgraph.bench.variants`) at that
  precision, the precisions timed interleaved round by round on the same captured taps;
* ``max_abs_dcka`` (and ``dcka`` per term) — |CKA − CKA_fp32| of every mapped pair on those taps;
* ``grad_rel_err`` — ‖∇ − ∇_fp32‖ / ‖∇_fp32‖ of the target's parameter gradient of the alignment loss
  (one guided forward and backward of the fp32 networks; only the similarity's precision changes).
  ``fp32_repeat_grad_rel_err`` is fp32 against itself: the run-to-run noise floor of that comparison.

The record also says what the machine offers for bf16 matmuls: the CPU's flags (``avx512_bf16``,
``amx_bf16``, ``amx_tile``), torch's CPU capability and oneDNN (mkldnn); the GPU's name and bf16
support on CUDA. On a CPU, ``tf32`` is fp32 (TF32 is a CUDA format), and the record says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pairgraph.bench.record import bench_device, machine
from pairgraph.bench.variants import fake_labels, gram_step, mapped_taps, random_pool, time_variants
from pairgraph.compiler.pipeline import compile as compile_pair
from pairgraph.core.loss import alignment_terms
from pairgraph.core.objectives import objective_class
from pairgraph.core.similarity import PRECISIONS
from pairgraph.errors import PairgraphError
from pairgraph.tasks import get_task

CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_features() -> dict[str, Any]:
    """The CPU's bf16 matmul instructions (from /proc/cpuinfo; None where it cannot be read) and torch's view."""
    flags: set[str] | None = None
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                if key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = None
    return {"model": model, **{f: (f in flags) if flags is not None else None for f in CPU_FLAGS},
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_available": torch.backends.mkldnn.is_available(), "mkldnn_bf16_supported": onednn_bf16}


def _alignment_grad(pair: Any, x: Tensor, y: Tensor, precision: str) -> Tensor:
    """The target's parameter gradient of the alignment loss alone, with the similarity at ``precision``."""
    pair.precision = precision
    pair.target.zero_grad(set_to_none=True)
    pair(x, y, 0).guidance_loss.backward()
    grads = [p.grad.flatten() for p in pair.target.parameters() if p.grad is not None]
    pair.target.zero_grad(set_to_none=True)
    return torch.cat(grads).double()


def pair_precision(spec: str, overrides: list[str] | None = None, batch_size: int = 256, steps: int = 5,
                   warmup: int = 1, device: str = "cpu", precisions: tuple[str, ...] = PRECISIONS) -> dict[str, Any]:
    """One pair's comparison of the similarity's precisions (module docstring)."""
    overrides = list(overrides or [])
    dev = bench_device(device)
    compiled = compile_pair(spec, Path("build") / "bench", overrides, render=False, notify=None)
    if not objective_class(compiled.spec.guidance.mode).compares_similarity:
        raise PairgraphError(f"{spec}: guidance.mode is {compiled.spec.guidance.mode}, which computes no similarity",
                             "compare precisions on a guidance-mode pair")
    task = get_task(compiled.spec.task)
    pair = compiled.build(dev)
    x = random_pool(task, batch_size, False)[0].to(dev)
    with torch.no_grad():
        y = fake_labels(pair.target(x)[0], task)
    taps = mapped_taps(pair, x)
    with torch.no_grad():
        cka = {p: {k: 1.0 - v.item() for k, v in alignment_terms(
            taps[0], taps[1], pair.pairs, pair.measure, taps[2], pair.sequence, aliases=pair.guide_aliases,
            precision=p).items()}
            for p in ("fp32", *precisions)}
    fns = {p: gram_step(pair, taps, p) for p in precisions}
    seconds = time_variants(fns, dev, steps, warmup, tuple(precisions))
    ref = _alignment_grad(pair, x, y, "fp32")
    noise = _alignment_grad(pair, x, y, "fp32")
    out: dict[str, Any] = {}
    for p in precisions:
        grad = ref if p == "fp32" else _alignment_grad(pair, x, y, p)
        dcka = {k: cka[p][k] - cka["fp32"][k] for k in cka["fp32"]}
        out[p] = {"gram_seconds": seconds[p], "vs_fp32": seconds[p] / seconds["fp32"] if "fp32" in seconds else None,
                  "max_abs_dcka": max(abs(v) for v in dcka.values()), "dcka": dcka,
                  "grad_rel_err": float((grad - ref).norm() / ref.norm().clamp_min(1e-300))}
    return {"spec": spec, "overrides": overrides, "batch_size": batch_size, "steps": steps, "warmup": warmup,
            "pairs": len(pair.pairs), "measure": pair.measure, "cka_fp32": cka["fp32"], "precisions": out,
            "fp32_repeat_grad_rel_err": float((noise - ref).norm() / ref.norm().clamp_min(1e-300))}


def gram_precision(pairs: dict[str, tuple[str, list[str]]], batch_size: int = 256, steps: int = 5, warmup: int = 1,
                   device: str = "cpu") -> dict[str, Any]:
    """The record of ``scripts/gram_precision.py``: :func:`pair_precision` for each named pair."""
    dev = bench_device(device)
    gpu = ({"name": torch.cuda.get_device_name(dev), "capability": list(torch.cuda.get_device_capability(dev)),
            "bf16_supported": torch.cuda.is_bf16_supported()} if dev.type == "cuda" else None)
    return {"kind": "gram_precision", "device": str(dev), "machine": machine(dev), "cpu": cpu_features(), "gpu": gpu,
            "tf32": "TF32 tensor cores for the similarity's products" if dev.type == "cuda"
            else "fp32: TF32 is a CUDA format, so tf32 means fp32 on this device",
            "pairs": {name: pair_precision(spec, overrides, batch_size, steps, warmup, device)
                      for name, (spec, overrides) in pairs.items()}}
