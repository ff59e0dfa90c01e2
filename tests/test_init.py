"""``pairgraph init``: a commented starter spec that validates and compiles, for every source of models
(issue #22 item 3); its inputs checked first, each mistake one line with exit 2."""

from __future__ import annotations

import socket
import textwrap
import time

import pytest
import yaml
from tiny_specs import run_cli

import pairgraph
from pairgraph.compiler.build import build_root
from pairgraph.config import load_spec
from pairgraph.tasks import get_task


def _init(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    return run_cli(["init", *args], capsys, monkeypatch)


def _written_and_compiled(path, tmp_path, out: str, err: str):
    """The file init wrote: commented, valid as it is, and it compiles."""
    assert err == "", err
    assert f"wrote {path}" in out and f"next: pairgraph compile {path}" in out
    text = path.read_text()
    comments = [ln for ln in text.splitlines() if ln.lstrip().startswith("#")]
    assert len(comments) >= 10 and all(f"\n{s}:" in "\n" + text for s in
                                       ("name", "task", "guide", "target", "mapping", "similarity", "guidance", "train"))
    spec = load_spec(path)
    cp = pairgraph.compile(path, tmp_path / "build", render=False, notify=None)
    assert len(cp.correspondence) > 0
    return spec, yaml.safe_load(text)


def test_zoo_image_pair_default_file_here(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _init(["--guide", "resnet18", "--target", "deep_fcn", "--task", "image_classification"],
                           capsys, monkeypatch)
    assert code == 0
    path = tmp_path / "resnet18_to_deep_fcn.yaml"
    out = out.replace(str(path), "resnet18_to_deep_fcn.yaml")
    spec, data = _written_and_compiled(path.relative_to(tmp_path), tmp_path, out, err)
    assert spec.name == "resnet18_to_deep_fcn" and spec.guide.weights == "untrained"
    assert data["guide"]["args"] == {"preset": "cpu"} and data["target"]["args"] == {"preset": "cpu"}
    assert data["task"]["train_size"] == 10000 and data["train"]["steps"] <= 1000
    text = path.read_text()
    for alternative in ("debiased_cka", "rsa", "learned", "explicit", "baseline", "distill", "fitnets", "repa",
                        "pretrained", "architectural prior", "preset: default", "exclude:", "include:", "reduce:",
                        "eval_every:", "seed:", "device:", "batch_size:", "lr: 1.0e-4"):
        assert alternative in text, alternative


def test_zoo_sequence_pair(tmp_path, monkeypatch, capsys):
    path = tmp_path / "seq.yaml"
    code, out, err = _init(["--guide", "transformer_decoder", "--target", "rnn", "--task", "copy_paste",
                            "-o", str(path), "--name", "my_seq"], capsys, monkeypatch)
    assert code == 0
    spec, data = _written_and_compiled(path, tmp_path, out, err)
    assert spec.name == "my_seq" and spec.task["kind"] == "copy_paste" and spec.similarity.sequence == "flatten"
    assert data["train"]["optimizer"] == "adamw"


def test_zoo_parity_pair_and_a_folder_as_output(tmp_path, monkeypatch, capsys):
    code, out, err = _init(["--guide", "rnn_classifier", "--target", "transformer_classifier", "--task", "parity",
                            "-o", str(tmp_path)], capsys, monkeypatch)
    assert code == 0
    _written_and_compiled(tmp_path / "rnn_classifier_to_transformer_classifier.yaml", tmp_path, out, err)


def test_language_modeling_starter_validates(tmp_path, monkeypatch, capsys):
    path = tmp_path / "lm.yaml"
    code, _, err = _init(["--guide", "transformer_decoder", "--target", "lstm", "--task", "language_modeling",
                          "-o", str(path)], capsys, monkeypatch)
    assert code == 0, err
    spec = load_spec(path)  # compiling reads the text for its vocabulary: the file as written must validate
    assert spec.task["tokenizer"] == "char" and spec.train.grad_clip == 1.0


def test_torchvision_guide(tmp_path, monkeypatch, capsys):
    path = tmp_path / "tv.yaml"
    code, out, err = _init(["--guide", "torchvision:resnet18", "--target", "deep_fcn", "--task",
                            "image_classification", "-o", str(path)], capsys, monkeypatch)
    assert code == 0
    spec, _ = _written_and_compiled(path, tmp_path, out, err)
    assert spec.guide.model == "torchvision:resnet18" and spec.name == "torchvision_resnet18_to_deep_fcn"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: models are built from configs, offline."""
    def refuse(*args, **kwargs):
        raise AssertionError("pairgraph init tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_timm_guide(tmp_path, monkeypatch, capsys, no_network):
    pytest.importorskip("timm")
    path = tmp_path / "timm.yaml"
    code, out, err = _init(["--guide", "timm:resnet18", "--target", "deep_fcn", "--task", "image_classification",
                            "-o", str(path)], capsys, monkeypatch)
    assert code == 0
    spec, _ = _written_and_compiled(path, tmp_path, out, err)
    assert spec.guide.model == "timm:resnet18"


@pytest.mark.parametrize(("model", "args"), [
    ("timm:vit_base_patch16_224", {"depth": 2, "embed_dim": 64, "num_heads": 2}),
    ("timm:convnext_tiny", {"depths": [1, 1, 1, 1], "dims": [32, 64, 128, 256]})])
def test_timm_target_is_cpu_sized(model, args, tmp_path, monkeypatch, capsys, no_network):
    """A full-size timm architecture (86M, 28M parameters) is written with its class's own size arguments, shrunk:
    the spec compiles in seconds and the model has under 1.5M parameters."""
    pytest.importorskip("timm")
    path = tmp_path / "timm.yaml"
    code, out, err = _init(["--guide", "deep_fcn", "--target", model, "--task", "image_classification",
                            "-o", str(path)], capsys, monkeypatch)
    assert code == 0
    started = time.perf_counter()
    spec, _ = _written_and_compiled(path, tmp_path, out, err)
    assert time.perf_counter() - started < 60
    assert spec.target.args == args
    task = get_task(spec.task)
    assert sum(p.numel() for p in build_root(spec.resolved(), "target", task).parameters()) < 1_500_000


def test_transformers_guide_is_cpu_sized(tmp_path, monkeypatch, capsys, no_network):
    pytest.importorskip("transformers")
    path = tmp_path / "hf.yaml"
    code, out, err = _init(["--guide", "hf:gpt2", "--target", "rnn", "--task", "copy_paste", "-o", str(path)],
                           capsys, monkeypatch)
    assert code == 0
    spec, _ = _written_and_compiled(path, tmp_path, out, err)
    assert spec.guide.args == {"n_layer": 2, "n_embd": 64, "n_head": 2}  # GPT-2's own names for a small config


USER_NET = """
from torch import nn


def make(num_classes=10, in_channels=3, image_size=(32, 32)):
    h, w = image_size
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))
"""


def test_user_factory_target(tmp_path, monkeypatch, capsys):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "init_user_net.py").write_text(textwrap.dedent(USER_NET))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    path = tmp_path / "user.yaml"
    code, out, err = _init(["--guide", "resnet18", "--target", "init_user_net:make", "--task",
                            "image_classification", "-o", str(path)], capsys, monkeypatch)
    assert code == 0
    spec, data = _written_and_compiled(path, tmp_path, out, err)
    assert spec.target.model == "init_user_net:make" and data["target"]["args"] == {}


def test_user_factory_beside_the_spec_file(tmp_path, monkeypatch, capsys):
    """As when a spec is loaded, a module in the spec's folder is found whatever the working folder."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "init_beside_net.py").write_text(textwrap.dedent(USER_NET))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = _init(["--guide", "init_beside_net:make", "--target", "deep_fcn", "--task", "image_classification",
                          "-o", str(tmp_path / "specs")], capsys, monkeypatch)
    assert code == 0, err
    assert load_spec(tmp_path / "specs" / "init_beside_net_make_to_deep_fcn.yaml").guide.model == "init_beside_net:make"


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_unknown_task_is_one_line_with_did_you_mean(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(*_init(["--guide", "resnet18", "--target", "deep_fcn", "--task", "image_clasification"],
                                  capsys, monkeypatch))
    assert "--task: unknown task 'image_clasification' — fix: did you mean 'image_classification'" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("guide", "expected"), [
    ("resnt18", "--guide: unknown model 'resnt18' — fix: did you mean 'resnet18'"),
    ("torchvision:resnet1", "--guide: unknown torchvision model 'resnet1' — fix: did you mean 'torchvision:resnet18'"),
])
def test_unknown_model_is_one_line_with_did_you_mean(guide, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(*_init(["--guide", guide, "--target", "deep_fcn", "--task", "image_classification"],
                                  capsys, monkeypatch))
    assert expected in line
    assert list(tmp_path.iterdir()) == []


def test_a_zoo_model_that_does_not_read_the_tasks_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(*_init(["--guide", "transformer_decoder", "--target", "deep_fcn", "--task", "copy_paste"],
                                  capsys, monkeypatch))
    assert "--target deep_fcn reads images but task copy_paste feeds tokens — fix: pick a tokens model: " in line
    assert "rnn" in line


def test_an_existing_file_is_kept_without_force(tmp_path, monkeypatch, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\n")
    args = ["--guide", "resnet18", "--target", "deep_fcn", "--task", "image_classification", "-o", str(path)]
    line = _one_line_error(*_init(args, capsys, monkeypatch))
    assert f"{path} exists; pairgraph init does not overwrite it — fix: pass --force" in line
    assert path.read_text() == "name: mine\n"
    code, _, err = _init([*args, "--force"], capsys, monkeypatch)
    assert code == 0, err
    assert load_spec(path).guide.model == "resnet18"


@pytest.mark.parametrize(("extra", "expected"), [
    (["-o", "missing/x.yaml"], "folder 'missing' does not exist"),
    (["-o", "x.txt"], "a spec file ends in .yaml or .yml"),
    (["--name", "a b"], "--name 'a b' is not a folder-safe name"),
])
def test_a_bad_output_path_or_name_is_one_line(extra, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(*_init(["--guide", "resnet18", "--target", "deep_fcn", "--task", "image_classification",
                                   *extra], capsys, monkeypatch))
    assert expected in line
    assert list(tmp_path.iterdir()) == []


def test_help_gives_the_usage(capsys, monkeypatch):
    code, out, _ = _init(["--help"], capsys, monkeypatch)
    assert code == 0
    text = " ".join(out.split())  # rich wraps to the terminal's width
    assert "pairgraph init --guide MODEL --target MODEL --task KIND [-o FILE] [--name NAME] [--force]" in text
