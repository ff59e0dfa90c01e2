"""``pairgraph bench``: what guidance costs above its floor, measured in one process.

The floor of a guided step is the target's own train step (a) plus one no-grad forward of the
guide (b); the similarity's own work (g) is a second floor on top of it. We time, interleaved round
by round so drift hits all alike, the median of ``steps`` rounds after ``warmup``:

    (a) target train step alone        (b) guide forward alone, no grad
    (g) the gram work alone            (c) pairgraph's guided step
    (d) a naive step written from the paper's published approach
    (e) the guided step with the guide cached (``--cache-pool``)

and report overhead = c / (a + b), overhead over the gram floor = c / (a + b + g), speedup = d / c,
and for the cached step e / (a + b) and e / a. One step under ``torch.profiler`` (kernels, device idle time:
:mod:`pairgraph.bench.profile`) and ``train.compile``'s modes timed against the eager step
(:mod:`pairgraph.bench.compile_modes`) are measured apart. Beside the times, the ATen ops and host syncs each variant
dispatches per step (:mod:`pairgraph.bench.ops`; ``--ops-only`` counts them without timing anything). (g) is exactly the similarity work exact linear CKA
(the spec's measure) needs in a guided step, on detached copies of the batch's mapped taps: every
distinct mapped guide tap prepared once without gradient, every distinct mapped target tap once with
gradient (centring, the gram F Fᵀ or the feature-space FᵀF when d < b, the norms), every pair scored,
the terms summed and backpropagated to the target taps (:mod:`pairgraph.bench.variants`).

Peak memory is measured per variant (the CUDA allocator's peak on a GPU, in process; the peak RSS
above the built pair on a CPU, in a fresh subprocess per variant) and reported as c against a + b.
``--precision bf16`` runs every variant's networks under bf16 autocast; the similarity's precision is
the spec's ``similarity.precision`` (:mod:`pairgraph.bench.precision` compares them).
"""

from pairgraph.bench.compile_modes import compile_modes
from pairgraph.bench.memory import peak_memory, peak_memory_child
from pairgraph.bench.naive import NaiveStep, naive_cka
from pairgraph.bench.ops import OpCounter, count_step, count_variants
from pairgraph.bench.precision import cpu_features, gram_precision, pair_precision
from pairgraph.bench.profile import profile_record, profile_step
from pairgraph.bench.record import bench, ops_record
from pairgraph.bench.throughput import throughput
from pairgraph.bench.variants import VARIANTS, build_variants, gram_floor, time_variants

#: the two benchmark pairs of ``make bench`` and ``make gpu-check``: name → (spec, overrides)
BENCH_PAIRS = {
    "fcn_deep_1024_from_resnet18": ("specs/fcn_deep_from_resnet18.yaml", ["target.args.width=1024"]),
    "rnn_from_transformer": ("specs/rnn_from_transformer.yaml", []),
}

__all__ = [
    "BENCH_PAIRS",
    "VARIANTS",
    "NaiveStep",
    "OpCounter",
    "bench",
    "build_variants",
    "compile_modes",
    "count_step",
    "count_variants",
    "cpu_features",
    "gram_floor",
    "gram_precision",
    "naive_cka",
    "ops_record",
    "pair_precision",
    "peak_memory",
    "peak_memory_child",
    "profile_record",
    "profile_step",
    "throughput",
    "time_variants",
]
