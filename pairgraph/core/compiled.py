"""The guided step's alignment under ``torch.compile`` (``train.compile: true``, ``pairgraph bench --compile``).

:meth:`pairgraph.core.loss.GuidedPair.compile_alignment` wraps its objective's terms (for mode guidance, the whole
batched alignment of :func:`pairgraph.core.loss.alignment_terms`) in a :class:`CompiledTerms`. The mode
(:func:`compile_mode`): ``reduce-overhead`` on a GPU — CUDA graphs, one launch for the alignment's kernels
where shapes are static (a new shape is compiled and recorded anew) — and ``default`` elsewhere, where
there is no launch cost to save. The first call compiles both passes (``compile_seconds``); if
``torch.compile`` is unavailable or fails (no C++ compiler, an unsupported Python), the step runs eager
from then on and one line names the cause.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def compile_mode(device: torch.device) -> str:
    """``reduce-overhead`` (CUDA graphs) on a GPU, ``default`` elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def _eager_backward() -> contextlib.AbstractContextManager[Any]:
    """Compile the backward with the forward (else its kernels compile lazily, inside the first backward)."""
    config = getattr(torch._functorch, "config", None)
    if config is None or not hasattr(config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)


def _cause(e: BaseException) -> str:
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}"[:200]


class CompiledTerms:
    """``terms(pairs, acts) -> {name: tensor}`` under ``torch.compile(mode=mode)``. The first call compiles and
    is timed (``seconds``: tracing, compiling both passes and one run); a failure to compile prints one line and leaves ``terms`` eager (``fallback``: the
    cause). Under CUDA graphs the terms are cloned out of the graph's memory, which its next replay overwrites
    (a step's terms are read after the next micro-batch, or at the next log interval)."""

    def __init__(self, terms: Callable[..., dict[str, Tensor]], mode: str):
        self.eager, self.mode = terms, mode
        self.seconds: float | None = None
        self.fallback: str | None = None
        try:
            self.fn = torch.compile(terms, mode=mode)
        except Exception as e:  # noqa: BLE001 - torch.compile itself refuses (e.g. an unsupported Python)
            self._fall_back(e)

    def _fall_back(self, e: BaseException) -> None:
        self.fallback, self.fn = _cause(e), self.eager
        print(f"train.compile: torch.compile is unavailable here ({self.fallback}); the step runs eager",
              file=sys.stderr, flush=True)

    def __call__(self, *args: Any) -> dict[str, Tensor]:
        if self.seconds is None and self.fallback is None:
            return self._first(*args)
        return self._out(self.fn(*args))

    def _out(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        graphed = self.fn is not self.eager and self.mode == "reduce-overhead"
        return {k: v.clone() for k, v in out.items()} if graphed else out

    def _first(self, *args: Any) -> dict[str, Tensor]:
        t0 = time.perf_counter()
        try:
            with _eager_backward():
                out = self.fn(*args)
        except Exception as e:  # noqa: BLE001 - dynamo and inductor fail in many types (no C++ compiler, ...)
            out = self.eager(*args)  # the objective's own error (a missing tap) is raised here, as it is
            self._fall_back(e)
            return out
        self.seconds = time.perf_counter() - t0
        print(f"alignment compiled in {self.seconds:.1f} s (torch.compile, mode {self.mode}; the first step only)",
              file=sys.stderr, flush=True)
        return self._out(out)
