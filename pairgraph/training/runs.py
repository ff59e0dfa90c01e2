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

from pairgraph.config import PairSpec, with_defaults
from pairgraph.config.diff import RUNTIME_FIELDS, changed_fields, extendable_fields
from pairgraph.errors import PairgraphError
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


def stored_spec(run_dir: Path) -> dict[str, Any] | None:
    """The resolved spec a run folder was started with (None when there is none to read)."""
    try:
        data = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return with_defaults(data) if isinstance(data, dict) else None


def _differences(changes: dict[str, tuple[Any, Any]]) -> str:
    shown = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in list(changes.items())[:3])
    return shown + (f" (and {len(changes) - 3} more)" if len(changes) > 3 else "")


def check_run_folder(run_dir: Path, spec: PairSpec) -> None:
    """Refuse to write into a run folder that holds another run: a run of a spec that differs in what
    it computes, or a finished run asked for no more steps than it ran. (Runtime fields — device,
    workers, the guide cache — may differ; steps, epochs and checkpoint_every may grow.)"""
    stored = stored_spec(run_dir)
    if stored is None:
        return
    ours = spec.resolved()
    changes = changed_fields(stored, ours, RUNTIME_FIELDS | extendable_fields(stored))
    if changes:
        raise PairgraphError(f"run folder {run_dir} holds a run of another spec ({_differences(changes)})",
                             f"pick another --run-id, or continue that run as it was: pairgraph train --resume {run_dir}")
    if (run_dir / "summary.json").exists() and not changed_fields(stored, ours, RUNTIME_FIELDS):
        longer = "train.steps" in extendable_fields(stored)
        raise PairgraphError(f"run {run_dir} already finished", "pick another --run-id" + (
            f", or continue it for longer: pairgraph train --resume {run_dir} --set train.steps=N" if longer else
            " (its cosine schedule ended with the run: it cannot be continued)"))


def continue_run(run_dir: Path, spec: PairSpec) -> None:
    """A run continued with new extendable settings records them, and is no longer finished until it is."""
    stored = stored_spec(run_dir)
    if stored is not None and changed_fields(stored, spec.resolved(), frozenset()):
        atomic_write(run_dir / "spec.yaml", yaml.safe_dump(spec.resolved(), sort_keys=False))
    for name in ("summary.json", "test_predictions.json"):
        (run_dir / name).unlink(missing_ok=True)


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
