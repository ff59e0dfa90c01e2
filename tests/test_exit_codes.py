"""Exit codes that mean what they say, through the installed console script in a subprocess:
0 only for success, 2 for a user error (one line, no traceback), 130 for an interrupt."""

from __future__ import annotations

import json
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


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300,
                          check=False)


def _spec_file(tmp_path: Path, **train) -> Path:
    spec = copy_paste_pair({"batch_size": 16, "steps": 12, "eval_every": 6, "lr": 3e-3, "seed": 1, **train})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_console_script_exists():
    assert SCRIPT.exists(), "install the package (make install) so the console script is on the venv's bin"


def test_success_is_0_and_a_user_error_is_2_with_one_line(tmp_path):
    ok = _cli(["validate", str(_spec_file(tmp_path))], tmp_path)
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = _cli(["validate", str(tmp_path / "missing.yaml")], tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert next(ln for ln in bad.stderr.splitlines() if ln.strip()).startswith("error:")


def test_an_unknown_flag_is_a_usage_error_not_success(tmp_path):
    proc = _cli(["train", "--no-such-flag"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def _interrupt_after_first_checkpoint(tmp_path: Path, spec: Path) -> subprocess.CompletedProcess:
    run = tmp_path / "runs" / "tiny" / "int"
    proc = subprocess.Popen([str(SCRIPT), "train", str(spec), "--runs-dir", str(tmp_path / "runs"), "--run-id", "int",
                             "--no-progress", "--set", "train.checkpoint_every=2"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if (run / "checkpoints" / "last_state.pt").exists():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_during_train_exits_130_names_the_step_and_the_resume_command(tmp_path):
    spec = _spec_file(tmp_path, steps=4000, eval_every=1000)
    proc = _interrupt_after_first_checkpoint(tmp_path, spec)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    run = tmp_path / "runs" / "tiny" / "int"
    assert f"pairgraph train --resume {run}" in " ".join(proc.stderr.split()), proc.stderr
    assert "interrupted" in proc.stderr and "at step" in proc.stderr
    assert not (run / "summary.json").exists()  # not reported as finished
    resumed = _cli(["train", "--resume", str(run), "--no-progress"], tmp_path)
    assert resumed.returncode == 0 or "Traceback" not in resumed.stderr


@pytest.mark.parametrize("code", [1, 3])
def test_a_failing_subprocess_exit_code_is_not_swallowed(code, monkeypatch):
    """typer returns (not raises) an Exit under standalone_mode=False: main must still exit with it."""
    import typer

    from pairgraph.cli import main as cli_main

    @cli_main.app.command("fail-for-test", hidden=True)
    def _fail() -> None:
        raise typer.Exit(code)

    monkeypatch.setattr(sys, "argv", ["pairgraph", "fail-for-test"])
    with pytest.raises(SystemExit) as e:
        cli_main.main()
    assert e.value.code == code
    cli_main.app.registered_commands[:] = [c for c in cli_main.app.registered_commands if c.name != "fail-for-test"]


def test_summary_of_a_finished_run_is_json(tmp_path):
    spec = _spec_file(tmp_path)
    proc = _cli(["train", str(spec), "--runs-dir", str(tmp_path / "runs"), "--run-id", "done", "--no-progress"],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "runs" / "tiny" / "done" / "summary.json").read_text())
    assert summary["steps"] == 12


def test_validate_rejects_what_compile_rejects_without_data(tmp_path):
    """`validate` once said ok for specs that `compile` refused (an unknown preset, a layer selection
    that selects nothing); it now builds and traces both models on the meta device."""
    spec = yaml.safe_load(_spec_file(tmp_path).read_text())
    cases = {
        "preset": ({**spec, "guide": {**spec["guide"], "args": {"preset": "nope"}}}, "has no preset 'nope'"),
        "layers": ({**spec, "target": {**spec["target"], "layers": {"include": ["nothing.*"]}}},
                   "target.layers selects no tap points"),
        "mapping": ({**spec, "mapping": {"kind": "learned", "batches": 0}}, "mapping option batches"),
    }
    for name, (bad, expect) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(bad))
        for command in (["validate", str(path)], ["compile", str(path), "-o", str(tmp_path / "b"), "--no-render"]):
            proc = _cli(command, tmp_path)
            assert proc.returncode == 2 and expect in " ".join(proc.stderr.split()), (name, command, proc.stderr)
    learned = tmp_path / "learned.yaml"
    learned.write_text(yaml.safe_dump({**spec, "mapping": {"kind": "learned", "batches": 1}}))
    ok = _cli(["validate", str(learned)], tmp_path)
    assert ok.returncode == 0 and "measured on data when compiled" in " ".join(ok.stdout.split())


def test_nproc_checks_the_spec_before_launching_and_a_failed_worker_is_not_success(tmp_path):
    spec = yaml.safe_load(_spec_file(tmp_path).read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**spec, "guide": {**spec["guide"], "args": {"preset": "nope"}}}))
    proc = _cli(["train", str(bad), "--nproc", "2", "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert proc.returncode == 2 and "running: torchrun" not in proc.stderr and "has no preset" in proc.stderr
    odd = tmp_path / "odd.yaml"
    odd.write_text(yaml.safe_dump({**spec, "train": {**spec["train"], "batch_size": 15}}))
    proc = _cli(["train", str(odd), "--nproc", "2", "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert proc.returncode == 2 and "does not divide over 2 processes" in proc.stderr
    missing = tmp_path / "missing.yaml"  # passes the check (no data read), fails in the workers
    missing.write_text(yaml.safe_dump({
        "name": "nodata", "task": {"kind": "language_modeling", "data_dir": str(tmp_path / "none"), "context": 8},
        "guide": {"model": "transformer_decoder", "args": {"preset": "cpu", "num_layers": 1, "d_model": 16}},
        "target": {"model": "rnn", "args": {"num_layers": 1, "hidden": 16}}, "train": {"batch_size": 8, "steps": 2}}))
    proc = _cli(["train", str(missing), "--nproc", "2", "--runs-dir", str(tmp_path / "runs")], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "worker processes failed" in proc.stderr
