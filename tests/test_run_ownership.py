"""Runs that own their folder (issue 32): an exclusive claim with a lock naming the live process,
default ids that cannot collide, run ids that stay inside --runs-dir, restarts that never append, a
stored spec that cannot be edited under a run, and SIGTERM handled as Ctrl-C is."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.errors import PairgraphError
from pairgraph.paths import check_name, inside
from pairgraph.training import resume_run
from pairgraph.training.runs import claim_run, lock_run, stored_spec

SCRIPT = Path(sys.executable).with_name("pairgraph")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tiny(**train):
    return copy_paste_pair({"batch_size": 16, "steps": 8, "eval_every": 4, "lr": 3e-3, "seed": 1, **train}, size=200)


def _train(tmp_path, spec, run_id="r", **kw):
    cp = pairgraph.compile(spec, tmp_path / "build", render=False, notify=None)
    return cp.train(runs_dir=tmp_path / "runs", run_id=run_id, progress=False, **kw)


def _steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "split" not in r]


# -- the claim -------------------------------------------------------------------------------------


def test_runs_claimed_together_with_one_default_id_get_one_folder_each(tmp_path):
    got: list[Path] = []

    def claim():
        got.append(claim_run(tmp_path / "runs" / "tiny", None, "20260101-000000-guidance-s0")[0])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8
    assert sorted(p.name for p in got)[:2] == ["20260101-000000-guidance-s0", "20260101-000000-guidance-s0-2"]


def test_a_second_writer_is_refused_naming_the_live_process(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    lock = lock_run(run)
    with pytest.raises(PairgraphError, match=rf"being written by a live run \(pid {os.getpid()} on host "):
        lock_run(run)
    with pytest.raises(PairgraphError, match="being written by a live run"):
        claim_run(tmp_path, "r", "unused")
    lock.release()
    lock_run(run).release()  # free again once its holder let go


def test_the_lock_of_a_killed_process_is_stale(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    code = ("import sys, time; from pathlib import Path; from pairgraph.training.runs import lock_run; "
            "lock_run(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(PairgraphError, match=f"pid {proc.pid}"):
        lock_run(run)
    proc.kill()
    proc.wait()
    lock_run(run).release()  # the dead holder's lock file is still there, naming it, but holds nothing


@pytest.mark.slow
def test_four_trains_started_together_with_default_ids_make_four_consistent_folders(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny(steps=4, eval_every=2)))
    lrs = ["0.001", "0.002", "0.003", "0.004"]
    procs = [subprocess.Popen([str(SCRIPT), "train", str(spec), "--no-progress", "--set", f"train.lr={lr}"],
                              cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for lr in lrs]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 4
    seen = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        spec_lr = yaml.safe_load((run / "spec.yaml").read_text())["train"]["lr"]
        assert summary["lr"] == spec_lr and _steps(run) == [1, 2, 3, 4]  # one run's rows, not interleaved
        assert {r.get("lr") for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())} - {None} \
            == {spec_lr}
        seen.append(spec_lr)
    assert sorted(seen) == [float(lr) for lr in lrs]


# -- names that stay inside ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["..", ".", "../x", "../../x", "/tmp/x", "a/b", "a\\b", "a\x00b", "tab\there",
                                 ".hidden", "-flag", "", "x" * 101])
def test_names_with_a_separator_dots_or_control_characters_are_refused(bad):
    with pytest.raises(PairgraphError, match="not a folder-safe name"):
        check_name(bad, "--run-id")


@pytest.mark.parametrize("good", ["r", "20261204-203000-guidance-s0-2", "lr_3e-4.s1", "A"])
def test_plain_names_pass(good):
    assert check_name(good, "--run-id") == good


@pytest.mark.parametrize("run_id", ["../../escaped", "/tmp/escaped-abs", ".."])
def test_a_run_id_that_leaves_the_runs_folder_is_refused_and_writes_nothing(tmp_path, run_id):
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(PairgraphError, match="--run-id .* is not a folder-safe name"):
        _train(work, tiny(), run_id=run_id)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-abs").exists()
    assert not (work / "runs").exists()


def test_a_link_out_of_the_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(PairgraphError, match="outside"):
        inside(tmp_path / "root", "out")
    assert inside(tmp_path / "root", "in") == tmp_path / "root" / "in"


# -- restarts, resumes and the stored spec ----------------------------------------------------------


def test_a_restart_without_a_checkpoint_starts_clean_and_says_so(tmp_path, capsys):
    _train(tmp_path, tiny(), stop_after=2)  # stopped before its first checkpoint (step 4)
    run = tmp_path / "runs" / "tiny" / "r"
    assert _steps(run) == [1, 2] and not (run / "checkpoints" / "last_state.pt").exists()
    _train(tmp_path, tiny())
    assert _steps(run) == list(range(1, 9))  # not [1, 2, 1, 2, …]
    assert "no resume checkpoint: starting that run again from step 0" in capsys.readouterr().err


def test_resume_of_a_folder_without_a_checkpoint_starts_clean(tmp_path):
    _train(tmp_path, tiny(), stop_after=2)
    run = tmp_path / "runs" / "tiny" / "r"
    resume_run(run, progress=False)
    assert _steps(run) == list(range(1, 9))


def test_resume_cannot_shorten_a_run_below_its_last_step(tmp_path):
    _train(tmp_path, tiny())
    run = tmp_path / "runs" / "tiny" / "r"
    spec_before = (run / "spec.yaml").read_bytes()
    with pytest.raises(PairgraphError, match="is at step 8; it cannot be continued to 4 steps"):
        resume_run(run, progress=False, overrides=["train.steps=4"])
    assert (run / "spec.yaml").read_bytes() == spec_before and (run / "summary.json").exists()


def test_a_hand_edited_run_spec_is_refused_at_resume(tmp_path):
    _train(tmp_path, tiny(), stop_after=4)
    run = tmp_path / "runs" / "tiny" / "r"
    text = (run / "spec.yaml").read_text()
    (run / "spec.yaml").write_text(text.replace("lr: 0.003", "lr: 0.5"))
    with pytest.raises(PairgraphError, match="edited after the run wrote it"):
        resume_run(run, progress=False)
    (run / "spec.yaml").write_text(text)
    assert stored_spec(run)["train"]["lr"] == 3e-3


def test_resume_removes_the_temporary_files_a_killed_write_left(tmp_path):
    _train(tmp_path, tiny(), stop_after=4)
    run = tmp_path / "runs" / "tiny" / "r"
    orphans = [run / "checkpoints" / ".last_state.pt.999.deadbeef.tmp", run / ".metrics.jsonl.999.cafe.tmp",
               run / "checkpoints" / "last.safetensors.tmp"]
    for p in orphans:
        p.write_bytes(b"half a checkpoint")
    resume_run(run, progress=False)
    assert not any(p.exists() for p in orphans)


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(tmp_path, monkeypatch):
    from pairgraph.training.trainer import Trainer

    def broken(self, *a, **k):
        raise PairgraphError("the guide could not be built", None)

    monkeypatch.setattr(Trainer, "_guide_weights", broken)
    with pytest.raises(PairgraphError, match="could not be built"):
        _train(tmp_path, tiny(), run_id=None)
    assert list((tmp_path / "runs" / "tiny").iterdir()) == []


def test_sigterm_checkpoints_exits_143_and_names_the_resume_command(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny(steps=4000, eval_every=1000)))
    run = tmp_path / "runs" / "tiny" / "t"
    proc = subprocess.Popen([str(SCRIPT), "train", str(spec), "--runs-dir", str(tmp_path / "runs"), "--run-id", "t",
                             "--no-progress", "--set", "train.checkpoint_every=2"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (run / "checkpoints" / "last_state.pt").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "terminated" in err
    assert f"pairgraph train --resume {run}" in " ".join(err.split())
    step, kept = re.search(r"at step (\d+); the last good checkpoint \(step (\d+)\)", " ".join(err.split())).groups()
    assert step == kept  # the step it stopped at was checkpointed on the way out
    resumed = subprocess.run([str(SCRIPT), "train", "--resume", str(run), "--no-progress", "--set", "train.steps=40"],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0 and _steps(run) == list(range(1, 41)), resumed.stderr[-2000:]


def test_a_sigterm_on_a_step_not_yet_logged_writes_its_rows_with_its_checkpoint(tmp_path, monkeypatch):
    """SIGTERM after step 3, which train.log_every 10 has not read off the device yet: the checkpoint of step 3
    comes with metrics rows 1-3, so the resumed run logs every step once, with no gap."""
    from pairgraph.errors import Interrupted
    from pairgraph.training.trainer import Trainer

    evaluate_and_save = Trainer._evaluate_and_save

    def then_sigterm(self, loop):
        evaluate_and_save(self, loop)
        if loop.step == 3:
            self.sigterm.requested = True  # what SIGTERM's handler records inside the loop

    monkeypatch.setattr(Trainer, "_evaluate_and_save", then_sigterm)
    cp = pairgraph.compile(tiny(log_every=10, checkpoint_every=2), tmp_path / "b", render=False, notify=None)
    with pytest.raises(Interrupted, match="at step 3; the last good checkpoint \\(step 3\\)"):
        Trainer(cp, tmp_path / "runs", "t", progress=False).run()
    run = tmp_path / "runs" / cp.spec.name / "t"
    assert _steps(run) == [1, 2, 3]
    monkeypatch.undo()
    resume_run(run, progress=False)
    assert _steps(run) == list(range(1, 9))


def test_resume_of_a_live_run_is_refused_before_its_build_folder_is_rewritten(tmp_path):
    _train(tmp_path, tiny(), stop_after=4)
    run = tmp_path / "runs" / "tiny" / "r"
    module = run / "build" / "guided_pair.py"  # as a resumed live run has it
    module.parent.mkdir()
    module.write_text("# the live run's module\n")
    lock = lock_run(run)  # another process is training this run
    with pytest.raises(PairgraphError, match="being written by a live run"):
        resume_run(run, progress=False)
    assert module.read_text() == "# the live run's module\n"
    lock.release()
    resume_run(run, progress=False)  # once it has ended, the resume goes ahead and holds the run itself
    assert _steps(run) == list(range(1, 9)) and module.read_text() != "# the live run's module\n"
    lock_run(run).release()  # and lets go when done
