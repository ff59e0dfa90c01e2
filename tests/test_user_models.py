"""User code and user models entering pairgraph: nothing of theirs is changed, failures are one line."""

from __future__ import annotations

import torch
from torch import nn

import pairgraph


def _bn_net(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(6, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.Linear(width, 3))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_guidance_loss_leaves_a_training_mode_guide_and_target_untouched():
    torch.manual_seed(0)
    guide, target = _bn_net(), _bn_net(16)
    guide.train()
    target.train()
    before_g, before_t = _snapshot(guide), _snapshot(target)
    x = torch.randn(32, 6)
    rng = torch.get_rng_state()
    guidance = pairgraph.GuidanceLoss(guide, target, example_input=x[:8])
    for name, value in guide.state_dict().items():
        assert torch.equal(value, before_g[name]), name  # num_batches_tracked too
    for name, value in target.state_dict().items():
        assert torch.equal(value, before_t[name]), name
    assert target.training and all(m.training for m in target.modules())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout in the trace drew no random numbers of the caller's
    loss = torch.nn.functional.cross_entropy(target(x), torch.randint(0, 3, (32,))) + guidance(x)
    loss.backward()
    assert torch.isfinite(loss)


def test_compiling_a_spec_twice_gives_the_same_module(tmp_path):
    from tiny_specs import copy_paste_pair

    spec = copy_paste_pair({"batch_size": 16})
    a = pairgraph.compile(spec, tmp_path / "a", render=False, notify=None)
    b = pairgraph.compile(spec, tmp_path / "b", render=False, notify=None)
    assert (tmp_path / "a" / "guided_pair.py").read_text().split("\n", 3)[3] == \
        (tmp_path / "b" / "guided_pair.py").read_text().split("\n", 3)[3]
    assert a.correspondence.pairs == b.correspondence.pairs


class _DictOut(nn.Module):
    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return {"logits": self.body(x)}


def dict_model(**kwargs) -> nn.Module:
    return _DictOut(**kwargs)


def test_a_forward_returning_a_dict_or_tuple_gives_its_logits_and_a_bad_one_is_refused_at_compile(tmp_path,
                                                                                               monkeypatch):
    """A dict output once compiled, then crashed in training with AttributeError (issue #18); now the logits
    are picked (issue #19: `output:`, default 'logits' / the first tensor), and what holds none is refused."""
    import pytest

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    spec = {"name": "dictout", "task": {"kind": "image_classification", "dataset": "cifar10", "num_classes": 10,
                                        "image_size": [32, 32]},
            "guide": {"model": "resnet18", "args": {"preset": "cpu"}},
            "target": {"model": "test_user_models:dict_model"}}
    cp = pairgraph.compile(spec, tmp_path / "a", render=False, notify=None)
    pair = cp.build()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out, _ = pair.target(x)
        torch.testing.assert_close(out, pair.target.body(x) if hasattr(pair.target, "body") else out)
    assert out.shape == (4, 10)
    bad = {**spec, "target": {"model": "test_user_models:dict_model", "output": "scores"}}
    with pytest.raises(pairgraph.PairgraphError, match="target 'test_user_models:dict_model': forward returned a dict "
                                                       "without a tensor entry 'scores' .* fix: name the logits"):
        pairgraph.compile(bad, tmp_path / "b", render=False, notify=None)
    assert not (tmp_path / "b").exists()


def test_a_non_utf8_text_file_is_one_line_naming_the_byte(tmp_path):
    import pytest

    from pairgraph.tasks import get_task

    path = tmp_path / "latin.txt"
    path.write_bytes("hello café world\n".encode("latin-1") * 50)
    task = get_task({"kind": "language_modeling", "source": str(path), "tokenizer": "char", "context": 4})
    with pytest.raises(pairgraph.PairgraphError, match=r"latin.txt is not UTF-8 text \(byte 9 is 0xe9\) — fix: convert"):
        task.datasets(0)


def test_long_error_text_is_cut_at_a_word_with_an_ellipsis():
    from pairgraph.errors import first_line, shorten

    text = "word " * 100
    cut = shorten(text.strip(), 40)
    assert len(cut) <= 40 and cut.endswith("word…")
    assert first_line(RuntimeError("x" * 500), 50) == "x" * 49 + "…"  # no space to cut at: cut, and say so


def test_a_bad_set_value_is_reported_at_the_set_not_at_a_line_of_the_file(tmp_path):
    import pytest

    from pairgraph.config import load_spec

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    with pytest.raises(pairgraph.SpecError, match=r"^--set train.lr=abc: train.lr: Input should be a valid number"):
        load_spec(root / "specs" / "rnn_from_transformer.yaml", ["train.lr=abc"])


def not_a_module(**kwargs):
    return "a string"


class TwoInputs(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.lin = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x, mask):
        return self.lin(x.flatten(1))


def two_inputs(**kwargs) -> nn.Module:
    return TwoInputs()


def test_factories_and_forwards_get_the_fix_that_fits(tmp_path, monkeypatch):
    """'fix: check target.args' was once offered for a factory returning a non-Module and for a
    forward taking two inputs."""
    import pytest

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    base = {"task": {"kind": "image_classification", "num_classes": 10, "image_size": [32, 32]},
            "guide": {"model": "resnet18", "args": {"preset": "cpu"}}}
    with pytest.raises(pairgraph.PairgraphError, match="factory returned a str, not a torch.nn.Module — fix: return"):
        pairgraph.compile({**base, "target": {"model": "test_user_models:not_a_module"}}, tmp_path / "a",
                          render=False, notify=None)
    with pytest.raises(pairgraph.PairgraphError, match=r"forward needs 2 inputs \(x, mask\).* — fix: say what feeds each with target.inputs: \{x: input, mask: mask\}"):
        pairgraph.compile({**base, "target": {"model": "test_user_models:two_inputs"}}, tmp_path / "b",
                          render=False, notify=None)
    with pytest.raises(pairgraph.PairgraphError, match="asks for a padding mask, but the task's inputs are not token"):
        pairgraph.compile({**base, "target": {"model": "test_user_models:two_inputs",
                                              "inputs": {"x": "input", "mask": "mask"}}}, tmp_path / "c",
                          render=False, notify=None)


def test_guidance_loss_refuses_activations_without_gradient():
    """Activations left from a no_grad forward of the same batch size were once used silently."""
    import pytest

    torch.manual_seed(0)
    guide, target = _bn_net(), _bn_net(16)
    x = torch.randn(16, 6)
    guidance = pairgraph.GuidanceLoss(guide, target, example_input=x[:8])
    with torch.no_grad():
        target(x)
    with pytest.raises(pairgraph.PairgraphError, match="carry no gradient"):
        guidance(x)
    target(x[:8])
    with pytest.raises(pairgraph.PairgraphError, match="a batch of 16 but the target's last forward had"):
        guidance(x)
    target(x)
    assert guidance(x).requires_grad


class SharedBlock(nn.Module):
    """One layer applied three times (weight sharing, as the paper's copy-paste guide applies one decoder layer)."""

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.inp = nn.Linear(3 * 32 * 32, 16)
        self.shared = nn.Linear(16, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        for _ in range(3):
            h = torch.tanh(self.shared(h))
        return self.head(h)


def shared_block(**kwargs) -> nn.Module:
    return SharedBlock(**kwargs)


class _NoFx(SharedBlock):
    def forward(self, x):
        if float(x.abs().sum()) < 0:  # data-dependent control flow: fx cannot trace it, hooks do
            return x
        return super().forward(x)


def no_fx_shared_block(**kwargs) -> nn.Module:
    return _NoFx(**kwargs)


def test_a_shared_module_yields_one_tap_per_call(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    base = {"task": {"kind": "image_classification", "num_classes": 10, "image_size": [32, 32]},
            "target": {"model": "deep_fcn", "args": {"num_blocks": 3, "width": 16}}}
    for ref, method in (("test_user_models:shared_block", "fx"), ("test_user_models:no_fx_shared_block", "hooks")):
        cp = pairgraph.compile({**base, "guide": {"model": ref}}, tmp_path / method, render=False, notify=None)
        assert cp.guide.method == method
        assert cp.guide.names == ["inp", "shared@0", "shared@1", "shared@2"], cp.guide.names
        pair = cp.build()
        x = torch.randn(4, 3, 32, 32)
        model = pair.guide.root if method == "hooks" else pair.guide
        with torch.no_grad():
            _, taps = pair.guide(x)
            h = model.inp(x.flatten(1))
            expected = []
            for _ in range(3):
                z = model.shared(h)
                expected.append(z)
                h = torch.tanh(z)
        for k in range(3):
            torch.testing.assert_close(taps[f"shared@{k}"], expected[k])


class SeqFirst(nn.Module):
    """Sequence-first layers, as nn.Transformer code without batch_first writes them: (T, b, d)."""

    def __init__(self, num_classes: int = 10, **kwargs):
        super().__init__()
        self.pos = nn.Linear(1, 384)  # applied to a constant: its output has no batch axis
        self.register_buffer("t", torch.arange(8.0).unsqueeze(1))
        self.ln = nn.LayerNorm(384)
        self.lin = nn.Linear(384, 32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        h = x.flatten(1).reshape(x.shape[0], 8, 384).transpose(0, 1)  # (T=8, b, 384)
        h = self.lin(self.ln(h + self.pos(self.t).unsqueeze(1)))
        return self.head(h.mean(0))


def seq_first(**kwargs) -> nn.Module:
    return SeqFirst(**kwargs)


class _NoFxSeqFirst(SeqFirst):
    def forward(self, x):
        if float(x.abs().sum()) < 0:
            return x
        return super().forward(x)


def no_fx_seq_first(**kwargs) -> nn.Module:
    return _NoFxSeqFirst(**kwargs)


def test_a_sequence_first_tap_is_batch_first_and_an_output_without_batch_is_no_tap(tmp_path, monkeypatch):
    """A LayerNorm/Linear on (T, b, d) was refused ("taps disagree on rows"); its batch axis is now followed
    from the input, and a module whose output does not depend on the batch is not a tap point."""
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    base = {"task": {"kind": "image_classification", "num_classes": 10, "image_size": [32, 32]},
            "target": {"model": "deep_fcn", "args": {"num_blocks": 3, "width": 16}}}
    for ref, method in (("test_user_models:seq_first", "fx"), ("test_user_models:no_fx_seq_first", "hooks")):
        cp = pairgraph.compile({**base, "guide": {"model": ref}}, tmp_path / method, render=False, notify=None)
        assert cp.guide.method == method
        assert cp.guide.names == ["ln", "lin"], cp.guide.names  # not pos (no batch axis), not head (the output)
        assert [(t.batch_axis, t.shape[1:]) for t in cp.guide.taps] == [(1, (8, 384)), (1, (8, 32))]
        pair = cp.build()
        x = torch.randn(5, 3, 32, 32)
        model = pair.guide.root if method == "hooks" else pair.guide
        with torch.no_grad():
            _, taps = pair.guide(x)
            h = x.flatten(1).reshape(5, 8, 384).transpose(0, 1) + model.pos(model.t).unsqueeze(1)
            torch.testing.assert_close(taps["ln"], model.ln(h).transpose(0, 1))
        assert taps["lin"].shape == (5, 8, 32)
        result = pair(x, torch.zeros(5, dtype=torch.long))  # the guidance compares rows of the same examples
        assert torch.isfinite(result.guidance_loss)


class KeywordInputs(nn.Module):
    """A transformers-style forward: keyword inputs, the attention mask required, a dict out."""

    def __init__(self, vocab_size: int = 3, num_classes: int = 2, **kwargs):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, 16)
        self.lin = nn.Linear(16, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, input_ids, attention_mask):
        h = torch.relu(self.lin(self.emb(input_ids))) * attention_mask.unsqueeze(-1)
        return {"logits": self.head(h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1))}


def keyword_inputs(**kwargs) -> nn.Module:
    return KeywordInputs(**kwargs)


def test_a_forward_with_keyword_inputs_is_fed_the_input_and_the_padding_mask(tmp_path, monkeypatch):
    import pytest

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    base = {"task": {"kind": "parity", "length": [4, 12], "size": 64},
            "guide": {"model": "rnn", "args": {"preset": "cpu", "hidden": 16}}}
    target = {"model": "test_user_models:keyword_inputs", "inputs": {"input_ids": "input", "attention_mask": "mask"}}
    cp = pairgraph.compile({**base, "target": target}, tmp_path / "ok", render=False, notify=None)
    assert cp.target.names == ["lin"]  # the Embedding is no default tap type, the head is the output
    pair = cp.build()
    from pairgraph.tasks import get_task

    task = get_task(cp.spec.task)
    x, y = next(iter(torch.utils.data.DataLoader(task.datasets(0)["train"], batch_size=8)))
    assert (x == task.pad_id).any()  # the batch has padding
    from pairgraph.compiler.build import build_root

    eager = build_root(cp.spec.resolved(), "target", task)
    with torch.no_grad():
        out, _ = pair.target(x)
        # the generated network feeds the padding mask the similarity uses, as 1/0
        expected = KeywordInputs.forward(eager, input_ids=x, attention_mask=(x != task.pad_id).long())["logits"]
        torch.testing.assert_close(out, expected)
        assert not torch.allclose(out, KeywordInputs.forward(eager, x, torch.ones_like(x))["logits"])
    assert torch.isfinite(pair(x, y).guidance_loss)
    with pytest.raises(pairgraph.PairgraphError, match="names 'attn_mask', which KeywordInputs.forward does not take "
                                                       r".* — fix: did you mean 'attention_mask'\?"):
        pairgraph.compile({**base, "target": {**target, "inputs": {"input_ids": "input", "attn_mask": "mask"}}},
                          tmp_path / "bad", render=False, notify=None)
    with pytest.raises(pairgraph.PairgraphError, match="does not feed forward's required input\\(s\\) attention_mask"):
        pairgraph.compile({**base, "target": {**target, "inputs": {"input_ids": "input"}}}, tmp_path / "miss",
                          render=False, notify=None)


class DecoderGuide(nn.Module):
    """Like the authors' copy-paste guide: one TransformerDecoderLayer (on a memory of zeros) applied twice."""

    def __init__(self, vocab_size: int = 12, num_classes: int = 12, **kwargs):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, 16)
        self.layer = nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        h = self.emb(x)
        for _ in range(2):
            h = self.layer(h, torch.zeros_like(h))
        return self.head(h)


def decoder_guide(**kwargs) -> nn.Module:
    return DecoderGuide(**kwargs)


def test_the_paper_preset_taps_what_the_authors_code_hooks(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    paper = {"preset": "paper"}
    images = {"task": {"kind": "image_classification", "num_classes": 10, "image_size": [32, 32]},
              "guide": {"model": "resnet18", "args": {"preset": "cpu"}, "layers": paper},
              "target": {"model": "deep_fcn", "args": {"num_blocks": 3, "width": 16}, "layers": paper}}
    cp = pairgraph.compile(images, tmp_path / "img", render=False, notify=None)
    g = cp.guide
    assert len(g.names) == 21 and g.names[0] == "conv1" and g.names[-1] == "avgpool"  # 1+16+3 convs, the pool
    assert {t.type for t in g.taps} == {"Conv2d", "AdaptiveAvgPool2d"}  # no BatchNorm; fc (the last) dropped
    assert cp.target.names == ["blocks.0.linear", "blocks.1.linear", "blocks.2.linear"]  # the head dropped
    tokens = {"task": {"kind": "copy_paste", "length": [2, 4], "size": 200},
              "guide": {"model": "test_user_models:decoder_guide", "layers": paper},
              "target": {"model": "rnn", "args": {"num_layers": 2, "hidden": 16}}}
    cp = pairgraph.compile(tokens, tmp_path / "tok", render=False, notify=None)
    per_call = ["layer.self_attn", "layer.multihead_attn", "layer.linear1", "layer.linear2", "layer.norm1",
                "layer.norm2", "layer.norm3", "layer"]
    assert sorted(cp.guide.names) == sorted([f"{n}@{k}" for n in per_call for k in (0, 1)])  # nested, per call
    assert cp.guide.names.index("layer@0") > cp.guide.names.index("layer.norm3@0")  # a layer ends after its parts
    pair = cp.build()
    x = torch.randint(0, 10, (3, 9))
    with torch.no_grad():
        _, taps = pair.guide(x)
    assert set(taps) == set(cp.guide.names) and all(a.shape[0] == 3 for a in taps.values())
