"""A user's own guidance objective named in a spec: ``guidance.mode: package.module:ClassName`` (imported as a user
model's factory is, from beside the spec file) or a name the user registered; bad references are one line, exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from tiny_specs import copy_paste_pair, run_cli

import pairgraph
from pairgraph.config.names import OBJECTIVES
from pairgraph.tasks import get_task

#: the user's package: an MSE between the two taps' normalised Gram matrices, per mapped pair
OBJECTIVE_SOURCE = '''
"""A user's objective, written against pairgraph's public Objective class."""

import torch

from pairgraph.core.loss import Objective, tap_key


def gram(a):
    a = a.flatten(1).float()
    a = a - a.mean(0)
    g = a @ a.T
    return g / g.norm()


class GramMSE(Objective):
    name = "gram_mse"
    formula = "task + {weight} * sum over pairs of w * MSE(gram(target tap), gram(guide tap))"

    def terms(self, pairs, acts):
        return {tap_key(g, t): (gram(acts.target_taps[t]) - gram(acts.guide_taps[g])).pow(2).mean()
                for g, t, _ in pairs}


class ScaledGramMSE(GramMSE):
    """GramMSE times a learned positive scale: an objective with its own trainable state."""

    def __init__(self):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(()))

    def terms(self, pairs, acts):
        return {k: v * self.log_scale.exp() for k, v in super().terms(pairs, acts).items()}


def not_a_class():
    return None
'''


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory) -> Path:
    """A spec folder holding the package ``userobj`` (not on sys.path: found beside the spec file)."""
    root = tmp_path_factory.mktemp("specs")
    (root / "userobj").mkdir()
    (root / "userobj" / "__init__.py").write_text("")
    (root / "userobj" / "objectives.py").write_text(OBJECTIVE_SOURCE)
    (root / "userobj" / "broken.py").write_text("raise RuntimeError('half-written module')\n")
    return root


def _spec(folder: Path, mode: str, name: str = "userobj") -> Path:
    spec = copy_paste_pair({"batch_size": 16, "steps": 2, "eval_every": 2, "lr": 3e-3}, name=name,
                           guidance={"mode": mode})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _batch(cp, n=16):
    task = get_task(cp.spec.task)
    return next(iter(torch.utils.data.DataLoader(task.datasets(0)["train"], batch_size=n)))


def test_a_user_objective_compiles_and_trains_from_the_cli(spec_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the spec's folder: userobj is found beside the spec file
    spec = _spec(spec_dir, "userobj.objectives:GramMSE")
    code, _out, err = run_cli(["compile", str(spec), "-o", str(tmp_path / "build"), "--no-render"], capsys, monkeypatch)
    assert code == 0, err
    generated = (tmp_path / "build" / "guided_pair.py").read_text()
    assert "from userobj.objectives import GramMSE  # guidance.mode: your objective" in generated
    assert "guide_weights=guide_weights, objective=GramMSE)" in generated
    assert "out.loss = task + 1.0 * sum over pairs of w * MSE(gram(target tap), gram(guide tap))" in generated
    standalone = subprocess.run(  # the generated module alone, where userobj is importable (its folder)
        [sys.executable, "-c", "from guided_pair import build; print(type(build().objective).__name__)"],
        cwd=spec_dir, env={**os.environ, "PYTHONPATH": str(tmp_path / "build")}, capture_output=True, text=True,
        timeout=300, check=False)
    assert standalone.returncode == 0 and standalone.stdout.split() == ["GramMSE"], standalone.stderr
    code, _out, err = run_cli(["train", str(spec), "--runs-dir", str(tmp_path / "runs"), "--run-id", "r",
                              "--no-progress"], capsys, monkeypatch)
    assert code == 0, err
    run = tmp_path / "runs" / "userobj" / "r"
    assert json.loads((run / "summary.json").read_text())["mode"] == "userobj.objectives:GramMSE"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "terms" in r]
    mapping = json.loads((tmp_path / "build" / "mapping.json").read_text())
    assert len(steps) == 2 and steps[0]["terms"]
    for rec in steps:  # guidance_loss is the weighted sum of the class's terms, one per mapped pair
        assert len(rec["terms"]) == len(mapping["pairs"])
        assert rec["guidance_loss"] == pytest.approx(sum(rec["terms"].values()), rel=1e-5)


def test_the_generated_module_uses_the_class_and_its_terms_are_what_the_class_computes(spec_dir, tmp_path):
    spec = _spec(spec_dir, "userobj.objectives:GramMSE", name="userobj_py")
    cp = pairgraph.compile(spec, tmp_path / "build", render=False, notify=None)
    from userobj.objectives import GramMSE, gram

    pair = cp.build()
    assert type(pair.objective) is GramMSE
    x, y = _batch(cp)
    out = pair(x, y, 0)
    with torch.no_grad():
        _, g_taps = pair.guide(x)
        _, t_taps = pair.target(x)
    for g, t, _ in pair.pairs:
        expected = (gram(t_taps[t]) - gram(g_taps[g])).pow(2).mean()
        torch.testing.assert_close(out.terms[f"{g}->{t}"].detach(), expected)


def test_a_registered_name_resolves_from_python(spec_dir, tmp_path, monkeypatch):
    len(OBJECTIVES)  # the built-ins load first; the registration below is undone after the test
    monkeypatch.setattr(OBJECTIVES, "_items", dict(OBJECTIVES._items))
    monkeypatch.syspath_prepend(str(spec_dir))
    (spec_dir / "userobj" / "registered.py").write_text(textwrap.dedent('''
        from pairgraph.config.names import OBJECTIVES
        from userobj.objectives import GramMSE

        @OBJECTIVES.register("gram_mse")
        class RegisteredGramMSE(GramMSE):
            """GramMSE under a registered name."""
    '''))
    import userobj.registered  # noqa: F401 - registers "gram_mse"

    spec = copy_paste_pair({"batch_size": 16}, name="registered", guidance={"mode": "gram_mse"})
    cp = pairgraph.compile(spec, tmp_path / "build", render=False, notify=None)
    pair = cp.build()
    assert type(pair.objective).__name__ == "RegisteredGramMSE"
    x, y = _batch(cp)
    assert torch.isfinite(pair(x, y, 0).loss)


@pytest.mark.parametrize("mode, message", [
    ("distil", r"guidance.mode: unknown guidance mode 'distil' — fix: did you mean 'distill'"),
    ("nosuchpkg.objs:GramMSE", (r"guidance.mode: cannot import module 'nosuchpkg.objs' for guidance.mode "
     r"'nosuchpkg.objs:GramMSE' \(No module named 'nosuchpkg'\) — fix: put nosuchpkg in the working directory "
     r"or beside the spec file")),
    ("userobj.objectives:Missing", (r"guidance.mode: module 'userobj.objectives' has no 'Missing' \(for "
     r"guidance.mode 'userobj.objectives:Missing'\) — fix: name something userobj.objectives defines")),
    ("userobj.objectives:not_a_class", (r"guidance.mode: guidance.mode 'userobj.objectives:not_a_class' names a "
     r"function, not a subclass of pairgraph.core.loss.Objective — fix: name a class written as "
     r"class Mine\(Objective\)")),
    ("userobj.objectives:gram", r"names a function, not a subclass"),
    ("userobj.objectives:", r"guidance.mode 'userobj.objectives:' is not a reference 'package.module:name' — fix: "),
    (":GramMSE", r"guidance.mode ':GramMSE' is not a reference 'package.module:name'"),
    ("userobj.objectives:torch", r"names a module, not a subclass"),
    ("userobj.broken:Anything", (r"importing module 'userobj.broken' for guidance.mode 'userobj.broken:Anything' "
     r"failed: RuntimeError: half-written module — fix: fix the error in userobj.broken")),
])
def test_a_bad_mode_is_one_line_and_exit_2(spec_dir, tmp_path, capsys, monkeypatch, mode, message):
    monkeypatch.chdir(tmp_path)
    spec = _spec(spec_dir, mode, name="bad")
    code, _out, err = run_cli(["compile", str(spec), "-o", str(tmp_path / "build"), "--no-render"], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {spec}:") and re.search(message, lines[0]), lines[0]


def test_a_user_objectives_own_parameters_train_and_are_restored_on_resume(spec_dir, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    spec = _spec(spec_dir, "userobj.objectives:ScaledGramMSE", name="scaled")
    base = ["--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    code, _, err = run_cli(["train", str(spec), "--run-id", "r", *base, "--set", "train.steps=4",
                            "--set", "train.eval_every=2"], capsys, monkeypatch)
    assert code == 0, err
    run = tmp_path / "runs" / "scaled" / "r"
    saved = load_file(run / "checkpoints" / "last.projectors.safetensors")
    assert list(saved) == ["log_scale"] and saved["log_scale"].item() != 0.0  # trained, and kept beside the target
    state = torch.load(run / "checkpoints" / "last_state.pt", weights_only=True)
    assert torch.equal(state["projectors"]["log_scale"], saved["log_scale"])
    code, _, err = run_cli(["train", "--resume", str(run), *base[2:], "--set", "train.steps=6"], capsys, monkeypatch)
    assert code == 0, err  # the resume state's objective parameters load into the rebuilt objective
