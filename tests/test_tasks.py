"""Tests of pairgraph.tasks: data formats, independent label checks, losses/metrics, caching, errors."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pairgraph import paths
from pairgraph import tasks as T
from pairgraph.errors import PairgraphError, SpecError
from pairgraph.tasks import IGNORE_INDEX, TASKS, data_root, get_task, hf, image_sources

SHARED = data_root(None)  # the offline data folder, located as the library does


def need_shared(*names: str) -> Path:
    for name in names:
        if not (SHARED / name).exists():
            pytest.skip(f"{SHARED}/{name} absent: shared/data is not available here (set PAIRGRAPH_DATA)")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache and a clean in-process memo."""
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "cache"))
    T._MEMO.clear()
    yield
    T._MEMO.clear()


# ---------------------------------------------------------------------------------------------
# registry, options, locations
# ---------------------------------------------------------------------------------------------


def test_registry_and_options_schema():
    assert {"copy_paste", "parity", "language_modeling", "image_classification"} <= set(TASKS.names())
    for name, cls in TASKS.items():
        assert cls.name == name
        assert cls.input_kind in ("image", "tokens")
        assert isinstance(cls.primary_metric, str) and isinstance(cls.higher_is_better, bool)
        opts = cls.Options()  # every field has a default
        assert opts.kind == name
        schema = cls.Options.model_json_schema()
        assert schema.get("additionalProperties") is False
        for field, prop in schema["properties"].items():
            if field != "kind":
                assert prop.get("description"), f"{name}.{field} lacks a description"
        # what spec.py does: validate, dump to JSON-able, rebuild
        task = get_task(cls.Options.model_validate({"kind": name}).model_dump(mode="json"))
        assert isinstance(task, cls)


def test_get_task_inputs_and_errors():
    t = get_task({"kind": "parity", "length": [3, 7], "size": 50})
    assert t.options.length == (3, 7)
    assert isinstance(get_task(t.options), T.ParityTask)
    assert isinstance(get_task("copy_paste"), T.CopyPasteTask)
    with pytest.raises(SpecError, match="lenght"):
        get_task({"kind": "parity", "lenght": [3, 7]})
    with pytest.raises(SpecError, match="length"):
        get_task({"kind": "copy_paste", "length": [9, 3]})
    with pytest.raises(SpecError, match="kind"):
        get_task({"size": 3})
    with pytest.raises(PairgraphError, match="parity"):
        get_task({"kind": "parityy"})
    with pytest.raises(SpecError, match="dataset"):
        get_task({"kind": "image_classification", "dataset": "imagenet"})


def test_data_root_and_cache_dir(tmp_path, monkeypatch):
    assert T.data_root(str(tmp_path / "x")) == tmp_path / "x"  # explicit wins, even when missing
    monkeypatch.setenv("PAIRGRAPH_DATA", str(tmp_path / "env"))
    assert T.data_root(None) == tmp_path / "env"
    assert T.data_root(str(tmp_path)) == tmp_path
    monkeypatch.delenv("PAIRGRAPH_DATA")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    default = T.data_root(None)  # ../shared/data from cwd when present, else the repo-relative one
    repo_rel = Path(paths.__file__).resolve().parent.parent / ".." / "shared" / "data"
    if repo_rel.is_dir():
        assert default == repo_rel.resolve()
    else:
        assert default == Path.cwd() / ".." / "shared" / "data"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert T.data_root(None) == (tmp_path / "shared" / "data").resolve()
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "c"))
    assert T.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PAIRGRAPH_CACHE")
    assert T.cache_dir() == Path.home() / ".cache" / "pairgraph"


