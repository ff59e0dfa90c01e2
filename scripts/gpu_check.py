"""`make gpu-check`: what only a CUDA machine can tell, sized for under 8 minutes on one GPU.

1. Agreement (CUDA only): the guided loss, each of its terms and the target's gradients of the two
   benchmark pairs, computed on the CPU and on the GPU from the same weights and batch (fp32, TF32 off).
2. Tests: the test files that exercise devices (`train.device: auto` picks the GPU there) and every test
   marked `gpu` (they skip without CUDA).
3. Speed: `pairgraph bench --device cuda` for both benchmark pairs, the networks in fp32 and under bf16
   autocast (`--precision bf16`), with the gram floor (g), the cached guide and peak memory from the CUDA
   allocator: results/bench/<pair>-cuda.json and <pair>-cuda-bf16.json.
4. Similarity precision: fp32 | tf32 | bf16 products (scripts/gram_precision.py) on both pairs:
   results/bench/gram_precision-cuda.json.
5. Paper size: ResNet-18 → the Deep FCN of specs/paper/fcn_deep_from_resnet18.yaml, the authors' layout (zoo
   `deep_fcn` preset `authors`: 2,048 then 47 × 1,024, dropout 0.1; the paper's text says 50 × 2,048, preset
   `paper`) at 224 px (synthetic data), 30 back-to-back steps of the target alone and guided, fp32 and bf16:
   images/s and peak memory, results/bench/fcn_deep_paper_from_resnet18-cuda[-bf16]-throughput.json (its
   `target` field records the layout measured).
6. Training: the default spec trained briefly, baseline and guided, fp32 and bf16.

A part starts only while less than --budget seconds (default 420) have passed, so the whole check ends
within about 8 minutes; a part left out is recorded as skipped. The summary is results/gpu/gpu_check.json.

    python scripts/gpu_check.py [--out results/gpu] [--bench-out DIR] [--quick] [--device cuda|cpu]

--device cpu runs every part but 1 on the CPU (its bench records go under --out, never over `make bench`'s);
with --quick, at a tiny size: `python scripts/gpu_check.py --quick --device cpu --out /tmp/gc` smoke-tests
the script. Run where pairgraph is installed, or from a checkout (the package is then staged as it
installs). With --device cuda it exits 2 with one line when no CUDA device is present.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAPER = ("specs/paper/fcn_deep_from_resnet18.yaml", [])
#: --quick --device cpu: the same specs, shrunk until a 2-core CPU runs each part in seconds
TINY = {"fcn": ["target.args.width=64", "target.args.num_blocks=2"],
        "paper": ["task.image_size=[32,32]", "target.args.num_blocks=2", "target.args.width=32",
                  "target.args.first_width=32"]}
TEST_FILES = ["tests/test_golden.py", "tests/test_runtime.py", "tests/test_cache.py", "tests/test_train.py",
              "tests/test_similarity.py", "tests/test_compile.py", "tests/test_precision.py", "tests/test_bench.py"]


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


def paper_throughput(device: str, precision: str, quick: bool) -> dict:
    from pairgraph.bench import throughput
    from pairgraph.config import load_spec

    tiny = quick and device == "cpu"
    overrides = PAPER[1] + (TINY["paper"] if tiny else [])
    rec = throughput(PAPER[0], 8 if tiny else 256, 2 if tiny else 30, 1 if tiny else 3, device, overrides, precision)
    return {**rec, "target": load_spec(PAPER[0], overrides).resolved()["target"]}  # the layout measured


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
    """Runs the check's parts in order, each only while the budget lasts; records times and what was skipped."""

    def __init__(self, budget: float):
        self.start, self.budget = time.perf_counter(), budget
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget:
            self.skipped.append(name)
            print(f"skipped {name}: {elapsed:.0f} s passed, over the {self.budget:.0f} s budget", flush=True)
            return None
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] = time.perf_counter() - t0
        print(f"{name}: {self.seconds[name]:.1f} s", flush=True)
        return out


def _write(path: Path, rec: dict) -> str:
    path.write_text(json.dumps(rec, indent=2) + "\n")
    return str(path)


def run_parts(args: argparse.Namespace, staged: str | None, env: dict, bench_out: Path) -> dict:
    from pairgraph.bench import BENCH_PAIRS

    parts, dev = Parts(args.budget), args.device
    record: dict = {"environment": env, "device": dev, "quick": args.quick, "agreement": [], "records": [],
                    "training": None, "tests": None}
    if dev == "cuda":
        for name, (spec, overrides) in BENCH_PAIRS.items():
            res = parts.run(f"agreement {name}", lambda s=spec, o=overrides, n=name: agreement(n, s, o))
            if res is not None:
                record["agreement"].append(res)
                print(json.dumps(res), flush=True)
    if not args.skip_tests:
        record["tests"] = parts.run("tests", lambda: tests(staged, args.quick))
    for precision in ("fp32", "bf16"):
        for name, (spec, overrides) in BENCH_PAIRS.items():
            rec = parts.run(f"bench {name} {precision}",
                            lambda n=name, s=spec, o=overrides, p=precision: speed(n, s, o, dev, p, args.quick))
            if rec is not None:
                rec["environment"] = env
                suffix = "" if precision == "fp32" else f"-{precision}"
                record["records"].append(_write(bench_out / f"{name}-{dev}{suffix}.json", rec))
    rec = parts.run("similarity precision", lambda: precision_check(BENCH_PAIRS, dev, args.quick))
    if rec is not None:
        record["records"].append(_write(bench_out / f"gram_precision-{dev}.json", rec))
    for precision in ("fp32", "bf16"):
        rec = parts.run(f"paper size {precision}", lambda p=precision: paper_throughput(dev, p, args.quick))
        if rec is not None:
            suffix = "" if precision == "fp32" else f"-{precision}"
            record["records"].append(_write(bench_out / f"fcn_deep_paper_from_resnet18-{dev}{suffix}-throughput.json",
                                            rec))
    record["training"] = parts.run("training", lambda: training(dev, args.quick))
    record["seconds"], record["skipped"] = parts.seconds, parts.skipped
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
    record = run_parts(args, staged, env, bench_out)
    if record["tests"] is not None:
        print("\n".join(record["tests"]["tail"]), flush=True)
    _write(out / "gpu_check.json", record)
    print(f"wrote {out / 'gpu_check.json'} and {len(record['records'])} records under {bench_out}"
          + (f"; skipped (budget): {', '.join(record['skipped'])}" if record["skipped"] else ""), flush=True)
    return 1 if record["tests"] is not None and record["tests"]["returncode"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
