"""Hostile or careless input (issue 32): names that would leave their folder, outputs that would
replace an input, YAML that expands without bound, and failures that escaped as tracebacks, blank
lines or silent wrong results — each now a one-line refusal or a fix."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_study import tiny_study, write
from tiny_specs import copy_paste_pair, run_cli
from torch import nn

import pairgraph
from pairgraph.config import load_spec, parse_spec
from pairgraph.config.yaml_io import MAX_YAML_BYTES, parse_scalar
from pairgraph.errors import PairgraphError, SpecError


def tiny(**train):
    return copy_paste_pair({"batch_size": 16, "steps": 4, "eval_every": 2, "lr": 3e-3, "seed": 1, **train}, size=200)


def _one_line_error(code: int, err: str, want: int = 2) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == want and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


# -- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "../up", ".hidden"])
def test_a_spec_named_to_leave_its_folder_is_refused(name):
    with pytest.raises(SpecError, match="name"):
        parse_spec(copy_paste_pair({"steps": 1}, name=name))


@pytest.mark.parametrize("where", ["study", "cell"])
def test_study_and_cell_names_cannot_leave_the_results_folder(tmp_path, where):
    data = tiny_study()
    (data if where == "study" else data["cells"][0])["name"] = ".."
    from pairgraph.study import load_study

    with pytest.raises(PairgraphError, match="name"):
        load_study(write(tmp_path / "s.yaml", data))


def test_init_refuses_a_name_that_leaves_the_runs_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["init", "--guide", "transformer_decoder", "--target", "rnn", "--task", "copy_paste",
                            "--name", ".."], capsys, monkeypatch)
    assert "not a folder-safe name" in _one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []


def test_compile_into_the_specs_own_folder_does_not_replace_the_spec(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text("# my notes\n" + yaml.safe_dump(tiny()))
    before = spec.read_bytes()
    code, _, err = run_cli(["compile", "spec.yaml", "-o", ".", "--no-render"], capsys, monkeypatch)
    assert "would replace the input file spec.yaml" in _one_line_error(code, err)
    assert spec.read_bytes() == before and not (tmp_path / "guided_pair.py").exists()


def test_a_compiled_folder_still_compiles_from_its_own_spec(tmp_path):
    first = pairgraph.compile(tiny(), tmp_path / "build" / "tiny", render=False, notify=None)
    again = pairgraph.compile(first.out_dir / "spec.yaml", first.out_dir, render=False, notify=None)
    assert again.spec == first.spec  # rewriting the same resolved spec replaces nothing


# -- bounded YAML -----------------------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_a_yaml_alias_bomb_is_refused_within_a_second(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB + "name: tiny\n")
    assert len(BOMB) < 1000
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="expands to over 100,000 nodes"):
        load_spec(path)
    assert time.perf_counter() - t0 < 1.0


def test_a_recursive_anchor_and_deep_nesting_are_one_line_errors(tmp_path):
    (tmp_path / "rec.yaml").write_text("a: &a [1, *a]\n")
    with pytest.raises(SpecError, match="used inside itself"):
        load_spec(tmp_path / "rec.yaml")
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SpecError, match="nested too deeply"):
        load_spec(tmp_path / "deep.yaml")


def test_an_alias_bomb_in_a_set_value_is_refused():
    bomb = "{" + BOMB.replace("\n", ", ").rstrip(", ") + "}"
    with pytest.raises(SpecError, match="expands to over"):
        parse_scalar(bomb)


def test_a_spec_over_the_size_cap_is_refused_in_one_line(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(tiny()) + "# " + "x" * MAX_YAML_BYTES + "\n")
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="over the 64 KiB"):
        load_spec(path)
    assert time.perf_counter() - t0 < 1.0


def test_an_endless_file_is_read_only_up_to_the_cap():
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="/dev/zero is over the 64 KiB"):
        load_spec("/dev/zero")  # no size to check first: the read itself is bounded
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("seed", [-1, 10**20])
def test_a_seed_out_of_range_is_refused_at_validation(seed):
    with pytest.raises(SpecError, match="train.seed"):
        parse_spec(tiny(seed=seed))


# -- one line for every failure -----------------------------------------------------------------------


def test_an_eof_error_is_one_line_not_a_blank_abort(tmp_path, capsys, monkeypatch):
    def truncated(*a, **k):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr("pairgraph.analysis.plot_runs", truncated)
    code, _, err = run_cli(["plot", str(tmp_path)], capsys, monkeypatch)
    assert "input ended early (Compressed file ended" in _one_line_error(code, err)


def test_an_unexpected_exception_is_one_line_exit_1_with_the_traceback_on_request(tmp_path, capsys, monkeypatch):
    def bug(*a, **k):
        raise AttributeError("'NoneType' object has no attribute 'steps'")

    monkeypatch.setattr("pairgraph.analysis.plot_runs", bug)
    code, _, err = run_cli(["plot", str(tmp_path)], capsys, monkeypatch)
    line = _one_line_error(code, err, want=1)
    assert line.startswith("internal error: AttributeError:") and "PAIRGRAPH_DEBUG=1" in line
    monkeypatch.setenv("PAIRGRAPH_DEBUG", "1")
    code, _, err = run_cli(["plot", str(tmp_path)], capsys, monkeypatch)
    assert code == 1 and "Traceback" in err


def test_a_truncated_gzip_metrics_file_names_the_file(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl.gz").write_bytes(gzip.compress(b'{"step": 1, "task_loss": 1.0}\n' * 200)[:60])
    code, _, err = run_cli(["plot", str(run), "-o", str(tmp_path / "p.png")], capsys, monkeypatch)
    assert f"cannot read {run / 'metrics.jsonl.gz'}" in _one_line_error(code, err)


def test_plot_reads_a_hand_edited_metrics_file(tmp_path):
    from pairgraph.analysis import plot_runs

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 1.0 / s, "task_loss": 1.0 / s, "guidance_loss": 0.0, "guided": False, "terms": {}}
            for s in range(1, 6)]
    lines = [json.dumps(r) for r in rows] + [
        json.dumps({"step": "three", "task_loss": 1.0}), json.dumps({"step": 4, "split": "val", "accuracy": 0.5}),
        json.dumps({"step": 5, "split": "val", "loss": 0.4}), json.dumps({"step": 2, "task_loss": "high"})]
    (run / "metrics.jsonl").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe not utf-8\n")
    assert plot_runs([run], tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("args, words", [
    (["schema", "-o", "{tmp}/missing/s.json"], "cannot write"),
    (["schema", "-o", "{tmp}"], "cannot write"),
    (["plot", "{tmp}/run", "-o", "{tmp}/x.txt"], "file type"),
    (["train", "spec.yaml", "--nproc", "0"], "--nproc 0"),
    (["train", "spec.yaml", "--nproc", "-2"], "--nproc -2"),
])
def test_bad_output_paths_and_process_counts_are_one_line(tmp_path, capsys, monkeypatch, args, words):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "task_loss": 1.0}) + "\n")
    code, _, err = run_cli([a.format(tmp=tmp_path) for a in args], capsys, monkeypatch)
    assert words in _one_line_error(code, err)


# -- guide and target share nothing ------------------------------------------------------------------


def _net(stem: nn.Module | None = None) -> nn.Module:
    return nn.Sequential(stem or nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_guidance_loss_refuses_one_network_as_both():
    from pairgraph import GuidanceLoss

    net = _net()
    with pytest.raises(PairgraphError, match="the guide and the target are the same network"):
        GuidanceLoss(net, net, example_input=torch.randn(4, 4))
    assert all(p.requires_grad for p in net.parameters())  # nothing was frozen


def test_guidance_loss_refuses_a_shared_stem_naming_it():
    from pairgraph import GuidanceLoss

    stem = nn.Linear(4, 8)
    guide, target = _net(stem), _net(stem)
    with pytest.raises(PairgraphError, match=r"target's 0.weight is also the guide's 0.weight"):
        GuidanceLoss(guide, target, example_input=torch.randn(4, 4))
    assert stem.weight.requires_grad


def test_a_spec_whose_factories_share_a_module_is_refused(tmp_path):
    (tmp_path / "shared_nets.py").write_text(
        "from torch import nn\n"
        "BUILT = []\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, vocab_size, stem=None, **task):\n"
        "        super().__init__()\n"
        "        self.stem = stem or nn.Embedding(vocab_size, 16)\n"
        "        self.mid, self.head = nn.Linear(16, 16), nn.Linear(16, vocab_size)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.mid(self.stem(x)))\n"
        "def guide(**task):\n    BUILT.append(Net(**task))\n    return BUILT[-1]\n"
        "def target(**task):\n    return Net(stem=BUILT[-1].stem, **task)  # the last guide's stem\n")
    spec = tiny()
    spec["guide"] = {"model": "shared_nets:guide"}
    spec["target"] = {"model": "shared_nets:target"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    cp = pairgraph.compile(tmp_path / "spec.yaml", tmp_path / "build", render=False, notify=None)
    with pytest.raises(PairgraphError, match="guide.model and target.model: the target's stem.weight is also"):
        cp.build("cpu")


# -- data and the demo --------------------------------------------------------------------------------


def test_a_one_class_image_folder_is_refused(tmp_path):
    from PIL import Image

    from pairgraph.tasks import get_task

    for split in ("train", "test"):
        (tmp_path / "imgs" / split / "only").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / "imgs" / split / "only" / f"{i}.png")
    task = get_task({"kind": "image_classification", "dataset": f"folder:{tmp_path / 'imgs'}", "val_size": 1})
    with pytest.raises(PairgraphError, match="has 1 class"):
        task.model_kwargs()


def test_a_truncated_cifar_archive_names_the_archive(tmp_path):
    from test_tasks import _fake_cifar

    from pairgraph.tasks.image_sources import decode_cifar_archive

    path = _fake_cifar(tmp_path / "data")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PairgraphError, match=f"cannot read the archive {path}"):
        decode_cifar_archive(path)


def test_the_demo_refuses_a_baseline_spec_and_labels_the_guide_by_its_weights(tmp_path, monkeypatch):
    from pairgraph.demo import _labels, compile_demo

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "base.yaml"
    spec.write_text(yaml.safe_dump(tiny() | {"guidance": {"mode": "baseline"}}))
    with pytest.raises(PairgraphError, match="guidance.mode baseline: the demo would train the target alone twice"):
        compile_demo(spec, steps=2, notify=None)
    assert not (tmp_path / "build").exists()
    trained = pairgraph.compile(tiny() | {"guide": {**tiny()["guide"], "weights": "train"}}, tmp_path / "b",
                                render=False, notify=None)
    assert _labels(trained)[1] == "rnn guided by a trained transformer_decoder"


# -- timm weights named by pretrained_cfg_overlay ------------------------------------------------------


def _timm_spec(tmp_path: Path, file: Path) -> dict:
    from test_third_party import _spec

    return _spec({"model": "timm:resnet18", "weights": "pretrained", "args": {"pretrained_cfg_overlay":
                                                                                {"file": str(file)}}})


def test_a_missing_timm_overlay_file_is_named(tmp_path):
    pytest.importorskip("timm")
    cp = pairgraph.compile(_timm_spec(tmp_path, tmp_path / "nope.safetensors"), tmp_path / "b", render=False,
                           notify=None)
    with pytest.raises(PairgraphError, match=f"timm weights file '{tmp_path / 'nope.safetensors'}'.* not found"):
        cp.build()


def test_a_timm_overlay_pickle_with_code_is_refused_in_one_line(tmp_path):
    pytest.importorskip("timm")
    from test_reliability import _evil_pickle

    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    _evil_pickle(path, marker, lambda e: {"conv1.weight": e})
    cp = pairgraph.compile(_timm_spec(tmp_path, path), tmp_path / "b", render=False, notify=None)
    with pytest.raises(PairgraphError, match="is refused") as e:
        cp.build()
    assert "\n" not in str(e.value) and not marker.exists()


@pytest.mark.parametrize("call, words", [
    (lambda: pairgraph.compile(123, render=False, notify=None), "spec must be a PairSpec or str or PathLike or dict, not int"),
    (lambda: pairgraph.compile(tiny(), 5, render=False, notify=None), "out_dir must be a str or PathLike or None, not int"),
    (lambda: pairgraph.compile(tiny(), None, "train.lr=1", render=False, notify=None), "overrides (--set values) must be"),
    (lambda: pairgraph.GuidanceLoss("g", nn.Linear(4, 4), example_input=torch.zeros(2, 4)), "the guide must be a Module"),
    (lambda: pairgraph.GuidanceLoss(nn.Linear(4, 4), nn.Linear(4, 4), example_input=[1, 2]), "example_input must be a Tensor"),
])
def test_wrong_argument_types_in_the_python_api_are_one_line(call, words):
    with pytest.raises(PairgraphError) as e:
        call()
    assert words in str(e.value)


def test_bench_output_onto_a_folder_is_one_line(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny()))
    code, _, err = run_cli(["bench", str(spec), "--batch-size", "8", "--steps", "1", "--warmup", "0", "--no-memory",
                            "-o", str(tmp_path)], capsys, monkeypatch)
    assert f"cannot write {tmp_path}" in _one_line_error(code, err)


def test_bench_and_report_outputs_never_replace_their_input(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny()))
    study = write(tmp_path / "s.yaml", tiny_study())
    before = spec.read_bytes(), study.read_bytes()
    for args in (["bench", str(spec), "-o", str(spec)], ["report", str(study), "-o", str(study)]):
        code, _, err = run_cli(args, capsys, monkeypatch)
        assert "would replace the input file" in _one_line_error(code, err)
    assert (spec.read_bytes(), study.read_bytes()) == before


def test_no_progress_hides_only_the_bar(tmp_path, capsys, monkeypatch):
    """`--no-progress` drops the progress bar, not the per-evaluation lines or the run's notices."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny(steps=4, eval_every=2, batch_size=8)))
    code, out, err = run_cli(["train", str(spec), "--runs-dir", "runs", "--no-progress"], capsys, monkeypatch)
    assert code == 0, err
    assert "step 2/4 train" in out and "step 4/4 train" in out