def test_example_inputs_on_meta_need_no_data(tmp_path):
    empty = str(tmp_path / "no-data-here")
    cases = [
        ({"kind": "copy_paste", "length": [3, 6]}, (4, 14), torch.long),
        ({"kind": "parity", "length": [2, 9]}, (4, 9), torch.long),
        ({"kind": "language_modeling", "context": 12, "data_dir": empty}, (4, 12), torch.long),
        ({"kind": "language_modeling", "tokenizer": "char", "context": 7, "data_dir": empty}, (4, 7), torch.long),
        ({"kind": "image_classification", "data_dir": empty}, (4, 3, 32, 32), torch.float32),
        ({"kind": "image_classification", "dataset": "mnist1d"}, (4, 1, 1, 40), torch.float32),
    ]
    for spec, shape, dtype in cases:
        x = get_task(spec).example_input(4)
        assert x.device.type == "meta" and tuple(x.shape) == shape and x.dtype == dtype, spec
    # on a real device: valid (non-pad) tokens
    x = get_task({"kind": "copy_paste"}).example_input(2, "cpu")
    assert x.device.type == "cpu" and bool((x != 0).all())


# ---------------------------------------------------------------------------------------------
# copy-paste
# ---------------------------------------------------------------------------------------------


def test_copy_paste_format_and_targets_independent():
    task = get_task({"kind": "copy_paste", "tokens": 10, "length": [3, 8], "size": 400})
    K = 10
    pad, copy, blank, eos = 0, K + 1, K + 2, K + 3
    assert task.model_kwargs() == {"vocab_size": K + 4, "num_classes": K + 4, "pad_id": 0, "max_len": 18}
    ds = task.datasets(seed=0)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [320, 40, 40]
    x, y = next(iter(DataLoader(ds["train"], batch_size=320)))
    assert x.shape == y.shape == (320, 18) and x.dtype == y.dtype == torch.int64
    lengths = set()
    for xi, yi in zip(x.tolist(), y.tolist()):
        # independent re-derivation: the sequence is everything before the copy marker
        m = xi.index(copy)
        seq = xi[:m]
        L = len(seq)
        lengths.add(L)
        assert 3 <= L <= 8 and all(1 <= s <= K for s in seq)
        assert xi[m + 1 : m + 1 + L] == [blank] * L
        assert xi[2 * L + 1] == eos and all(v == pad for v in xi[2 * L + 2 :])
        expected = [IGNORE_INDEX] * (L + 1) + seq + [IGNORE_INDEX] * (18 - 2 * L - 1)
        assert yi == expected
    assert lengths == set(range(3, 9))


def test_paper_length_setting_gives_20_to_40_total():
    task = get_task({"kind": "copy_paste", "length": [9, 19], "size": 300})
    x, _ = task.datasets(0)["train"][:]
    total = (x != 0).sum(1)
    assert task.model_kwargs()["max_len"] == 40
    assert int(total.min()) >= 20 and int(total.max()) <= 40


