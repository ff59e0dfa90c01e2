"""Reliability and security: bad input gives one line, faults lose nothing, checkpoints never run code.

* train-time bad specs (tests/bad_specs/train/), a checkpoint of another architecture, a non-UTF-8 spec;
* property-based: mutated specs give a PairSpec or a PairgraphError, never another exception;
* faults: SIGKILL + resume (slow, subprocesses; a fast in-process variant), leftover ``*.tmp``,
  torn metrics lines, NaN loss, disk full, unwritable folders;
* security: a pickle with code in it is refused (and not run); YAML tags are never constructed.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_specs import copy_paste_pair, run_cli

import pairgraph
from pairgraph.config import PairSpec, load_spec, parse_spec
from pairgraph.core.weights import load_weights
from pairgraph.errors import PairgraphError
from pairgraph.training import resume_run
from pairgraph.training.runs import truncate_metrics

torch.set_num_threads(1)

BAD = Path(__file__).parent / "bad_specs"
ROOT = Path(__file__).resolve().parents[1]


def tiny(**train) -> dict:
    return copy_paste_pair({"batch_size": 16, "steps": 12, "eval_every": 6, "checkpoint_every": 2, "lr": 3e-3,
                            "seed": 1, **train})



def assert_one_line_error(code: int, err: str, expect: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    text = " ".join(err.split())
    assert text.startswith("error:"), text
    assert expect in text, f"{expect!r} not in {text!r}"
    assert "fix:" in text


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def same_run(run: Path, ref: Path, summary: dict, ref_summary: dict) -> None:
    """Identical final metrics, and the same metric lines: no step lost or logged twice."""
    assert summary["test"] == ref_summary["test"]
    assert summary["best_val_loss"] == ref_summary["best_val_loss"]
    assert summary["best_step"] == ref_summary["best_step"]
    got, want = metrics(run), metrics(ref)
    assert [(r["step"], r.get("split")) for r in got] == [(r["step"], r.get("split")) for r in want]
    assert [r.get("loss") for r in got] == [r.get("loss") for r in want]


# ---------------------------------------------------------------- bad input beyond `compile`


@pytest.mark.parametrize("path", sorted((BAD / "train").glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_spec_at_train_time_gives_one_line_error(path, tmp_path, capsys, monkeypatch):
    """Specs whose problem only shows when training starts (data is read by `train`, not `compile`)."""
    monkeypatch.chdir(tmp_path)  # build/<name> lands here
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ")
    code, _, err = run_cli(["train", str(path), "--runs-dir", str(tmp_path / "runs"), "--no-progress"],
                           capsys, monkeypatch)
    assert_one_line_error(code, err, expect)
    assert not list((tmp_path / "runs").rglob("*.safetensors"))


def test_bad_corpus_is_large_enough():
    assert len(list(BAD.rglob("*.yaml"))) >= 30


def test_checkpoint_of_another_architecture(tmp_path, capsys, monkeypatch):
    """guide.weights of another model: compile refuses it, saying it does not fit the guide."""
    from safetensors.torch import save_file

    ckpt = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in torch.nn.Linear(4, 3).state_dict().items()}, str(ckpt))
    other = tiny()
    other["guide"]["args"]["d_model"] = 16  # same model, other width: every key there, shapes differ
    pt = tmp_path / "narrow.pt"
    torch.save(pairgraph.compile(other, tmp_path / "b0", render=False, notify=None).build().guide.state_dict(), pt)
    for path, what in ((ckpt, "missing ["), (pt, "shape mismatch at [")):
        spec = tiny()
        spec["guide"]["weights"] = str(path)
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
        code, _, err = run_cli(["compile", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "b"), "--no-render"],
                               capsys, monkeypatch)
        assert_one_line_error(code, err, f"guide checkpoint '{path}' does not fit the guide architecture ({what}")


def test_spec_that_is_not_utf8(tmp_path, capsys, monkeypatch):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    code, _, err = run_cli(["validate", str(p)], capsys, monkeypatch)
    assert_one_line_error(code, err, "not UTF-8 text")


@pytest.mark.parametrize("value", ["[/x]lamb", "[bold]lamb"])
def test_brackets_in_a_bad_value_are_printed_verbatim(value, tmp_path, capsys, monkeypatch):
    p = tmp_path / "markup.yaml"
    p.write_text(f"name: x\ntrain: {{optimizer: {json.dumps(value)}}}\n")
    code, _, err = run_cli(["validate", str(p)], capsys, monkeypatch)
    assert_one_line_error(code, err, f"unknown optimizer {value!r}")


# ---------------------------------------------------------------- property-based: never a traceback

SAFE = "abcdefghijklmnopqrstuvwxyzABC0123456789_-.*/ []{},'\"!&|#%@"  # no ':' — never imports a module
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(), st.text(SAFE, max_size=12),
    st.lists(st.integers(-5, 50), max_size=3), st.dictionaries(st.text(SAFE, max_size=5), st.integers(-3, 3), max_size=2),
    st.sampled_from(["cka", "debiased_cka", "rsa", "rnn", "lstm", "deep_fcn", "resnet18", "transformer_decoder",
                     "uniform", "depth", "copy_paste", "parity", "guidance", "baseline", "distill", "adamw",
                     "flatten", "token", "auto", "cpu", "blocks.*", "untrained", "train", "1e-3", "-1", ""]),
)
SMALL = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from([0.5, -1.0, 1e-3, float("nan")]),
                  st.text("abcxyz_.*", max_size=6), st.lists(st.integers(0, 6), max_size=2),
                  st.sampled_from(["rnn", "lstm", "cka", "rsa", "depth", "baseline", "distill", "token", "blocks.*"]))


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    return out


def _mutate(data, spec: dict, values) -> dict:
    """Apply 1-3 random edits: drop a key, change a value's type, add an unknown key, list-ify a mapping."""
    spec = json.loads(json.dumps(spec))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(spec)
        op = data.draw(st.sampled_from(["drop", "set", "unknown", "listify"]))
        path = data.draw(st.sampled_from(paths)) if paths else ()
        parent = spec
        for k in path[:-1]:
            parent = parent[k]
        if not path or not isinstance(parent, dict):
            spec[data.draw(st.text(SAFE, min_size=1, max_size=8))] = data.draw(values)
        elif op == "drop":
            del parent[path[-1]]
        elif op == "set":
            parent[path[-1]] = data.draw(values)
        elif op == "unknown":
            target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
            target[data.draw(st.text(SAFE, min_size=1, max_size=8))] = data.draw(values)
        else:
            parent[path[-1]] = [parent[path[-1]]]
    return spec


