"""The spec language: defaults, overrides, schema, and one-line errors for bad specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny_specs import run_cli

import pairgraph
from pairgraph.config import PairSpec, json_schema, load_spec, parse_spec
from pairgraph.errors import SpecError

BAD = Path(__file__).parent / "bad_specs"
ROOT = Path(__file__).resolve().parents[1]


def test_short_spec_gets_defaults():
    spec = parse_spec({"name": "tiny"})
    assert spec.train.batch_size == 256 and spec.mapping.kind == "uniform" and spec.similarity.measure == "cka"
    assert spec.guidance.mode == "guidance" and spec.guide.weights == "untrained"


def test_overrides_parse_yaml_values():
    spec = parse_spec({"name": "x"}, overrides=["train.lr=3e-4", "guidance.mode=baseline", "task.length=[2, 4]"])
    assert spec.train.lr == 3e-4 and spec.guidance.mode == "baseline" and spec.task["length"] == [2, 4]
    with pytest.raises(SpecError, match="has no '='"):
        parse_spec({"name": "x"}, overrides=["train.lr"])


def test_schema_covers_tasks_and_fields():
    schema = json_schema()
    kinds = {s["properties"]["kind"].get("const") or s["properties"]["kind"].get("default")
             for s in schema["properties"]["task"]["oneOf"]}
    assert {"copy_paste", "parity", "language_modeling", "image_classification"} <= kinds
    assert "guidance" in schema["properties"] and "train" in schema["properties"]


def test_every_shipped_spec_validates():
    for p in (ROOT / "specs").rglob("*.yaml"):
        assert isinstance(load_spec(p), PairSpec)


def test_resolved_spec_round_trips():
    spec = load_spec(ROOT / "specs" / "rnn_from_transformer.yaml")
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec.resolved())))
    assert again.resolved() == spec.resolved()


def test_yaml_tags_are_not_executed(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="YAML syntax error"):
        load_spec(p)


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_spec_gives_one_line_error(path, tmp_path, capsys, monkeypatch):
    expect = path.read_text().splitlines()[0].removeprefix("# expect: ")
    code, _out, err = run_cli(["compile", str(path), "-o", str(tmp_path), "--no-render"], capsys, monkeypatch)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    text = " ".join(err.split())
    assert lines[-1].startswith("error:") or "error:" in text
    assert "Traceback" not in err
    assert expect in text, f"{expect!r} not in {text!r}"
    assert "fix:" in text


def test_validate_and_zoo_commands(capsys, monkeypatch):
    code, out, _ = run_cli(["validate", str(ROOT / "specs" / "rnn_from_transformer.yaml")], capsys, monkeypatch)
    assert code == 0 and "ok" in out
    code, out, _ = run_cli(["zoo"], capsys, monkeypatch)
    assert "deep_fcn" in out and "transformer_decoder" in out


def test_compile_api_accepts_dicts(tmp_path):
    spec = {"name": "from_dict", "task": {"kind": "copy_paste", "length": [2, 4], "size": 64},
            "guide": {"model": "transformer_decoder", "args": {"preset": "cpu", "num_layers": 2, "d_model": 16}},
            "target": {"model": "rnn", "args": {"num_layers": 2, "hidden": 16}}}
    cp = pairgraph.compile(spec, tmp_path, render=False, notify=None)
    assert isinstance(cp, pairgraph.CompiledPair) and cp.spec.name == "from_dict"
    assert cp.spec.target.model == "rnn" and len(cp.correspondence) == len(cp.guide) > 0
    assert (tmp_path / "guided_pair.py").exists() and callable(cp.train)


def test_schema_documents_the_training_loop_fields_with_examples():
    """issue #20: every new train field says what it does and shows a value."""
    defs = json_schema()["$defs"]
    train, schedule = defs["TrainSpec"]["properties"], defs["ScheduleSpec"]["properties"]
    for field in [train["accumulate"], train["schedule"], train["log"], *schedule.values()]:
        assert field.get("description") and (field.get("examples") or field.get("enum")), field
    assert {"enum": ["constant", "step", "cosine"], "type": "string"} in train["schedule"]["anyOf"]  # schedule: cosine
    assert "effective batch is N × batch_size" in train["accumulate"]["description"]
    spec = parse_spec({"name": "x", "train": {"schedule": "cosine", "log": "wandb"}})
    assert spec.train.schedule.kind == "cosine" and spec.train.log == ["wandb"]
    assert parse_spec({"name": "x"}).train.log == ["tensorboard"] and parse_spec({"name": "x"}).train.accumulate == 1
