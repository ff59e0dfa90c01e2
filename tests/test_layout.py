"""The package's structure and its single homes: layers, sizes, registries, the atomic write,
one-line errors, the guide-cache key and the installed package list."""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import tomllib
import torch
from tiny_specs import copy_paste_pair

import pairgraph
from pairgraph.compiler.guide_weights import guide_checkpoint_path, guide_key, resolve_guide_weights
from pairgraph.config import TrainSpec, parse_spec
from pairgraph.errors import PairgraphError, first_line, one_line
from pairgraph.paths import atomic_write
from pairgraph.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def test_layers_cycles_and_sizes_are_clean():
    """import-linter's layers contract, no import cycle (function-local imports count), modules ≤ 450
    lines, functions ≤ 80 lines — the same check `make lint` runs."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_layout.py")], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_layout_check_sees_a_function_local_upward_import(tmp_path):
    """The check is not vacuous: an upward import inside a function body is reported, with its cycle."""
    code = f"""
import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r})
from pathlib import Path
import check_layout
staged = Path({str(tmp_path)!r})
similarity = check_layout.stage(staged) / "core" / "similarity.py"
similarity.write_text(similarity.read_text() + "\\n\\ndef _sneaky():\\n    from pairgraph.training import train  # noqa\\n")
print("\\n".join(check_layout.contract_problems(staged) + check_layout.cycle_problems(staged)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout  # a fresh process: grimp must not find the imported package
    assert "pairgraph.core.similarity -> pairgraph.training" in out, out
    assert any(line.startswith("import cycle:") and "pairgraph.core.similarity" in line for line in out.splitlines()), out


def _check_layout():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_layout
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return check_layout


def test_the_layout_check_fails_on_a_module_that_belongs_to_no_layer(tmp_path):
    check_layout = _check_layout()
    pkg = check_layout.stage(tmp_path)
    assert check_layout.unlayered_problems(pkg) == []
    (pkg / "helpers.py").write_text("import pairgraph.training\n")
    (pkg / "extras").mkdir()
    (pkg / "extras" / "__init__.py").write_text("")
    problems = check_layout.unlayered_problems(pkg)
    assert [p.split(":")[0] for p in problems] == ["pairgraph/extras", "pairgraph/helpers.py"], problems
    assert all("belongs to no layer" in p and "pyproject.toml" in p for p in problems)


@pytest.mark.parametrize("line", ['if spec.guidance.mode == "distill":\n    pass',
                                  'if g["mode"] in ("fitnets", "repa"):\n    pass',
                                  'x = self.mode != "baseline"'])
def test_a_guidance_mode_is_told_apart_only_by_the_objective_registry(tmp_path, line):
    """No ``mode == "…"`` outside pairgraph/core/objectives.py (the package has none; a planted one is found)."""
    check_layout = _check_layout()
    pkg = check_layout.stage(tmp_path)
    assert check_layout.mode_problems(pkg) == []
    trainer = pkg / "training" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\n\ndef _sneaky(spec, g, self):\n" + textwrap.indent(line, "    ") + "\n")
    problems = check_layout.mode_problems(pkg)
    assert len(problems) == 1 and problems[0].startswith("pairgraph/training/trainer.py:"), problems
    arm = pkg / "study" / "results.py"  # an arm named "baseline" is not a mode
    assert 'arm == "baseline"' in arm.read_text()


def test_the_guided_pair_takes_at_most_eight_arguments_and_an_unknown_mode_gets_a_did_you_mean():
    from pairgraph.core.objectives import objective_class

    assert len(inspect.signature(pairgraph.GuidedPair.__init__).parameters) - 1 <= 8
    with pytest.raises(PairgraphError, match="unknown guidance mode 'distil' — fix: did you mean 'distill'"):
        objective_class("distil")


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"pairgraph." + ".".join(p.parent.relative_to(ROOT / "pairgraph").parts)
             for p in (ROOT / "pairgraph").rglob("__init__.py")}
    found = {f.rstrip(".") for f in found} | {"pairgraph.zoo", "pairgraph.cli", "pairgraph.specs"}
    assert listed == found


# ---------------------------------------------------------------- one home each


@pytest.mark.parametrize("exc", [RuntimeError(), ValueError(""), KeyError(), OSError("  \n  "), TypeError("\n\nbad\nmore")])
def test_one_line_never_fails_and_is_one_line(exc):
    text = one_line(exc)
    assert "\n" not in text and text.startswith(type(exc).__name__)
    assert first_line(TypeError("\n\nbad\nmore")) == "bad"


def test_a_factory_raising_an_empty_exception_is_a_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "emptyerr.py").write_text("def build(**kw):\n    raise RuntimeError()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = copy_paste_pair({"batch_size": 16}, name="emptyerr")
    spec["target"] = {"model": "emptyerr:build"}
    with pytest.raises(PairgraphError, match=r"target: building 'emptyerr:build' .* failed: RuntimeError") as e:
        pairgraph.compile(spec, tmp_path / "b", render=False, notify=None)
    assert "\n" not in str(e.value)


def test_registry_decorator_warns_on_overwrite_and_suggests():
    reg: Registry[object] = Registry("thing")

    @reg.register("alpha")
    def alpha():
        return 1

    assert reg.get("alpha") is alpha and "alpha" in reg
    with pytest.warns(UserWarning, match="thing 'alpha' re-registered"):
        reg.register("alpha")(lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.register("alpha", overwrite=True)(alpha)  # said on purpose: no warning
    with pytest.raises(PairgraphError, match="unknown thing 'alhpa' — fix: did you mean 'alpha'"):
        reg.get("alhpa")
    assert not hasattr(reg, "add")  # one way to register


def test_registry_loads_its_builtins_on_first_read(tmp_path, monkeypatch):
    (tmp_path / "lazy_builtins_mod.py").write_text(
        "from test_layout import LAZY\n@LAZY.register('late')\ndef late():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "late" in LAZY and LAZY.get("late")() == 3


LAZY: Registry[object] = Registry("lazy thing", builtins=["lazy_builtins_mod"])


def test_atomic_write_fsyncs_renames_and_cleans_up(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "out.json"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two" and len(synced) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]

    def fail(src, dst):
        raise OSError(28, "No space left on device", str(src))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(PairgraphError, match="cannot write .*out.json: No space left on device"):
        atomic_write(target, "three")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def _spec(**train):
    return parse_spec(copy_paste_pair({"batch_size": 16, **train}))


def _other_value(name: str, value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 or 0.5
    if value is None:
        return {"grad_clip": 1.0, "epochs": 3, "steps": 7, "eval_batches": 2, "checkpoint_every": 5}[name]
    return {"optimizer": "sgd", "device": "cpu", "precision": "bf16", "schedule": {"kind": "cosine"},
            "log": ["wandb"]}[name]


@pytest.mark.parametrize("name", sorted(TrainSpec.model_fields))
def test_guide_cache_key_changes_with_every_field_of_the_guides_training(name):
    """The trained-guide cache is keyed by the whole train section (eval_batches was once missing)."""
    base = _spec()
    value = getattr(base.train, name)
    changed = _spec(**{name: _other_value(name, value)})
    assert guide_key(changed) != guide_key(base)
    via_guide = parse_spec({**copy_paste_pair({"batch_size": 16}),
                            "guide": {**copy_paste_pair({})["guide"], "train": {name: _other_value(name, value)}}})
    assert guide_key(via_guide) == guide_key(changed)


def test_guide_cache_key_ignores_the_target_and_the_guidance():
    base = _spec()
    other = parse_spec({**copy_paste_pair({"batch_size": 16}, hidden=64), "guidance": {"weight": 3.0}})
    assert guide_key(other) == guide_key(base)


def test_one_resolver_for_the_guide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path))
    untrained = _spec()
    assert resolve_guide_weights(untrained) is None
    trained = parse_spec({**copy_paste_pair({"batch_size": 16}),
                          "guide": {**copy_paste_pair({})["guide"], "weights": "train"}})
    with pytest.raises(PairgraphError, match="the heatmap needs the trained guide .* not cached yet"):
        resolve_guide_weights(trained, purpose="the heatmap")
    baseline = trained.model_copy(update={"guidance": trained.guidance.model_copy(update={"mode": "baseline"})})
    assert resolve_guide_weights(baseline) is None  # a baseline never calls its guide
    cached = guide_checkpoint_path(trained)  # the resolver only finds the cached guide; it never trains one
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert resolve_guide_weights(trained) == str(cached)


def test_compile_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """Rendering the mapping must not switch a notebook's backend (it once called matplotlib.use('Agg'))."""
    code = f"""
import matplotlib, pairgraph
pairgraph.compile({str(ROOT / 'specs' / 'rnn_from_transformer.yaml')!r}, {str(tmp_path)!r}, notify=None)
print(matplotlib.get_backend())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "MPLBACKEND": "svg"}).stdout
    assert out.strip().lower() == "svg" and (tmp_path / "mapping.png").exists()


def test_one_set_of_fields_that_do_not_change_a_result():
    """The study's stale-run check and the plots' grouping once used two different lists."""
    from pairgraph import analysis
    from pairgraph.config.diff import RUNTIME_FIELDS, spec_diff

    assert analysis.NOT_CONFIG is RUNTIME_FIELDS
    a = parse_spec(copy_paste_pair({"batch_size": 16})).resolved()
    b = {**a, "guidance": {**a["guidance"], "cache_guide": True}, "train": {**a["train"], "device": "cpu"}}
    assert spec_diff(a, b) == [] and analysis.config_fields(a) == analysis.config_fields(b)
    c = {**a, "train": {**a["train"], "eval_batches": 3}}
    assert spec_diff(a, c) == ["train.eval_batches: None → 3"]


# ---------------------------------------------------------------- the path docs/architecture.md walks


def _one_step_rows() -> tuple[str, list[list[str]]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Follow one step", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if re.match(r"\|\s*\d+\s*\|", line)]
    return section, rows


def _defined(path: Path, qualname: str) -> bool:
    """``qualname`` (``f`` or ``Class.method``) is defined at the top of the module at ``path``."""
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for part in qualname.split("."):
        node = next((n for n in scope if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == part), None)
        if node is None:
            return False
        scope = node.body
    return True


def test_the_follow_one_step_section_names_what_exists_and_counts_itself():
    section, rows = _one_step_rows()
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1)) and rows
    generated = (ROOT / "pairgraph" / "compiler" / "codegen.py").read_text()
    defined = "\n".join(p.read_text() for p in [*(ROOT / "pairgraph").rglob("*.py"), *(ROOT / "cli").rglob("*.py")])
    for _, file, function, does in rows:
        file, function = file.strip("`"), function.strip("`")
        if file.startswith("build/"):  # the generated module: what codegen writes
            assert f"def {function}(" in generated, function
        else:
            assert _defined(ROOT / file, function), f"{file} defines no {function}"
        for call in re.findall(r"`([A-Za-z_][\w.]*)\(", does):  # every name called in the description
            name = call.rsplit(".", 1)[-1]
            assert (re.search(rf"(def|class) {name}\b|\b{name} = |import \w+ as {name}\b", defined) or f"{name}(" in generated
                    or hasattr(torch.Tensor, name)), f"row cites {call}(), which no longer exists"
    files = {r[1] for r in rows}
    assert f"**{len(files)} files, {len(rows)} calls**" in section and len(files) <= 6
