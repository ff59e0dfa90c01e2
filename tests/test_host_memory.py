"""Freed host memory stays in the process on a CPU (pairgraph.core.host_memory): a step that frees more than
glibc's trim threshold no longer page-faults its memory back in on the next step, and the trainer and the
benchmark's variants both ask for it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.core.host_memory import keep_freed_memory

# A step that allocates 4 × 20 MiB and frees it, after one 30 MiB block has raised glibc's dynamic thresholds
# (mmap 30 MiB, trim 60 MiB): under glibc's defaults the memory freed at the top of the heap goes back to the
# kernel, and each later step faults it in again, unless a small block another allocation left above it pins the
# top of the heap (the layout varies from process to process, so the default case is tried up to five times).
# Two steps first: where the heap settles; then the median of five steps' faults (a one-off fault is not the pattern).
STEPS = """
import resource, sys, torch
torch.set_num_threads(1)
from pairgraph.core.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
big = torch.ones(30 << 18)
del big
def step():
    ts = [torch.ones(20 << 18) for _ in range(4)]
    del ts
step()
step()
counts = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(counts)[2])
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_steps_reuse_the_memory_they_freed_instead_of_faulting_it_in_again():
    if not keep_freed_memory():
        pytest.skip("this C library has no mallopt")
    if not any(_faults("default") > 10_000 for _ in range(5)):  # the pattern faults under glibc's defaults
        pytest.skip("this malloc kept the freed memory under its defaults too: nothing to compare against")
    assert all(_faults("keep") < 100 for _ in range(3))


def test_the_trainer_and_the_benchmark_keep_freed_memory_on_a_cpu(tmp_path, monkeypatch):
    from pairgraph.bench import variants
    from pairgraph.training import trainer

    calls = []
    for mod in (trainer, variants):
        monkeypatch.setattr(mod, "keep_freed_memory", lambda: calls.append(1) or True)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(copy_paste_pair({"batch_size": 4, "steps": 1, "device": "cpu"})))
    compiled = pairgraph.compile(str(spec), tmp_path / "build", render=False, notify=None)
    trainer.Trainer(compiled, runs_dir=tmp_path / "runs", progress=False)
    assert calls == [1]
    variants.build_variants(compiled, 4, torch.device("cpu"), only=("target",))
    assert calls == [1, 1]