def test_copy_paste_determinism_and_valid_mask():
    task = get_task({"kind": "copy_paste", "size": 100})
    a, b, c = (task.datasets(s)["train"][:] for s in (1, 1, 2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    x = a[0]
    mask = task.valid_mask(x)
    assert mask.dtype == torch.bool and torch.equal(mask, x != 0)


def test_copy_paste_loss_and_metrics():
    task = get_task({"kind": "copy_paste", "length": [2, 4], "size": 50})
    _, y = task.datasets(0)["train"][:8]
    V = task.vocab_size
    keep = y != IGNORE_INDEX
    perfect = torch.zeros(*y.shape, V)
    perfect[keep] = 20.0 * torch.nn.functional.one_hot(y[keep], V).float()
    m = task.metrics(perfect, y)
    n = int(keep.sum())
    assert m == {"accuracy": (float(n), n), "sequence_accuracy": (8.0, 8)}
    assert float(task.loss(perfect, y)) < 1e-6
    wrong = perfect.clone()
    b, t = keep.nonzero()[0].tolist()
    wrong[b, t] = 0.0
    wrong[b, t, 0] = 30.0
    m = task.metrics(wrong, y)
    assert m["accuracy"] == (float(n - 1), n) and m["sequence_accuracy"] == (7.0, 8)
    zeros = torch.zeros(*y.shape, V, requires_grad=True)
    assert math.isclose(float(task.loss(zeros.detach(), y)), math.log(V), rel_tol=1e-6)
    task.loss(zeros, y).backward()
    assert zeros.grad[~keep].abs().sum() == 0  # non-copy positions carry no loss
    bce = get_task({"kind": "copy_paste", "length": [2, 4], "loss": "bce"})
    assert math.isclose(float(bce.loss(zeros.detach(), y)), math.log(2), rel_tol=1e-6)
    mse = get_task({"kind": "copy_paste", "length": [2, 4], "loss": "mse"})
    assert math.isclose(float(mse.loss(zeros.detach(), y)), 1 / V, rel_tol=1e-6)
    assert float(mse.loss(perfect / 20.0, y)) < 1e-12  # raw logits equal to one-hot: zero MSE
    with pytest.raises(PairgraphError, match="num_classes"):
        task.loss(torch.zeros(*y.shape, V + 1), y)
    with pytest.raises(PairgraphError, match="one prediction per input position"):
        task.loss(torch.zeros(y.shape[0], V), y)


def test_token_noise_input():
    task = get_task({"kind": "copy_paste", "size": 100})
    x, _ = task.datasets(0)["train"][:32]
    g = torch.Generator().manual_seed(3)
    noise = task.noise_input(x, g)
    assert noise.shape == x.shape and noise.dtype == x.dtype
    assert torch.equal(noise == 0, x == 0)  # pads kept, and no pad anywhere else
    assert int(noise.min()) >= 0 and int(noise.max()) <= task.vocab_size - 1
    assert not torch.equal(noise, x)
    again = task.noise_input(x, torch.Generator().manual_seed(3))
    assert torch.equal(noise, again)
    assert task.noise_input(x.to("meta")).device.type == "meta"

    parity = get_task({"kind": "parity", "size": 100, "length": [5, 30]})
    px, _ = parity.datasets(0)["train"][:32]
    pn = parity.noise_input(px)
    assert torch.equal(pn == 2, px == 2) and set(pn[px != 2].unique().tolist()) == {0, 1}
    assert not torch.equal(pn, px)


# ---------------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------------


def test_parity_format_and_labels_independent():
    task = get_task({"kind": "parity", "length": [2, 20], "size": 500})
    assert task.model_kwargs() == {"vocab_size": 3, "num_classes": 1, "pad_id": 2, "max_len": 20}
    assert get_task({"kind": "parity", "loss": "ce"}).model_kwargs()["num_classes"] == 2
    ds = task.datasets(0)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [400, 50, 50]
    x, y = next(iter(DataLoader(ds["train"], batch_size=400)))
    assert x.shape == (400, 20) and y.shape == (400,) and x.dtype == y.dtype == torch.int64
    lengths = set()
    for xi, yi in zip(x.tolist(), y.tolist()):
        bits = [b for b in xi if b != 2]
        n = len(bits)
        lengths.add(n)
        assert 2 <= n <= 20 and xi[:n] == bits and xi[n:] == [2] * (20 - n)  # right padding
        assert yi == (1 if sum(bits) % 2 == 0 else 0)  # 1 when the number of ones is even
    assert len(lengths) > 10 and 0.3 < y.float().mean() < 0.7
    assert torch.equal(task.valid_mask(x), x != 2)
    a, b, c = (task.datasets(s)["test"][:] for s in (5, 5, 6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_parity_loss_and_metrics():
    y = torch.tensor([1, 0, 1, 1, 0])
    task = get_task({"kind": "parity"})  # bce, one logit
    good = torch.where(y == 1, 8.0, -8.0)
    assert task.metrics(good, y) == {"accuracy": (5.0, 5)}
    assert task.metrics(good[:, None], y) == {"accuracy": (5.0, 5)}
    assert task.metrics(-good, y) == {"accuracy": (0.0, 5)}
    assert math.isclose(float(task.loss(torch.zeros(5, 1), y)), math.log(2), rel_tol=1e-6)
    assert float(task.loss(good, y)) < 1e-3
    ce = get_task({"kind": "parity", "loss": "ce"})
    logits = torch.nn.functional.one_hot(y, 2).float() * 10
    assert ce.metrics(logits, y) == {"accuracy": (5.0, 5)}
    assert math.isclose(float(ce.loss(torch.zeros(5, 2), y)), math.log(2), rel_tol=1e-6)
    mse = get_task({"kind": "parity", "loss": "mse"})
    assert float(mse.loss(logits / 10, y)) == 0.0
    with pytest.raises(PairgraphError, match="num_classes=1"):
        task.loss(torch.zeros(5, 2), y)
    with pytest.raises(PairgraphError, match="one prediction per sequence"):
        task.loss(torch.zeros(5, 7, 1), y)


# ---------------------------------------------------------------------------------------------
# language modeling
# ---------------------------------------------------------------------------------------------


def test_lm_char_on_tiny_text(tmp_path, monkeypatch):
    text = "".join(f"line {i}: the quick brown fox.\n" for i in range(40))
    (tmp_path / "tiny.txt").write_text(text)
    task = get_task(
        {
            "kind": "language_modeling",
            "source": "tiny.txt",
            "data_dir": str(tmp_path),
            "tokenizer": "char",
            "context": 16,
        }
    )
    vocab = sorted(set(text[: int(0.9 * len(text))]))
    assert task.char_vocab() == vocab
    assert task.model_kwargs() == {"vocab_size": len(vocab), "num_classes": len(vocab), "pad_id": None, "max_len": 16}
    ds = task.datasets(0)
    n = len(text)
    a, b = int(0.9 * n), int(0.95 * n)
    assert len(ds["train"]) == (a - 1) // 16 and len(ds["val"]) == (b - a - 1) // 16
    assert len(ds["test"]) == (n - b - 1) // 16
    x, y = next(iter(DataLoader(ds["train"], batch_size=4)))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64

    def decode(ids: list[int]) -> str:
        return "".join(vocab[i] for i in ids)

    for i in range(4):  # non-overlapping windows, y shifted by one
        assert decode(x[i].tolist()) == text[16 * i : 16 * i + 16]
        assert decode(y[i].tolist()) == text[16 * i + 1 : 16 * i + 17]
    vx, _ = ds["val"][0]
    assert decode(vx.tolist()) == text[a : a + 16]
    assert task.valid_mask(x) is None
    noise = task.noise_input(x)
    assert noise.shape == x.shape and int(noise.max()) < len(vocab) and not torch.equal(noise, x)

    # second build comes from the token cache, without reading the text again
    assert list((tmp_path / "cache" / "lm").glob("tiny-char-*.npz"))
    T._MEMO.clear()
    monkeypatch.setattr(T.LanguageModelingTask, "_read_texts", lambda self, p: pytest.fail("cache not used"))
    again = get_task(
        {
            "kind": "language_modeling",
            "source": str(tmp_path / "tiny.txt"),
            "tokenizer": "char",
            "context": 16,
            "max_tokens": 40,
        }
    )
    ds2 = again.datasets(0)
    assert torch.equal(ds2["train"][0][0], x[0]) and len(ds2["train"]) == 2 and len(ds2["test"]) == 2


def test_lm_char_unseen_characters_get_an_unknown_id(tmp_path):
    (tmp_path / "t.txt").write_text("ab" * 95 + "Z" * 10)  # 'Z' only in val/test
    task = get_task({"kind": "language_modeling", "source": str(tmp_path / "t.txt"), "tokenizer": "char", "context": 4})
    assert task.char_vocab() == ["a", "b"] and task.vocab_size == 3
    assert set(task.datasets(0)["test"][0][0].tolist()) == {2}


def test_lm_metrics_and_perplexity():
    task = get_task({"kind": "language_modeling", "tokenizer": "gpt2"})
    V = 50257
    y = torch.randint(0, V, (2, 5))
    logits = torch.zeros(2, 5, V)
    m = task.metrics(logits, y)
    assert m["loss"][1] == 10 and math.isclose(m["loss"][0], 10 * math.log(V), rel_tol=1e-5)
    agg = {k: s / c for k, (s, c) in m.items()}
    d = task.derived_metrics(agg)
    assert math.isclose(d["perplexity"], V, rel_tol=1e-4) and d["loss"] == agg["loss"]
    assert task.primary_metric == "perplexity" and task.higher_is_better is False
    assert math.isclose(float(task.loss(logits, y)), math.log(V), rel_tol=1e-5)
    perfect = torch.nn.functional.one_hot(y, V).float() * 50
    assert task.metrics(perfect, y)["accuracy"] == (10.0, 10)
    assert get_task("parity").derived_metrics({"accuracy": 0.5}) == {"accuracy": 0.5}


def test_lm_missing_file_names_path(tmp_path):
    task = get_task({"kind": "language_modeling", "data_dir": str(tmp_path / "nowhere"), "tokenizer": "char"})
    with pytest.raises(PairgraphError, match=str(tmp_path / "nowhere" / "tinyshakespeare.txt")):
        task.datasets(0)


def test_lm_too_short_split_errors(tmp_path):
    (tmp_path / "s.txt").write_text("abcdefghij" * 3)
    task = get_task(
        {"kind": "language_modeling", "source": str(tmp_path / "s.txt"), "tokenizer": "char", "context": 50}
    )
    with pytest.raises(PairgraphError, match="context"):
        task.datasets(0)


def test_lm_hf_source_uses_dataset_splits(monkeypatch):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["hello there\n", "general kenobi\n"] * 20}),
            "validation": datasets.Dataset.from_dict({"text": ["hello kenobi"] * 5}),
            "test": datasets.Dataset.from_dict({"text": ["there general"] * 5}),
        }
    )
    monkeypatch.setattr(hf, "load", lambda source: dd)
    task = get_task({"kind": "language_modeling", "source": "hf:fake/thing:cfg", "tokenizer": "char", "context": 6})
    ds = task.datasets(0)
    vocab = task.char_vocab()
    val_text = "hello kenobi\n" * 5
    assert len(ds["val"]) == (len(val_text) - 1) // 6
    assert "".join(vocab[i] for i in ds["val"][0][0].tolist()) == val_text[:6]


