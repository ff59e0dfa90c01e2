"""A study running ``--jobs 2`` leaves no process behind when it is stopped: a SIGTERM to the study's own
process (a scheduler's stop) or its death by SIGKILL stops its workers too, and their runs keep their
checkpoints. (Before: the workers were orphaned, idling on the job queue forever.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_specs import copy_paste_pair

SCRIPT = Path(sys.executable).with_name("pairgraph")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the process group")


def _group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies do not count)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _start(tmp_path: Path) -> tuple[subprocess.Popen, list[Path]]:
    """A study of two long runs at --jobs 2, waited on until both workers have checkpointed a step."""
    spec = copy_paste_pair({"batch_size": 16, "steps": 100000, "eval_every": 50000, "checkpoint_every": 2,
                            "lr": 1e-3, "seed": 0, "device": "cpu"}, size=200)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    study = {"name": "stop", "lrs": [1.0e-3, 3.0e-3], "seeds": [0, 1], "min_seeds": 2, "runs_dir": "runs",
             "cells": [{"name": "cp", "spec": "tiny.yaml", "arms": ["baseline"]}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    proc = subprocess.Popen([str(SCRIPT), "study", "s.yaml", "--jobs", "2"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        ckpts = sorted(tmp_path.glob("runs/stop/cp/baseline/*/*/checkpoints/last_state.pt"))
        if len(ckpts) == 2:
            return proc, ckpts
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the two runs did not start: {proc.communicate()}")


def _gone(pgid: int, seconds: float = 120) -> list[int]:
    deadline = time.time() + seconds
    while (left := _group(pgid)) and time.time() < deadline:
        time.sleep(0.2)
    return left


def test_a_sigterm_to_the_study_stops_its_workers_and_their_runs_keep_their_checkpoints(tmp_path):
    proc, ckpts = _start(tmp_path)
    proc.send_signal(signal.SIGTERM)  # the study's own process only, as `kill PID` or a scheduler would
    _, err = proc.communicate(timeout=180)
    assert proc.returncode in (130, 143), err[-2000:]
    assert "Traceback" not in err
    assert _gone(proc.pid) == []
    assert all(c.exists() for c in ckpts)


def test_workers_stop_when_the_study_process_is_killed(tmp_path):
    proc, _ = _start(tmp_path)
    proc.kill()  # SIGKILL: no handler runs in the study's process
    proc.communicate(timeout=180)  # the workers hold its output pipes until they end
    assert _gone(proc.pid) == []  # the workers got SIGTERM from the kernel (PR_SET_PDEATHSIG) and ended
