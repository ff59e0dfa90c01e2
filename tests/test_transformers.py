"""Hugging Face transformers models built from configs (``hf:<model_type>``), offline (issue #19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pairgraph
from pairgraph.compiler.build import build_root
from pairgraph.tasks import get_task

pytest.importorskip("transformers")

GPT2 = {"model": "hf:gpt2", "args": {"n_layer": 2, "n_embd": 32, "n_head": 2}}
BERT = {"model": "hf:bert", "args": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                                     "intermediate_size": 64}}
VIT = {"model": "hf:vit", "args": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                                   "intermediate_size": 64, "patch_size": 8}}
RNN = {"model": "rnn", "args": {"num_layers": 2, "hidden": 32}}
COPY = {"kind": "copy_paste", "length": [2, 4], "size": 400}


def _compile(tmp_path, guide, target, task, **train):
    spec = {"name": "hf", "task": task, "guide": guide, "target": target,
            "train": {"batch_size": 16, "steps": 30, "eval_every": 30, "lr": 3e-3, **train}}
    return pairgraph.compile(spec, tmp_path / "b", render=False, notify=None)


def _same_output(cp, side: str) -> None:
    task = get_task(cp.spec.task)
    eager = build_root(cp.spec.resolved(), side, task).eval()
    net = getattr(cp.module, side.capitalize())(build_root(cp.spec.resolved(), side, task)).eval()
    x = task.example_input(4, device="cpu")
    if not x.is_floating_point():
        x = torch.randint(1, task.model_kwargs()["vocab_size"], x.shape)
    with torch.no_grad():
        out, taps = net(x)
        torch.testing.assert_close(out, eager(x))
    assert set(taps) == set(getattr(cp, side).names)


def test_gpt2_guide_taps_its_blocks_never_the_head_and_matches_eager(tmp_path):
    cp = _compile(tmp_path, GPT2, RNN, COPY)
    assert cp.guide.names == ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]
    _same_output(cp, "guide")


def test_bert_target_on_parity_gets_a_classification_head_and_trains(tmp_path):
    cp = _compile(tmp_path, RNN, BERT, {"kind": "parity", "length": [4, 8], "size": 400}, steps=4, eval_every=4)
    assert [n for n in cp.target.names if "layer." in n] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert not any("classifier" in n for n in cp.target.names)
    _same_output(cp, "target")
    summary = cp.train(runs_dir=tmp_path / "runs", run_id="b", progress=False)
    assert summary["steps"] == 4 and 0.0 <= summary["test"]["accuracy"] <= 1.0


def test_vit_guide_for_images(tmp_path):
    cp = _compile(tmp_path, VIT, {"model": "deep_fcn", "args": {"num_blocks": 3, "width": 32}},
                  {"kind": "image_classification", "dataset": "cifar10", "num_classes": 10, "image_size": [32, 32]})
    assert cp.guide.names[1:] == ["vit.layers.0", "vit.layers.1", "vit.layernorm"]
    _same_output(cp, "guide")


def test_a_gpt2_guided_rnn_lowers_its_guidance_loss(tmp_path):
    summary = _compile(tmp_path, GPT2, RNN, COPY).train(runs_dir=tmp_path / "runs", run_id="g", progress=False)
    steps = [json.loads(ln) for ln in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    guidance = [r["guidance_loss"] for r in steps if "guidance_loss" in r]
    assert sum(guidance[-5:]) / 5 < sum(guidance[:5]) / 5


def test_an_unknown_model_type_is_one_line(tmp_path):
    with pytest.raises(pairgraph.PairgraphError, match="unknown transformers model type 'gtp2'"):
        _compile(tmp_path, {"model": "hf:gtp2"}, RNN, COPY)


def test_weights_pretrained_uses_from_pretrained_on_a_local_folder(tmp_path):
    """transformers' real loading code (from_pretrained), offline: a folder written by save_pretrained."""
    cp = _compile(tmp_path / "first", GPT2, RNN, COPY)
    source = build_root(cp.spec.resolved(), "guide", get_task(cp.spec.task))
    torch.nn.init.constant_(source.transformer.wte.weight, 0.5)
    folder = tmp_path / "gpt2-local"
    source.save_pretrained(folder)
    guide = {**GPT2, "weights": "pretrained", "args": {**GPT2["args"], "hf_name": str(folder)}}
    pair = _compile(tmp_path / "second", guide, RNN, COPY).build()
    assert torch.equal(pair.guide.root.transformer.wte.weight, source.transformer.wte.weight)