def test_lm_hf_source_gpt2(monkeypatch):
    import datasets

    root = need_shared("gpt2/encoder.json", "gpt2/vocab.bpe")
    rows = ["Hello world\n", "", "Hello world\n"] * 30
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})})
    monkeypatch.setattr(hf, "load", lambda source: dd)
    task = get_task({"kind": "language_modeling", "source": "hf:fake", "data_dir": str(root), "context": 4})
    s = task._streams()
    assert sum(len(s[k]) for k in ("train", "val", "test")) == 60 * 3  # "Hello", " world", "\n"; no val/test: carved
    assert len(s["val"]) > 0 and len(s["test"]) > 0
    assert s["train"][:3].tolist() == [15496, 995, 198]


def test_gpt2_offline_encoding():
    root = need_shared("gpt2/encoder.json", "gpt2/vocab.bpe")
    enc = T.gpt2_encoding(str(root))
    assert enc.encode("Hello world<|endoftext|>", allowed_special={"<|endoftext|>"}) == [15496, 995, 50256]
    assert enc.n_vocab == 50257


def test_tinyshakespeare_token_counts():
    need_shared("tinyshakespeare.txt", "gpt2/encoder.json", "gpt2/vocab.bpe")
    task = get_task({"kind": "language_modeling"})  # defaults: tinyshakespeare.txt, gpt2, context 50
    s = task._streams()
    sizes = [len(s[k]) for k in ("train", "val", "test")]
    assert sum(sizes) == 338_025
    assert sizes[0] == int(0.9 * 338_025)
    ds = task.datasets(0)
    assert len(ds["train"]) == (sizes[0] - 1) // 50
    x, y = ds["train"][0]
    assert T.gpt2_encoding().decode(x.tolist()).startswith("First Citizen:")
    assert torch.equal(x[1:], y[:-1])
    char = get_task({"kind": "language_modeling", "tokenizer": "char"})
    assert char.model_kwargs()["vocab_size"] == 65