BASES = [tiny(), {"name": "tiny_min"}, yaml.safe_load((ROOT / "specs" / "rnn_from_transformer.yaml").read_text())]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_specs_parse_or_raise_pairgraph_error(data):
    spec = _mutate(data, data.draw(st.sampled_from(BASES)), VALUES)
    try:
        result = parse_spec(spec, "<mutated>")
    except PairgraphError as e:
        assert "\n" not in str(e) and e.hint, str(e)
    else:
        assert isinstance(result, PairSpec)


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_tiny_specs_compile_or_raise_pairgraph_error(data, tmp_path_factory):
    base = tiny()
    base["task"]["size"] = 40
    spec = _mutate(data, base, SMALL)
    try:
        cp = pairgraph.compile(spec, tmp_path_factory.mktemp("b"), render=False, notify=None)
    except PairgraphError as e:
        assert "\n" not in str(e) and e.hint, str(e)
    else:
        assert len(cp.correspondence) >= 1


# ---------------------------------------------------------------- faults: kills, torn files, NaN, disk


def test_truncate_metrics_drops_torn_and_garbage_lines(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3, 4, 5)]
    raw = ("\n".join(lines) + "\n").encode() + b'{"step": 6, "lo' + b"\n\x00\x00\xff\xfe\n7\n[]\n"
    (tmp_path / "metrics.jsonl").write_bytes(raw)
    truncate_metrics(tmp_path, 4)
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of tiny() (12 steps, checkpoint every 2, eval every 6)."""
    root = tmp_path_factory.mktemp("ref")
    summary = pairgraph.compile(tiny(), root / "b", render=False, notify=None).train(
        runs_dir=root, run_id="full", progress=False)
    return root / "tiny" / "full", summary


def test_kill_with_torn_line_and_tmp_files_resumes_exactly(tmp_path, reference):
    """In-process kill: stop after step 5 (last checkpoint: step 4), leave what a SIGKILL can leave —
    a torn metrics line and half-written ``*.tmp`` files — then resume: the same run as uninterrupted."""
    ref, ref_summary = reference
    cp = pairgraph.compile(tiny(), tmp_path / "b", render=False, notify=None)
    assert cp.train(runs_dir=tmp_path, run_id="cut", progress=False, stop_after=5)["stopped_at"] == 5
    run = tmp_path / "tiny" / "cut"
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 6, "loss": 0.12')
    for name in ("checkpoints/last.safetensors.tmp", "checkpoints/last_state.pt.tmp", "summary.json.tmp"):
        (run / name).write_bytes(b"\x00garbage from a killed write")
    summary = resume_run(run, progress=False)
    same_run(run, ref, summary, ref_summary)
    assert json.loads((run / "summary.json").read_text())["test"] == ref_summary["test"]


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, reference):
    from safetensors.torch import load_file

    from pairgraph.core.loss import GuidedPair

    forward = GuidedPair.forward

    def poisoned(self, x, y, step=None):
        out = forward(self, x, y, step)
        if step is not None and step >= 4:  # the 5th step's loss is NaN
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(GuidedPair, "forward", poisoned)
    cp = pairgraph.compile(tiny(), tmp_path / "b", render=False, notify=None)
    with pytest.raises(PairgraphError, match=r"loss became nan at step 5 .*last good checkpoint \(step 4\)") as e:
        cp.train(runs_dir=tmp_path, run_id="nan", progress=False)
    assert "\n" not in str(e.value) and "fix: lower train.lr" in str(e.value)
    ckpt = tmp_path / "tiny" / "nan" / "checkpoints"
    weights = load_file(str(ckpt / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert torch.load(ckpt / "last_state.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(GuidedPair, "forward", forward)  # the cause fixed, the run continues exactly
    ref, ref_summary = reference
    same_run(tmp_path / "tiny" / "nan", ref, resume_run(tmp_path / "tiny" / "nan", progress=False), ref_summary)


def test_huge_lr_diverges_into_a_clear_error(tmp_path, monkeypatch):
    """An update that blows the weights up (as a huge lr does) stops the run with one line naming the step.

    The blow-up is injected — the 5th optimizer step writes inf into a weight — rather than left to
    lr=1e30, whose overflow depends on the CPU's BLAS kernels (it stays finite on some machines).
    """
    real_step, calls = torch.optim.AdamW.step, []

    def exploding_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", exploding_step)
    cp = pairgraph.compile(tiny(), tmp_path / "b", render=False, notify=None)
    with pytest.raises(PairgraphError, match=r"loss became -?(nan|inf) at step 6 .*the last good checkpoint \(step 4\)") as e:
        cp.train(runs_dir=tmp_path, run_id="lr", progress=False)
    assert "\n" not in str(e.value) and "fix: lower train.lr" in str(e.value)
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny" / "lr" / "checkpoints"
    assert all(torch.isfinite(v).all() for v in load_file(str(ckpt / "last.safetensors")).values())
    assert torch.load(ckpt / "last_state.pt", weights_only=True)["step"] == 4


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch, reference):
    """ENOSPC while committing the 3rd checkpoint: one line naming the file; checkpoint 2 intact; resume exact."""
    import pairgraph.paths as paths_mod

    real_replace, calls = os.replace, []

    def full(src, dst):
        calls.append(dst)
        if str(dst).endswith("last_state.pt") and sum(str(c).endswith("last_state.pt") for c in calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(paths_mod.os, "replace", full)
    cp = pairgraph.compile(tiny(), tmp_path / "b", render=False, notify=None)
    with pytest.raises(PairgraphError) as e:
        cp.train(runs_dir=tmp_path, run_id="full", progress=False)
    msg = str(e.value)
    run = tmp_path / "tiny" / "full"
    assert "\n" not in msg and "No space left on device" in msg and "last_state.pt" in msg
    assert "fix: free space on that disk" in msg
    assert torch.load(run / "checkpoints" / "last_state.pt", weights_only=True)["step"] == 4
    assert not list(run.rglob("*.tmp"))  # the failed write cleaned up after itself
    monkeypatch.setattr(paths_mod.os, "replace", real_replace)
    ref, ref_summary = reference
    same_run(run, ref, resume_run(run, progress=False), ref_summary)


def _readonly_dir(path: Path, monkeypatch) -> None:
    """chmod 0o500; as root (where chmod does not stop writes) make creating anything there fail."""
    path.mkdir()
    path.chmod(0o500)
    try:
        (path / "probe").write_text("x")
    except PermissionError:
        return
    (path / "probe").unlink()
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.is_relative_to(path) and self != path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_unwritable_runs_dir_and_build_dir(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    try:
        _readonly_dir(ro, monkeypatch)
        spec = tmp_path / "tiny.yaml"
        spec.write_text(yaml.safe_dump(tiny()))
        monkeypatch.chdir(tmp_path)
        code, _, err = run_cli(["train", str(spec), "--runs-dir", str(ro), "--no-progress"], capsys, monkeypatch)
        assert_one_line_error(code, err, f"cannot access {ro / 'tiny'}")
        assert "Permission denied" in err and "writable" in err
        code, _, err = run_cli(["compile", str(spec), "-o", str(ro / "b"), "--no-render"], capsys, monkeypatch)
        assert_one_line_error(code, err, f"cannot write the compiled pair to {ro / 'b'}: Permission denied")
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------- security


class _Evil:
    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _evil_pickle(path: Path, marker: Path, wrap) -> None:
    evil = _Evil()
    evil.marker = marker
    torch.save(wrap(evil), path)


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.bin"])
def test_pickle_with_code_is_refused_not_run(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    _evil_pickle(path, marker, lambda e: {"weight": e})
    with pytest.raises(PairgraphError, match=r"refused to load guide checkpoint .*posix\.system|refused to load"):
        load_weights(torch.nn.Linear(2, 2), path)
    assert not marker.exists()


def test_pickle_guide_weights_refused_at_compile(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    _evil_pickle(tmp_path / "guide.pt", marker, lambda e: e)
    spec = tiny()
    spec["guide"]["weights"] = str(tmp_path / "guide.pt")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    code, _, err = run_cli(["compile", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "b"), "--no-render"],
                           capsys, monkeypatch)
    assert_one_line_error(code, err, "refused to load guide checkpoint")
    assert not marker.exists()


def test_pickle_resume_state_refused(tmp_path):
    cp = pairgraph.compile(tiny(), tmp_path / "b", render=False, notify=None)
    cp.train(runs_dir=tmp_path, run_id="r", progress=False, stop_after=2)
    marker = tmp_path / "pwned"
    state = tmp_path / "tiny" / "r" / "checkpoints" / "last_state.pt"
    _evil_pickle(state, marker, lambda e: {"step": e})
    with pytest.raises(PairgraphError, match="cannot read the resume state"):
        resume_run(tmp_path / "tiny" / "r", progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object/new:os.system",
                                 "!!python/name:os.system", "!!python/module:os"])
def test_yaml_python_tags_are_never_constructed(tmp_path, tag):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text(f"name: x\ntrain:\n  seed: {tag} ['touch {marker}']\n")
    with pytest.raises(PairgraphError, match="YAML syntax error"):
        load_spec(p)
    # through --set, a tag is not YAML but a plain string, and still never run
    with pytest.raises(PairgraphError, match="train.seed"):
        parse_spec({"name": "x"}, overrides=[f"train.seed={tag} ['touch {marker}']"])
    assert not marker.exists()


# ---------------------------------------------------------------- SIGKILL at random points (slow)


def _last_step(run: Path) -> int:
    try:
        text = (run / "metrics.jsonl").read_text(errors="replace")
    except OSError:
        return 0
    steps = []
    for ln in text.splitlines():
        try:
            steps.append(json.loads(ln)["step"])
        except (ValueError, KeyError, TypeError):
            pass
    return max(steps, default=0)


def _written_since(run: Path, start_ns: int) -> bool:
    """metrics.jsonl was written by this process (a resume first truncates it: a new file)."""
    try:
        return (run / "metrics.jsonl").stat().st_mtime_ns >= start_ns
    except OSError:
        return False


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_uninterrupted(tmp_path):
    """3 SIGKILLs at random steps of a 200-step run (checkpoint every 2), resumed each time with
    ``pairgraph train --resume``: same metrics.jsonl steps and losses, same final test metrics."""
    seed = int(os.environ.get("PAIRGRAPH_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    spec = tiny(steps=200, eval_every=20)
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    py = [sys.executable, "-m", "pairgraph", "train"]
    common = ["--runs-dir", str(tmp_path / "runs"), "--set", "train.checkpoint_every=2", "--no-progress"]

    def run(args: list[str], kill_at: int | None) -> int | None:
        """Run the CLI; SIGKILL it once metrics.jsonl reaches step ``kill_at`` (+ a random few ms)."""
        start = time.time_ns()
        proc = subprocess.Popen([*py, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        run_dir = tmp_path / "runs" / "tiny" / "k"
        deadline = time.time() + 300
        while kill_at is not None and proc.poll() is None and time.time() < deadline:
            if _written_since(run_dir, start) and _last_step(run_dir) >= kill_at:
                time.sleep(rng.uniform(0, 0.05))
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        out, _ = proc.communicate(timeout=300)
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"exit {proc.returncode}: {out}")
        return proc.returncode

    kills = sorted(rng.sample(range(4, 190), 3))
    codes = [run([str(spec_file), "--run-id", "k", *common], kills[0])]
    for at in kills[1:]:
        codes.append(run(["--resume", str(tmp_path / "runs" / "tiny" / "k")], at))
    while not (tmp_path / "runs" / "tiny" / "k" / "summary.json").exists():
        codes.append(run(["--resume", str(tmp_path / "runs" / "tiny" / "k")], None))
        assert len(codes) < 10
    assert codes.count(-signal.SIGKILL) >= 2, (seed, kills, codes)
    run([str(spec_file), "--run-id", "ref", *common], None)
    k, ref = tmp_path / "runs" / "tiny" / "k", tmp_path / "runs" / "tiny" / "ref"
    same_run(k, ref, json.loads((k / "summary.json").read_text()), json.loads((ref / "summary.json").read_text()))
    assert [r["step"] for r in metrics(k) if "split" not in r] == list(range(1, 201)), seed
    print(f"kill seed {seed}: killed at steps ≥ {kills}, exit codes {codes}")
