"""Run folders: ``runs/<name>/<id>/`` with the resolved spec, the environment, metrics and summary."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from pairgraph.config import PairSpec
from pairgraph.paths import atomic_write
from pairgraph.version import __version__


def new_run_id(spec: PairSpec) -> str:
    """``<date>-<time>-<mode>-s<seed>``: sortable, and says what the run was."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{spec.guidance.mode}-s{spec.train.seed}"


def environment(device: torch.device, seed: int) -> dict[str, Any]:
    """Versions, machine, device and seed: what a reader needs to say where a number came from."""
    import torchvision

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {
        "pairgraph": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.machine(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device), "seed": seed,
        "git_commit": commit,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def start_run(run_dir: Path, spec: PairSpec, device: torch.device, guide_weights: str | None) -> None:
    """Write the resolved spec and the environment of a new run."""
    atomic_write(run_dir / "spec.yaml", yaml.safe_dump(spec.resolved(), sort_keys=False))
    env = environment(device, spec.train.seed)
    env["guide_weights"] = guide_weights
    write_json(run_dir / "env.json", env)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (no duplicated steps)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill (or garbage a crash left at the end)
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(line)
    atomic_write(path, ("\n".join(keep) + "\n").encode() if keep else b"")