# ---------------------------------------------------------------------------------------------
# image classification
# ---------------------------------------------------------------------------------------------

COLORS = {"cat": (30, 40, 220), "airplane": (220, 30, 30), "bird": (30, 200, 40)}  # sorted: airplane, bird, cat


def _fake_cifar(folder: Path, n_train: int = 4, n_test: int = 2) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar10-jpeg.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        for split, n in (("test", n_test), ("train", n_train)):
            for cls, color in COLORS.items():  # deliberately unsorted
                for i in reversed(range(n)):
                    buf = io.BytesIO()
                    Image.new("RGB", (32, 32), color).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{cls}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def test_cifar10_fake_archive_labels_decoding_cache(tmp_path, monkeypatch):
    _fake_cifar(tmp_path / "data")
    spec = {"kind": "image_classification", "data_dir": str(tmp_path / "data"), "val_size": 3}
    task = get_task(spec)
    assert task.model_kwargs() == {"num_classes": 10, "in_channels": 3, "image_size": (32, 32)}
    ds = task.datasets(0)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [9, 3, 6]
    mean = torch.tensor(T.CIFAR10_MEAN)[:, None, None]
    std = torch.tensor(T.CIFAR10_STD)[:, None, None]
    for split in ("train", "val", "test"):
        for x, y in ds[split]:
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
            raw = (x * std + mean) * 255  # undo normalization
            expected = torch.tensor(COLORS[["airplane", "bird", "cat"][int(y)]], dtype=torch.float32)
            assert (raw.mean((1, 2)) - expected).abs().max() < 4, (split, int(y))
    ys = sorted(int(y) for _, y in ds["test"])
    assert ys == [0, 0, 1, 1, 2, 2]
    assert sorted(int(y) for d in (ds["train"], ds["val"]) for _, y in d) == [0] * 4 + [1] * 4 + [2] * 4
    x, y = next(iter(DataLoader(ds["train"], batch_size=5)))
    assert x.shape == (5, 3, 32, 32) and y.shape == (5,)

    # decoded once: the .npz cache serves the next load without touching the archive
    assert len(list((tmp_path / "cache" / "cifar10").glob("*.npz"))) == 1
    T._MEMO.clear()
    monkeypatch.setattr(image_sources, "decode_cifar_archive", lambda p: pytest.fail("archive decoded twice"))
    ds2 = get_task({**spec, "train_size": 2, "test_size": 4, "augment": True, "normalize": False}).datasets(0)
    assert [len(ds2[s]) for s in ("train", "val", "test")] == [2, 3, 4]
    x, _ = ds2["train"][0]
    assert x.shape == (3, 32, 32) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # fixed subsets: val is the same whatever the seed
    v1 = [int(y) for _, y in get_task(spec).datasets(0)["val"]]
    v2 = [int(y) for _, y in get_task(spec).datasets(1)["val"]]
    assert v1 == v2


