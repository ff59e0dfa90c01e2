"""Property: over the CLI's run flags and the states a run folder can be in (none, interrupted,
finished, holding another spec), exit 0 means the folder's files match the spec that ran; any
other outcome is a non-zero exit with one line, and a finished run's record is left as it was."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.cli.main import main

SPEC = copy_paste_pair({"batch_size": 16, "steps": 8, "eval_every": 4, "lr": 3e-3, "seed": 1})
STATES = ["none", "interrupted", "finished", "another_spec"]
ACTIONS = {
    "same_id": ["train", "{spec}", "--run-id", "r"],
    "same_id_other_lr": ["train", "{spec}", "--run-id", "r", "--set", "train.lr=0.01"],
    "same_id_more_steps": ["train", "{spec}", "--run-id", "r", "--set", "train.steps=10"],
    "resume": ["train", "--resume", "{run}"],
    "resume_more_steps": ["train", "--resume", "{run}", "--set", "train.steps=10"],
    "resume_other_lr": ["train", "--resume", "{run}", "--set", "train.lr=0.01"],
    "resume_with_spec": ["train", "{spec}", "--resume", "{run}"],
}


def _prepare(root: Path, state: str) -> None:
    if state == "none":
        return
    spec = SPEC if state != "another_spec" else {**SPEC, "train": {**SPEC["train"], "lr": 1e-2}}
    cp = pairgraph.compile(spec, root / "build", render=False, notify=None)
    cp.train(runs_dir=root / "runs", run_id="r", progress=False, stop_after=4 if state == "interrupted" else None)


def _cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["pairgraph", *args, "--no-progress"]
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, err.getvalue()


def _check_consistent(run: Path) -> None:
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["lr"] == spec["train"]["lr"] and summary["steps"] == spec["train"]["steps"] == max(steps)
    assert steps == sorted(steps) and len(set(steps)) <= len(steps)


@settings(max_examples=16, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(state=st.sampled_from(STATES), action=st.sampled_from(sorted(ACTIONS)))
def test_exit_0_means_the_run_folder_matches_its_spec(state, action):
    root = Path(tempfile.mkdtemp())
    try:
        _prepare(root, state)
        spec_file = root / "tiny.yaml"
        spec_file.write_text(yaml.safe_dump(SPEC))
        run = root / "runs" / "tiny" / "r"
        summary_before = (run / "summary.json").read_bytes() if (run / "summary.json").exists() else None
        args = [a.format(spec=spec_file, run=run) for a in ACTIONS[action]] + ["--runs-dir", str(root / "runs")]
        code, err = _cli(args)
        if code == 0:
            _check_consistent(run)
        else:
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert code == 2 and "Traceback" not in err and lines and lines[0].startswith("error:"), (code, err)
            if summary_before is not None:
                assert (run / "summary.json").read_bytes() == summary_before  # a failed command changes no record
    finally:
        shutil.rmtree(root, ignore_errors=True)
