"""`make gpu-check`: what only a CUDA machine can tell (issue #28 item 5 first), sized for about 9 minutes on an H200.

The parts run in this order, each only while the budget lasts, so item 5's targets are measured first:

1. Speed: `pairgraph bench --device cuda` for both benchmark pairs, the networks in fp32 and under bf16
   autocast (`--precision bf16`), with the gram floor (g), the cached guide and peak memory from the CUDA
   allocator: results/bench/<pair>-cuda.json (with the batch-size and pairs tables) and <pair>-cuda-bf16.json.
2. Paper size: ResNet-18 → a Deep FCN at 224 px (synthetic data), 30 back-to-back steps of the target alone
   and guided, fp32 and bf16: images/s and peak memory. First the paper's text, 50 × 2,048 (zoo `deep_fcn`
   preset `paper`: fcn_deep_50x2048_from_resnet18-cuda[-bf16]-throughput.json), then the authors' code
   (preset `authors` of specs/paper/fcn_deep_from_resnet18.yaml: 2,048 then 47 × 1,024, dropout 0.1:
   fcn_deep_paper_from_resnet18-cuda[-bf16]-throughput.json); each record's `target` names the layout.
3. Profile: one step of (a), (b), (c) and (e) of each benchmark pair at batch 256 under torch.profiler
   (pairgraph.bench.profile): kernels per step, kernel time, wall time, device idle time, ATen ops:
   <pair>-cuda-profile.json.
4. Compile modes: (c) eager and with `train.compile`'s alignment compiled in modes default and
   reduce-overhead (CUDA graphs), each mode's first step timed apart (pairgraph.bench.compile_modes):
   <pair>-cuda-compile-modes.json. Four compiles in all.
5. Agreement (CUDA only): the guided loss, each of its terms and the target's gradients of the two
   benchmark pairs, computed on the CPU and on the GPU from the same weights and batch (fp32, TF32 off).
6. Similarity precision: fp32 | tf32 | bf16 products (scripts/gram_precision.py) on both pairs:
   results/bench/gram_precision-cuda.json.
7. Tests: the test files that exercise devices (`train.device: auto` picks the GPU there) and every test
   marked `gpu` (they skip without CUDA).
8. Training: the default spec trained briefly, baseline and guided, fp32 and bf16.

Then scripts/gpu_targets.py reads the records and prints each of item 5's targets, met or missed by how
much (also kept in the summary as `targets`). A part starts only while less than --budget seconds (default
420) have passed; a part left out is recorded as skipped, a part that fails is recorded in one line (its
traceback printed) and the next one runs. The summary, results/gpu/gpu_check.json, is
rewritten after every part, so a run stopped from outside keeps what it measured.

    python scripts/gpu_check.py [--out results/gpu] [--bench-out DIR] [--quick] [--device cuda|cpu]
                                [--compile-modes auto|eager]

--device cpu runs every part but 5 on the CPU (its bench records go under --out, never over `make bench`'s);
with --quick, at a tiny size: `python scripts/gpu_check.py --quick --device cpu --out /tmp/gc` smoke-tests
the script (--compile-modes eager leaves out its compiles). Run where pairgraph is installed, or from a
checkout (the package is then staged as it installs). With --device cuda it exits 2 with one line when no
CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gpu_targets  # scripts/, beside this file

ROOT = Path(__file__).resolve().parents[1]
PAPER = "specs/paper/fcn_deep_from_resnet18.yaml"
#: the paper-size layouts measured, in order: record name → overrides of PAPER
PAPER_LAYOUTS = {"fcn_deep_50x2048_from_resnet18": ["target.args.preset=paper"],
                 "fcn_deep_paper_from_resnet18": []}
#: --quick --device cpu: the same specs, shrunk until a 2-core CPU runs each part in seconds
TINY = {"fcn": ["target.args.width=64", "target.args.num_blocks=2"],
        "paper": ["task.image_size=[32,32]", "target.args.num_blocks=2", "target.args.width=32",
                  "target.args.first_width=32"]}
#: seconds a compile-modes part is expected to take (two cold compiles on an H200's host); it starts only if that fits
COMPILE_EXPECT = 90.0
TEST_FILES = ["tests/test_golden.py", "tests/test_runtime.py", "tests/test_cache.py", "tests/test_train.py",
              "tests/test_similarity.py", "tests/test_compile.py", "tests/test_precision.py", "tests/test_bench.py",
              "tests/test_step_syncs.py", "tests/test_compiled_step.py", "tests/test_profile.py"]


def _importable() -> str | None:
    """Make ``import pairgraph`` work from a checkout; returns the staged folder (for subprocesses)."""
    try:
        import pairgraph  # noqa: F401

        return None
    except ImportError:
        sys.path.insert(0, str(ROOT / "scripts"))
        import check_layout

        staged = Path(tempfile.mkdtemp(prefix="pairgraph-stage-"))
        check_layout.stage(staged)
        sys.path.insert(0, str(staged))
        return str(staged)


def _tiny(name: str, overrides: list[str], tiny: bool) -> list[str]:
    return overrides + (TINY["fcn"] if tiny and "fcn" in name else [])


def agreement(name: str, spec: str, overrides: list[str]) -> dict:
    """CPU vs GPU: the same pair, weights and batch; loss, terms and gradients compared."""
    import torch

    import pairgraph
    from pairgraph.tasks import get_task

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cp = pairgraph.compile(spec, Path(tempfile.mkdtemp()), overrides, render=False, notify=None)
    task = get_task(cp.spec.task)
    x = task.example_input(256, device="cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x.shape, generator=gen) if x.is_floating_point() else torch.randint(
        1, task.model_kwargs()["vocab_size"], x.shape, generator=gen)
    results, y = {}, None
    for device in ("cpu", "cuda"):
        pair = cp.build(device)
        if y is None:  # labels drawn once, from the CPU model's output shape
            with torch.no_grad():
                out, _ = pair.target(x)
            y = out.argmax(-1) if out.dim() == 3 else torch.randint(0, out.shape[-1], (out.shape[0],), generator=gen)
        res = pair(x.to(device), y.to(device), 0)
        res.loss.backward()
        grads = torch.cat([p.grad.flatten().cpu() for p in pair.target.parameters() if p.grad is not None])
        results[device] = (res, grads)
    (c, gc), (g, gg) = results["cpu"], results["cuda"]
    term_diff = max(abs(c.terms[k].item() - g.terms[k].item()) for k in c.terms)
    return {
        "pair": name, "terms": len(c.terms), "loss_cpu": c.loss.item(), "loss_cuda": g.loss.item(),
        "loss_abs_diff": abs(c.loss.item() - g.loss.item()), "max_term_abs_diff": term_diff,
        "grad_max_abs_diff": float((gc - gg).abs().max()), "grad_max_abs": float(gc.abs().max()),
        "grad_rel_diff": float((gc - gg).norm() / gc.norm().clamp_min(1e-30)),
    }


def speed(name: str, spec: str, overrides: list[str], device: str, precision: str, quick: bool) -> dict:
    """`pairgraph bench` of one pair: fp32 with the batch-size and pairs tables, bf16 with batch sizes only."""
    from pairgraph.bench import bench

    tiny = quick and device == "cpu"
    if tiny:
        sizes, pairs, steps, warmup, pool, batch = (), (), 2, 1, 32, 16
    else:
        sizes = (256, 1024) if quick else ((64, 256, 1024, 4096) if precision == "fp32" else (256, 1024, 4096))
        full_pairs = (1, 5, 10, 20, 40) if "fcn" in name else (1, 2, 3, 4)
        pairs = full_pairs if precision == "fp32" and not quick else ()
        steps, warmup, pool, batch = (5, 2, 1024, 256) if quick else (10, 3, 1024, 256)
    return bench(spec, batch, steps, warmup, device, _tiny(name, overrides, tiny), memory=not tiny, batch_sizes=sizes,
                 pair_counts=pairs, cache_pool=pool, precision=precision)


def precision_check(pairs: dict, device: str, quick: bool) -> dict:
    from pairgraph.bench import gram_precision

    tiny = quick and device == "cpu"
    named = {name: (spec, _tiny(name, overrides, tiny)) for name, (spec, overrides) in pairs.items()}
    return gram_precision(named, 16 if tiny else 256, 1 if tiny else 10, 0 if tiny else 2, device)


def paper_throughput(layout: list[str], device: str, precision: str, quick: bool) -> dict:
    from pairgraph.bench import throughput
    from pairgraph.config import load_spec

    tiny = quick and device == "cpu"
    overrides = layout + (TINY["paper"] if tiny else [])
    rec = throughput(PAPER, 8 if tiny else 256, 2 if tiny else 30, 1 if tiny else 3, device, overrides, precision)
    return {**rec, "target": load_spec(PAPER, overrides).resolved()["target"]}  # the layout measured


def step_profile(name: str, spec: str, overrides: list[str], device: str, quick: bool) -> dict:
    """One step of (a), (b), (c) and (e) under torch.profiler, batch 256, networks fp32."""
    from pairgraph.bench.profile import profile_record

    tiny = quick and device == "cpu"
    return profile_record(spec, 16 if tiny else 256, device, _tiny(name, overrides, tiny), cache_pool=32 if tiny else 1024,
                          steps=2 if quick else 3, warmup=1 if tiny else 3)


def compile_modes(name: str, spec: str, overrides: list[str], device: str, quick: bool, modes: str) -> dict:
    """(c) eager and compiled in each mode (`--compile-modes eager`: eager only, no compile)."""
    from pairgraph.bench.compile_modes import compile_modes as measure

    tiny = quick and device == "cpu"
    return measure(spec, 16 if tiny else 256, device, _tiny(name, overrides, tiny), steps=2 if tiny else 5 if quick else 10,
                   warmup=1 if tiny else 3, modes=() if modes == "eager" else None)


def training(device: str, quick: bool) -> list[dict]:
    import pairgraph

    tiny = quick and device == "cpu"
    steps = 4 if tiny else 100 if quick else 400
    out = []
    runs = Path(tempfile.mkdtemp())
    for mode in ("baseline", "guidance"):
        for precision in ("fp32", "bf16"):
            sets = [f"guidance.mode={mode}", f"train.precision={precision}", f"train.steps={steps}",
                    f"train.eval_every={steps}", f"train.device={device}", "train.lr=1e-3"]
            sets += ["task.size=400", "train.batch_size=16"] if tiny else []
            cp = pairgraph.compile("specs/rnn_from_transformer.yaml", runs / "build", sets, render=False, notify=None)
            t0 = time.perf_counter()
            s = cp.train(runs_dir=runs, run_id=f"{mode}-{precision}", progress=False)
            out.append({"mode": mode, "precision": precision, "steps": s["steps"], "wall_seconds": time.perf_counter() - t0,
                        "test": s["test"], "device": s["device"]})
    return out


def tests(staged: str | None, quick: bool) -> dict:
    files = ["tests/test_precision.py"] if quick else TEST_FILES
    env = None
    if staged:
        env = {**os.environ, "PYTHONPATH": staged + ":" + os.environ.get("PYTHONPATH", "")}
    # -P: the checkout's own pairgraph/ (without zoo/ and cli/ inside) must not shadow the installed one
    proc = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"files": files, "returncode": proc.returncode, "tail": tail}


class Parts:
    """Runs the check's parts in order, each only while the budget lasts; records times, what was skipped and
    what failed (a part that raises is recorded in one line, its traceback printed, and the next part runs:
    the check runs once, on borrowed time)."""

    def __init__(self, budget: float, on_done: Callable[[], None] = lambda: None):
        self.start, self.budget, self.on_done = time.perf_counter(), budget, on_done
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []
        self.failed: dict[str, str] = {}

    def run(self, name: str, fn: Callable[[], Any], keep: Callable[[Any], Any] = lambda out: None,
            expect: float = 0.0) -> Any:
        """Run ``fn`` unless the budget would be spent before its ``expect``ed seconds are over; ``keep`` its
        result, then ``on_done`` (the summary is saved)."""
        elapsed = time.perf_counter() - self.start
        if elapsed + expect > self.budget:
            self.skipped.append(name)
            print(f"skipped {name}: {elapsed:.0f} s passed (+ {expect:.0f} s expected), over the {self.budget:.0f} s "
                  "budget", flush=True)
            return None
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - any part's failure (an OOM, a failed compile) is recorded, not fatal
            from pairgraph.errors import one_line

            traceback.print_exc()
            self.failed[name], out = one_line(e), None
            print(f"failed {name}: {self.failed[name]}", flush=True)
        self.seconds[name] = time.perf_counter() - t0
        print(f"{name}: {self.seconds[name]:.1f} s ({time.perf_counter() - self.start:.0f} s in)", flush=True)
        if out is not None:
            keep(out)
        self.on_done()
        return out

    def record(self, name: str, fn: Callable[[], Any], path: Path, records: list[str], env: dict,
               expect: float = 0.0) -> None:
        """Run a part whose result is a record, written to ``path`` and listed in ``records``."""
        self.run(name, fn, lambda rec: records.append(_write(path, {**rec, "environment": env})), expect)


def _write(path: Path, rec: dict) -> str:
    path.write_text(json.dumps(rec, indent=2) + "\n")
    return str(path)


def run_parts(args: argparse.Namespace, staged: str | None, env: dict, bench_out: Path, out: Path) -> dict:
    from pairgraph.bench import BENCH_PAIRS

    dev = args.device
    record: dict = {"environment": env, "device": dev, "quick": args.quick, "agreement": [], "records": [],
                    "training": None, "tests": None}
    parts = Parts(args.budget, lambda: _write(out / "gpu_check.json", record))
    record["seconds"], record["skipped"], record["failed"] = parts.seconds, parts.skipped, parts.failed
    recs = record["records"]
    for precision in ("fp32", "bf16"):  # item 5's targets first
        suffix = "" if precision == "fp32" else f"-{precision}"
        for name, (spec, overrides) in BENCH_PAIRS.items():
            parts.record(f"bench {name} {precision}",
                         lambda n=name, s=spec, o=overrides, p=precision: speed(n, s, o, dev, p, args.quick),
                         bench_out / f"{name}-{dev}{suffix}.json", recs, env)
    for layout, sets in PAPER_LAYOUTS.items():
        for precision in ("fp32", "bf16"):
            suffix = "" if precision == "fp32" else f"-{precision}"
            parts.record(f"paper size {layout} {precision}",
                         lambda o=sets, p=precision: paper_throughput(o, dev, p, args.quick),
                         bench_out / f"{layout}-{dev}{suffix}-throughput.json", recs, env)
    for name, (spec, overrides) in BENCH_PAIRS.items():
        parts.record(f"profile {name}", lambda n=name, s=spec, o=overrides: step_profile(n, s, o, dev, args.quick),
                     bench_out / f"{name}-{dev}-profile.json", recs, env)
    for name, (spec, overrides) in BENCH_PAIRS.items():
        parts.record(f"compile modes {name}",
                     lambda n=name, s=spec, o=overrides: compile_modes(n, s, o, dev, args.quick, args.compile_modes),
                     bench_out / f"{name}-{dev}-compile-modes.json", recs, env, COMPILE_EXPECT)
    if dev == "cuda":
        for name, (spec, overrides) in BENCH_PAIRS.items():
            parts.run(f"agreement {name}", lambda s=spec, o=overrides, n=name: agreement(n, s, o),
                      lambda res: (record["agreement"].append(res), print(json.dumps(res), flush=True)))
    parts.record("similarity precision", lambda: precision_check(BENCH_PAIRS, dev, args.quick),
                 bench_out / f"gram_precision-{dev}.json", recs, env)
    if not args.skip_tests:
        parts.run("tests", lambda: tests(staged, args.quick), lambda res: record.update(tests=res))
    parts.run("training", lambda: training(dev, args.quick), lambda res: record.update(training=res))
    record["targets"] = gpu_targets.check(bench_out, dev)
    return record


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/gpu", help="the summary gpu_check.json (and, on a CPU, the records)")
    ap.add_argument("--bench-out", default=None, help="the benchmark records (default: results/bench on CUDA, "
                    "OUT/bench on a CPU)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and steps (tiny ones with --device cpu)")
    ap.add_argument("--budget", type=float, default=420.0, help="start no part after this many seconds")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--compile-modes", default="auto", choices=["auto", "eager"],
                    help="auto: each mode of the device compiled; eager: (c) eager only, no compile (a fast smoke test)")
    ap.add_argument("--tests-only", action="store_true", help="only the tests, recorded in gpu_check_tests.json")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here — fix: run make gpu-check on a machine with an NVIDIA GPU, "
              "or pass --device cpu", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    bench_out = Path(args.bench_out).resolve() if args.bench_out else (
        ROOT / "results" / "bench" if args.device == "cuda" else out / "bench")
    os.chdir(ROOT)  # specs by their paths in the repository, so records name them the same on every machine
    staged = _importable()
    out.mkdir(parents=True, exist_ok=True)
    bench_out.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "date": time.strftime("%Y-%m-%d")}
    if args.tests_only:
        record = {"environment": env, "tests": tests(staged, args.quick)}
        print("\n".join(record["tests"]["tail"]), flush=True)
        _write(out / "gpu_check_tests.json", record)
        return 1 if record["tests"]["returncode"] else 0
    record = run_parts(args, staged, env, bench_out, out)
    if record["tests"] is not None:
        print("\n".join(record["tests"]["tail"]), flush=True)
    _write(out / "gpu_check.json", record)
    print(gpu_targets.render(record["targets"]), flush=True)
    print(f"wrote {out / 'gpu_check.json'} and {len(record['records'])} records under {bench_out}"
          + (f"; skipped (budget): {', '.join(record['skipped'])}" if record["skipped"] else "")
          + (f"; failed: {', '.join(record['failed'])}" if record["failed"] else ""), flush=True)
    return 1 if record["failed"] or (record["tests"] is not None and record["tests"]["returncode"] != 0) else 0


if __name__ == "__main__":
    sys.exit(main())