def test_cifar10_missing_archive_names_path(tmp_path):
    task = get_task({"kind": "image_classification", "data_dir": str(tmp_path / "empty")})
    with pytest.raises(PairgraphError, match="cifar10-jpeg.tar.xz") as e:
        task.datasets(0)
    assert str(tmp_path / "empty") in str(e.value) and "fix:" in str(e.value)


def test_image_sizes_too_large_error(tmp_path):
    _fake_cifar(tmp_path / "data", n_train=2, n_test=1)
    task = get_task(
        {"kind": "image_classification", "data_dir": str(tmp_path / "data"), "val_size": 2, "train_size": 100}
    )
    with pytest.raises(PairgraphError, match="train_size"):
        task.datasets(0)


def test_image_loss_metrics_noise():
    task = get_task({"kind": "image_classification"})
    y = torch.tensor([3, 0, 7, 9])
    logits = torch.zeros(4, 10)
    logits[0, 3] = 5  # top1 right
    logits[1, [5, 0]] = torch.tensor([5.0, 4.0])  # true class second: top5 only
    logits[2, [1, 2, 3, 4, 5, 7]] = torch.tensor([9.0, 8, 7, 6, 5, 1])  # true class 6th: miss
    logits[3, 9] = 1
    assert task.metrics(logits, y) == {"top1": (2.0, 4), "top5": (3.0, 4)}
    assert task.primary_metric == "top1"
    assert math.isclose(float(task.loss(torch.zeros(4, 10), y)), math.log(10), rel_tol=1e-6)
    mse = get_task({"kind": "image_classification", "loss": "mse"})
    assert math.isclose(float(mse.loss(torch.zeros(4, 10), y)), 0.1, rel_tol=1e-6)
    bce = get_task({"kind": "image_classification", "loss": "bce"})
    assert math.isclose(float(bce.loss(torch.zeros(4, 10), y)), math.log(2), rel_tol=1e-6)
    x = torch.rand(64, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    noise = task.noise_input(x, g)
    assert noise.shape == x.shape and noise.dtype == torch.float32 and not torch.equal(noise, x)
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05
    assert task.valid_mask(x) is None
    small = get_task({"kind": "image_classification"})
    m = small.metrics(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0]))  # 3 classes: no top5, it would always hit
    assert m == {"top1": (0.0, 1)}
    one = small.metrics(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 0, 0]))  # a single logit: > 0 is 1
    assert one == {"top1": (2.0, 3)}


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for split, n in (("train", 5), ("test", 2)):
        for c, color in (("dog", (250, 250, 250)), ("ant", (0, 0, 0))):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (6, 8), color).save(root / split / c / f"{i}.png")
    task = get_task({"kind": "image_classification", "dataset": f"folder:{root}", "val_size": 2})
    assert task.model_kwargs() == {"num_classes": 2, "in_channels": 3, "image_size": (8, 6)}
    ds = task.datasets(0)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [8, 2, 4]
    x, y = ds["test"][0]
    assert x.shape == (3, 8, 6)
    for x, y in ds["test"]:  # ant (black) = 0, dog (white) = 1; normalized with the training stats
        assert (float(x.mean()) < 0) == (int(y) == 0)
    resized = get_task(
        {"kind": "image_classification", "dataset": f"folder:{root}", "val_size": 2, "image_size": [4, 4]}
    )
    assert resized.model_kwargs()["image_size"] == (4, 4) and resized.datasets(0)["train"][0][0].shape == (3, 4, 4)
    with pytest.raises(PairgraphError, match="train"):
        get_task({"kind": "image_classification", "dataset": f"folder:{tmp_path / 'nope'}"}).model_kwargs()


