"""`make gpu-check`: what only a CUDA machine can tell, recorded under results/gpu/.

1. Agreement: the guided loss, each of its terms and the target's gradients of the two benchmark
   pairs, computed on the CPU and on the GPU from the same weights and batch (fp32, TF32 off).
2. Speed: `pairgraph bench` on the GPU for both benchmark pairs (overhead of the guided step over
   its floor, the cached guide, batch sizes and numbers of pairs), fp32 and with TF32 on.
3. Training: the default spec (copy-paste, RNN guided by a Transformer) trained briefly on the GPU,
   baseline and guided, in fp32 and bf16: the trainer's whole path on CUDA.
4. Tests: the test files that exercise devices (`train.device: auto` picks the GPU there).

    python scripts/gpu_check.py [--out results/gpu] [--quick]

Run where pairgraph is installed, or from a checkout (the package is then staged as it installs).
Exits 2 with one line when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "fcn_deep_1024_from_resnet18": ("specs/fcn_deep_from_resnet18.yaml", ["target.args.width=1024"]),
    "rnn_from_transformer": ("specs/rnn_from_transformer.yaml", []),
}


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


def agreement(name: str, spec: str, overrides: list[str]) -> dict:
    """CPU vs GPU: the same pair, weights and batch; loss, terms and gradients compared."""
    import torch

    import pairgraph
    from pairgraph.tasks import get_task

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cp = pairgraph.compile(ROOT / spec, Path(tempfile.mkdtemp()), overrides, render=False, notify=None)
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


def speed(name: str, spec: str, overrides: list[str], quick: bool, tf32: bool) -> dict:
    import torch

    from pairgraph.bench import bench

    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    sizes = (256, 1024) if quick else (64, 256, 1024, 4096)
    pairs = () if quick else ((1, 5, 10, 20, 40) if "fcn" in name else (1, 2, 3, 4))
    rec = bench(str(ROOT / spec), 256, 20, 5, "cuda", overrides, memory=False, batch_sizes=sizes,
                pair_counts=pairs, cache_pool=1024)
    rec["tf32"] = tf32
    return rec


def training(quick: bool) -> list[dict]:
    import pairgraph

    spec = ROOT / "specs" / "rnn_from_transformer.yaml"
    steps = 100 if quick else 400
    out = []
    runs = Path(tempfile.mkdtemp())
    for mode in ("baseline", "guidance"):
        for precision in ("fp32", "bf16"):
            sets = [f"guidance.mode={mode}", f"train.precision={precision}", f"train.steps={steps}",
                    f"train.eval_every={steps}", "train.device=cuda", "train.lr=1e-3"]
            cp = pairgraph.compile(spec, runs / "build", sets, render=False, notify=None)
            t0 = time.perf_counter()
            s = cp.train(runs_dir=runs, run_id=f"{mode}-{precision}", progress=False)
            out.append({"mode": mode, "precision": precision, "steps": s["steps"], "wall_seconds": time.perf_counter() - t0,
                        "test": s["test"], "device": s["device"]})
    return out


def tests(staged: str | None) -> dict:
    files = ["tests/test_golden.py", "tests/test_runtime.py", "tests/test_cache.py", "tests/test_train.py",
             "tests/test_similarity.py", "tests/test_compile.py"]
    env = None
    if staged:
        import os

        env = {**os.environ, "PYTHONPATH": staged + ":" + os.environ.get("PYTHONPATH", "")}
    # -P: the checkout's own pairgraph/ (without zoo/ and cli/ inside) must not shadow the installed one
    proc = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"files": files, "returncode": proc.returncode, "tail": tail}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/gpu")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and steps")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--tests-only", action="store_true", help="only step 4, recorded in gpu_check_tests.json")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device here — fix: run make gpu-check on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    staged = _importable()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0),
           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    record: dict = {"environment": env, "agreement": [], "training": None, "tests": None}
    if args.tests_only:
        record["tests"] = tests(staged)
        print("\n".join(record["tests"]["tail"]), flush=True)
        (out / "gpu_check_tests.json").write_text(json.dumps(record, indent=2) + "\n")
        return 1 if record["tests"]["returncode"] else 0
    for name, (spec, overrides) in PAIRS.items():
        record["agreement"].append(agreement(name, spec, overrides))
        print(json.dumps(record["agreement"][-1]), flush=True)
        for tf32 in (False, True):
            rec = speed(name, spec, overrides, args.quick, tf32)
            rec["environment"] = env
            path = out / f"bench-{name}-cuda{'-tf32' if tf32 else ''}.json"
            path.write_text(json.dumps(rec, indent=2) + "\n")
            print(f"{name} tf32={tf32}: overhead {rec['overhead']:.3f}, cached {rec.get('cache', {}).get('overhead')}",
                  flush=True)
    record["training"] = training(args.quick)
    print(json.dumps(record["training"]), flush=True)
    if not args.skip_tests:
        record["tests"] = tests(staged)
        print("\n".join(record["tests"]["tail"]), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
    failed = record["tests"] is not None and record["tests"]["returncode"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
