"""Run folders: ``runs/<name>/<id>/`` with the resolved spec, the environment, metrics and summary.

A run owns its folder: it is created exclusively (a default id taken by a run started in the same
second gets ``-2``, ``-3``…) and held for the whole run by an advisory lock on ``<run>/.lock`` that
names the process and host; the lock dies with its process, so a killed run's folder is free again.
The resolved spec is stored with its digest, and a hand-edited ``spec.yaml`` is refused at resume.
See docs/reliability.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from pairgraph.config import PairSpec, with_defaults
from pairgraph.config.diff import RUNTIME_FIELDS, changed_fields, extendable_fields
from pairgraph.config.yaml_io import parse_yaml
from pairgraph.errors import Interrupted, PairgraphError, SpecError
from pairgraph.paths import atomic_write, check_name, inside
from pairgraph.version import __version__


def new_run_id(spec: PairSpec) -> str:
    """``<date>-<time>-<mode>-s<seed>``: sortable, and says what the run was (a ``package.module:ClassName``
    mode by its class name: a folder name holds no colon)."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{spec.guidance.mode.rpartition(':')[2]}-s{spec.train.seed}"


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


DIGEST_PREFIX = "# pairgraph spec sha256: "


def write_spec(run_dir: Path, spec: PairSpec) -> None:
    """The run's resolved spec, headed by the digest of the rest of the file."""
    body = yaml.safe_dump(spec.resolved(), sort_keys=False)
    atomic_write(run_dir / "spec.yaml", DIGEST_PREFIX + hashlib.sha256(body.encode()).hexdigest() + "\n" + body)


def start_run(run_dir: Path, spec: PairSpec, device: torch.device, guide_weights: str | None) -> None:
    """Write the resolved spec and the environment of a new run."""
    write_spec(run_dir, spec)
    env = environment(device, spec.train.seed)
    env["guide_weights"] = guide_weights
    write_json(run_dir / "env.json", env)


def stored_spec(run_dir: Path) -> dict[str, Any] | None:
    """The resolved spec a run folder was started with (None when there is none to read); a spec.yaml
    edited since the run wrote it (its digest line no longer matches) is refused in one line."""
    path = run_dir / "spec.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    head, _, body = text.partition("\n")
    if head.startswith(DIGEST_PREFIX) and head[len(DIGEST_PREFIX):] != hashlib.sha256(body.encode()).hexdigest():
        raise PairgraphError(f"{path} was edited after the run wrote it (its digest line no longer matches)",
                             f"restore it, or start a new run with the edited spec: pairgraph train {path}")
    try:
        data, _ = parse_yaml(text, str(path))
    except SpecError:
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
        write_spec(run_dir, spec)
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


class RunInUse(PairgraphError):
    """A live process holds the run folder (its ``.lock``)."""


@dataclass
class RunLock:
    """The advisory lock a live run holds on ``<run>/.lock`` (released when closed or when its process ends)."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays, naming its last holder
            self.fd = None


def lock_run(run_dir: Path) -> RunLock:
    """Hold ``run_dir`` for this process, or refuse in one line naming the live process that holds it."""
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip() or "another process"
        os.close(fd)
        raise RunInUse(f"run {run_dir} is being written by a live run ({holder})",
                             "wait for it to end or stop it; start a new run with another --run-id") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    return RunLock(path, fd)


def claim_run(root: Path, run_id: str | None, default_id: str) -> tuple[Path, RunLock, bool]:
    """The run folder under ``root`` (``runs/<name>``), locked: ``(folder, lock, created)``.

    An explicit ``run_id`` may name an existing folder (continued or refused by :func:`check_run_folder`);
    a default id is only ever a folder this call creates (``default_id``, else ``default_id-2``, …).
    """
    if run_id is not None:
        check_name(run_id, "--run-id")
    root.mkdir(parents=True, exist_ok=True)
    if run_id is not None:
        run_dir = inside(root, run_id)
        created = not run_dir.exists()
        run_dir.mkdir(exist_ok=True)
        return run_dir, lock_run(run_dir), created
    for n in range(1, 1000):
        run_dir = inside(root, default_id if n == 1 else f"{default_id}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir, lock_run(run_dir), True
    raise PairgraphError(f"999 runs under {root} already start with {default_id}", "pass --run-id")


def resume_claim(run_dir: Path) -> RunLock:
    """Lock a run folder to continue it, and remove the temporary files a killed write left behind."""
    lock = lock_run(run_dir)
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob("*.tmp"):  # atomic_write's, orphaned: no live writer holds this run
            tmp.unlink(missing_ok=True)
    return lock


RUN_FILES = ("metrics.jsonl", "summary.json", "test_predictions.json", "tb", "checkpoints")


def restart_clean(run_dir: Path) -> bool:
    """Clear what a run that left no resume checkpoint wrote (so a restart never appends); True when
    there was something to clear."""
    found = [run_dir / n for n in RUN_FILES if (run_dir / n).exists()]
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return bool(found)


def abandon(run_dir: Path) -> None:
    """Remove a folder this run created when it failed before logging a step (no stub runs left behind)."""
    metrics = run_dir / "metrics.jsonl"
    if not (metrics.exists() and metrics.stat().st_size):
        shutil.rmtree(run_dir, ignore_errors=True)


def check_length(run_dir: Path, step: int, total: int) -> None:
    """A continued run may grow, never end before the step its checkpoint holds."""
    if total < step:
        raise PairgraphError(f"run {run_dir} is at step {step}; it cannot be continued to {total} steps",
                             f"pass train.steps ≥ {step}, or start a new run")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop) during training: handled as Ctrl-C is, with exit code 143."""


@dataclass
class SigtermStop:
    """SIGTERM's handler. Outside the training loop it raises :class:`Terminated` at once; inside it
    (``deferred``) it only records the request, so that the loop finishes its step, checkpoints it and
    then stops: a scheduler's grace period keeps the work done since the last checkpoint."""

    deferred: bool = False
    requested: bool = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.deferred:
            raise Terminated
        self.requested = True


@contextmanager
def sigterm_handled() -> Iterator[SigtermStop]:
    """Within the block, SIGTERM goes to a :class:`SigtermStop` (only the main thread can install handlers)."""
    stop = SigtermStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(exc: KeyboardInterrupt, message: str, hint: str) -> Interrupted:
    """The one-line :class:`Interrupted` for Ctrl-C (exit 130) or SIGTERM (exit 143)."""
    err = Interrupted(message.replace("interrupted", "terminated (SIGTERM)", 1) if isinstance(exc, Terminated)
                      else message, hint)
    err.exit_code = 143 if isinstance(exc, Terminated) else 130
    return err