def test_grayscale_folders_stay_one_channel_and_num_classes_is_checked(tmp_path):
    """A grayscale folder was once silently copied to 3 channels."""
    from PIL import Image

    root = tmp_path / "gray"
    for split, n in (("train", 4), ("test", 2)):
        for c, shade in (("a", 10), ("b", 240)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (5, 7), shade).save(root / split / c / f"{i}.png")
    task = get_task({"kind": "image_classification", "dataset": f"folder:{root}", "val_size": 2})
    assert task.model_kwargs() == {"num_classes": 2, "in_channels": 1, "image_size": (7, 5)}
    assert task.datasets(0)["train"][0][0].shape == (1, 7, 5)
    sized = get_task({"kind": "image_classification", "dataset": f"folder:{root}", "num_classes": 2, "image_size": [7, 5]})
    assert sized.model_kwargs()["in_channels"] == 1
    with pytest.raises(PairgraphError, match="task.num_classes is 3 but folder:.* has 2 classes"):
        get_task({"kind": "image_classification", "dataset": f"folder:{root}", "num_classes": 3}).model_kwargs()


def test_image_size_resizes_cifar10_instead_of_being_ignored(tmp_path, monkeypatch):
    """task.image_size was once ignored for cifar10 (a ViT-B/16 guide ran on 2×2 patches of 32 px images)."""
    _fake_cifar(tmp_path)
    task = get_task({"kind": "image_classification", "data_dir": str(tmp_path), "image_size": [64, 48], "val_size": 1})
    assert task.model_kwargs() == {"num_classes": 10, "in_channels": 3, "image_size": (64, 48)}
    assert task.example_input(2, "cpu").shape == (2, 3, 64, 48)
    ds = task.datasets(0)
    assert all(ds[s][0][0].shape == (3, 64, 48) for s in ("train", "val", "test"))
    native = get_task({"kind": "image_classification", "data_dir": str(tmp_path), "val_size": 1}).datasets(0)
    assert native["test"][0][0].shape == (3, 32, 32)