@pytest.mark.parametrize(("model_type", "args", "task", "blocks"), [
    ("llama", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 2,
               "intermediate_size": 64}, COPY, ["model.layers.0", "model.layers.1"]),
    ("roberta", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
     {"kind": "parity", "length": [4, 8], "size": 400}, ["roberta.encoder.layer.0", "roberta.encoder.layer.1"]),
    ("opt", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "ffn_dim": 64,
             "word_embed_proj_dim": 32}, COPY, ["model.decoder.layers.0", "model.decoder.layers.1"]),
    ("deit", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
              "patch_size": 8}, {"kind": "image_classification", "dataset": "cifar10", "num_classes": 10,
                                 "image_size": [32, 32]}, ["deit.layers.0", "deit.layers.1"]),
])
def test_unseen_transformers_models_are_tapped_at_their_blocks(model_type, args, task, blocks, tmp_path):
    """Blocks come from the model's own _no_split_modules (or its repeated ModuleList layers), not a list of ours."""
    target = {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 16}} if "image_size" in task else RNN
    cp = _compile(tmp_path, {"model": f"hf:{model_type}", "args": args}, target, task)
    assert [n for n in cp.guide.names if n in blocks] == blocks
    assert not any(n.split(".")[0] in ("lm_head", "classifier", "score") for n in cp.guide.names)
    _same_output(cp, "guide")


def test_tied_embedding_lm_target_checkpoints_once_and_resumes_exactly(tmp_path):
    """A GPT-2 target (dropout on) ties its output head to its embedding: saved once, restored tied, and a
    stopped run resumed equals the uninterrupted one (issue #33)."""
    from safetensors.torch import load_file

    from pairgraph.training import resume_run
    from pairgraph.training.checkpoints import Checkpoints

    def spec():
        return {"name": "tied", "task": COPY, "guide": RNN, "target": GPT2,
                "train": {"batch_size": 8, "steps": 8, "eval_every": 4, "lr": 3e-3}}

    full = pairgraph.compile(spec(), tmp_path / "b1", render=False, notify=None).train(
        runs_dir=tmp_path, run_id="full", progress=False)
    cp = pairgraph.compile(spec(), tmp_path / "b2", render=False, notify=None)
    assert cp.train(runs_dir=tmp_path, run_id="cut", progress=False, stop_after=4)["stopped_at"] == 4
    saved = load_file(str(tmp_path / "tied" / "cut" / "checkpoints" / "last.safetensors"))
    assert [k for k in saved if k.endswith(("wte.weight", "lm_head.weight"))] == ["transformer.wte.weight"]  # once
    resumed = resume_run(tmp_path / "tied" / "cut", progress=False)
    assert resumed["test"] == full["test"] and resumed["best_val_loss"] == full["best_val_loss"]
    target = cp.build().target
    Checkpoints(tmp_path / "tied" / "cut").load_best(target)
    params = {k.rsplit(".", 2)[-2]: p for k, p in target.named_parameters(remove_duplicate=False)
              if k.endswith(("wte.weight", "lm_head.weight"))}
    assert params["wte"] is params["lm_head"]  # restored tied
    best = load_file(str(tmp_path / "tied" / "cut" / "checkpoints" / "best.safetensors"))
    torch.testing.assert_close(params["wte"], best["transformer.wte.weight"], rtol=0, atol=0)