def test_image_hf_source(monkeypatch):
    import datasets
    from PIL import Image

    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})

    def split(n):
        return datasets.Dataset.from_dict(
            {"img": [Image.new("L", (5, 5), 255 * (i % 2)) for i in range(n)], "label": [i % 2 for i in range(n)]},
            features=feats,
        )

    monkeypatch.setattr(hf, "load", lambda source: datasets.DatasetDict({"train": split(10), "test": split(4)}))
    task = get_task({"kind": "image_classification", "dataset": "hf:fake/mnistish", "val_size": 2})
    assert task.model_kwargs() == {"num_classes": 2, "in_channels": 1, "image_size": (5, 5)}
    ds = task.datasets(0)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [8, 2, 4]
    for x, y in ds["test"]:
        assert x.shape == (1, 5, 5) and (float(x.mean()) > 0) == (int(y) == 1)


def test_mnist1d_shapes():
    pytest.importorskip("mnist1d", reason="mnist1d not installed (pip install mnist1d)")
    task = get_task({"kind": "image_classification", "dataset": "mnist1d"})
    assert task.model_kwargs() == {"num_classes": 10, "in_channels": 1, "image_size": (1, 40)}
    ds = task.datasets(0)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [3600, 400, 1000]
    x, y = next(iter(DataLoader(ds["train"], batch_size=256)))
    assert x.shape == (256, 1, 1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= int(y.min()) and int(y.max()) <= 9
    assert abs(float(x.mean())) < 0.2 and abs(float(x.std()) - 1) < 0.2
    aug = get_task({"kind": "image_classification", "dataset": "mnist1d", "augment": True, "train_size": 10})
    assert aug.datasets(0)["train"][0][0].shape == (1, 1, 40)


@pytest.mark.slow
def test_cifar10_real_archive_decode_and_cache(monkeypatch):
    root = need_shared("cifar10-jpeg.tar.xz")
    task = get_task({"kind": "image_classification", "data_dir": str(root)})
    ds = task.datasets(0)
    assert [len(ds[s]) for s in ("train", "val", "test")] == [45_000, 5_000, 10_000]
    arrays = task._arrays()
    assert arrays["train_x"].shape == (50_000, 3, 32, 32) and arrays["train_x"].dtype == np.uint8
    assert np.bincount(arrays["train_y"]).tolist() == [5000] * 10
    assert np.bincount(arrays["test_y"]).tolist() == [1000] * 10
    assert list(arrays["classes"])[:2] == ["airplane", "automobile"]
    means = arrays["train_x"].reshape(50_000, 3, -1).mean(axis=(0, 2)) / 255
    assert np.allclose(means, [0.4913, 0.4821, 0.4465], atol=2e-3)  # README's JPEG statistics
    T._MEMO.clear()  # a second load reads the decoded cache: the archive is not decoded again

    def no_decode(*args, **kwargs):
        raise AssertionError("the CIFAR archive was decoded again instead of read from the cache")

    monkeypatch.setattr(image_sources, "decode_cifar_archive", no_decode)
    again = get_task({"kind": "image_classification", "data_dir": str(root)}).datasets(0)
    assert [len(again[s]) for s in ("train", "val", "test")] == [45_000, 5_000, 10_000]


@pytest.mark.parametrize("kind", ["copy_paste", "parity"])
def test_a_reversed_length_range_is_a_one_line_spec_error(kind):
    from pairgraph.errors import PairgraphError

    with pytest.raises(PairgraphError, match=r"task.length: .*need 1 <= min <= max, got \[5, 2\]"):
        get_task({"kind": kind, "length": [5, 2]})


def test_a_broken_image_in_a_folder_is_one_line_naming_it(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(root / split / c / f"{i}.png")
    (root / "train" / "b" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(PairgraphError, match=r"cannot read image .*9.png: .* — fix: remove or replace that file"):
        get_task({"kind": "image_classification", "dataset": f"folder:{root}", "val_size": 1}).datasets(0)
