"""``language_modeling``: next-token prediction on a local text file or a Hugging Face text dataset,
with the GPT-2 BPE (built offline from ``<data>/gpt2/``) or a character vocabulary.

Token streams of the three splits are computed once and cached as ``.npz`` under
``cache_dir()/lm`` (see :mod:`pairgraph.tasks.cache`).
"""

from __future__ import annotations

import codecs
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor
from torch.utils.data import Dataset

from pairgraph.config.names import TASKS
from pairgraph.errors import PairgraphError, one_line
from pairgraph.paths import cache_dir, data_root
from pairgraph.tasks import hf
from pairgraph.tasks.base import DATA_HINT, LOSS_DESCRIPTION, LossKind, OptionsBase, class_loss
from pairgraph.tasks.cache import CACHE_VERSION, MEMO, cached_arrays, digest, file_signature
from pairgraph.tasks.tokens import TokenTask

GPT2_VOCAB_SIZE = 50257
_HF_SPLIT_ALIASES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}


# ----------------------------------------------------------------------------------------------
# GPT-2 encoding
# ----------------------------------------------------------------------------------------------


def _gpt2_pat_str() -> str:
    try:
        from tiktoken_ext.openai_public import r50k_pat_str

        return r50k_pat_str
    except ImportError:  # older tiktoken
        return r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_encoding(data_dir: str | os.PathLike[str] | None = None) -> Any:
    """The GPT-2 BPE as a ``tiktoken.Encoding``, built offline from ``<data_root>/gpt2/``.

    Uses ``encoder.json`` and ``vocab.bpe`` there when both exist; otherwise falls back to
    ``tiktoken.get_encoding("gpt2")``, which downloads them.
    """
    import tiktoken
    import tiktoken.load

    folder = data_root(data_dir) / "gpt2"
    enc_json, vocab_bpe = folder / "encoder.json", folder / "vocab.bpe"
    key = f"gpt2:{folder.resolve() if folder.exists() else folder}"
    if key in MEMO:
        return MEMO[key]
    if enc_json.is_file() and vocab_bpe.is_file():
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(enc_json)
        )
        enc = tiktoken.Encoding(
            name="gpt2", pat_str=_gpt2_pat_str(), mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
        )
    else:
        try:
            enc = tiktoken.get_encoding("gpt2")
        except (OSError, ValueError, ImportError):  # offline: requests' errors are OSErrors
            raise PairgraphError(
                f"GPT-2 BPE files not found at {enc_json} and {vocab_bpe}, and tiktoken could not download them",
                "set task.data_dir or PAIRGRAPH_DATA to a folder holding gpt2/encoder.json and gpt2/vocab.bpe, "
                "or use tokenizer: char",
            ) from None
    MEMO[key] = enc
    return enc


# ----------------------------------------------------------------------------------------------
# reading and tokenising text
# ----------------------------------------------------------------------------------------------


def _check_utf8(path: Path) -> None:
    """A one-line error naming the byte where a text file stops being UTF-8 (read in 1 MiB chunks)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    raise PairgraphError(f"{path} is not UTF-8 text (byte {offset + e.start} is {chunk[e.start]:#04x})",
                                         "convert it, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8") from None
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise PairgraphError(f"{path} is not UTF-8 text (it ends inside a character)", "save it as UTF-8") from None
    except OSError as e:
        raise PairgraphError(f"cannot read text file {path}: {e.strerror or one_line(e)}",
                             "check the file's permissions") from None


def _read_local_text(path: Path) -> str:
    """The whole text file as one document (read offline by ``datasets``' text loader)."""
    _check_utf8(path)
    try:
        with hf.quiet(offline=True) as datasets:
            ds = datasets.load_dataset("text", data_files={"train": str(path)}, sample_by="document",
                                       cache_dir=str(cache_dir() / "hf"), split="train")
    except PairgraphError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets wraps a failed read in several exception types
        raise PairgraphError(f"cannot read text file {path}: {one_line(e)}", "check that it is a plain UTF-8 text file") from None
    return "".join(ds["text"])


def _text_column(d: Any) -> str | None:
    """``text`` when the split has it, else its first string column, else None."""
    if "text" in d.column_names:
        return "text"
    return next((c for c, f in d.features.items() if getattr(f, "dtype", None) in ("string", "large_string")), None)


def _hf_split_texts(source: str) -> dict[str, list[str]]:
    """Our split name → non-empty documents (each ending in a newline) of the Hugging Face ``source``."""
    dd = hf.load(source)
    out: dict[str, list[str]] = {}
    for ours, theirs in _HF_SPLIT_ALIASES.items():
        split = next((s for s in theirs if s in dd), None)
        if split is None:
            continue
        col = _text_column(dd[split])
        if col is None:
            raise PairgraphError(f"{source} split {split!r} has no text column", "use a text dataset")
        out[ours] = [t if t.endswith("\n") else t + "\n" for t in dd[split][col] if t]
    if "train" not in out:
        raise PairgraphError(f"{source} has no 'train' split (has {list(dd)})", "use a dataset with a train split")
    return out


def _cuts_90_5_5(n: int) -> tuple[int, int]:
    """Ends of the train and val parts of a stream of ``n`` items split 90% / 5% / 5% by position."""
    return int(0.9 * n), int(0.95 * n)


def _encode_char(parts: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Char ids (sorted characters of train; one extra unknown id when val/test hold others) + vocab."""
    train_text = "".join(parts["train"])
    chars = sorted(set(train_text))
    unseen = {c for split, docs in parts.items() if split != "train" for d in docs for c in d} - set(chars)
    lut = {c: i for i, c in enumerate(chars)}
    unk = len(chars)  # an extra id only when val/test hold characters unseen in training
    vocab_size = len(chars) + (1 if unseen else 0)
    dtype = np.uint16 if vocab_size < 2**16 else np.int32
    out: dict[str, np.ndarray] = {}
    for split, docs in parts.items():
        text = "".join(docs)
        out[split] = np.fromiter((lut.get(c, unk) for c in text), dtype=dtype, count=len(text))
    out["vocab"] = np.array([ord(c) for c in chars], dtype=np.int32)
    out["vocab_size"] = np.array([vocab_size])
    return out


def _encode_gpt2(texts: dict[str, list[str]], enc: Any) -> dict[str, np.ndarray]:
    """Each split's documents as one concatenated uint16 GPT-2 token stream."""
    out: dict[str, np.ndarray] = {}
    for split, docs in texts.items():
        chunks = [np.zeros(0, dtype=np.uint16)]
        for i in range(0, len(docs), 10_000):  # bounded memory for large corpora
            ids = enc.encode_ordinary_batch(docs[i : i + 10_000])
            chunks.extend(np.asarray(d, dtype=np.uint16) for d in ids if d)
        out[split] = np.concatenate(chunks)
    out["vocab_size"] = np.array([GPT2_VOCAB_SIZE])
    return out


def _carve_missing_splits(out: dict[str, np.ndarray]) -> None:
    """Carve missing val/test splits from the end of train (5% each), in place."""
    for split in ("test", "val"):
        if split not in out:
            train = out["train"]
            cut = int(0.95 * len(train))
            out[split], out["train"] = train[cut:], train[:cut]


# ----------------------------------------------------------------------------------------------
# the task
# ----------------------------------------------------------------------------------------------


class LanguageModelingOptions(OptionsBase):
    """Next-token language modeling (paper §4.1 uses WikiText-103, GPT-2 BPE, context 50)."""

    kind: Literal["language_modeling"] = "language_modeling"
    source: str = Field(
        default="tinyshakespeare.txt",
        description=(
            "Text source: a local text file (relative paths are looked up under the data folder, then "
            "the current directory; split 90/5/5 into train/val/test), or 'hf:<name>[:<config>]', e.g. "
            "'hf:wikitext:wikitext-103-raw-v1' (Hugging Face datasets, needs internet; own splits)."
        ),
    )
    tokenizer: Literal["gpt2", "char"] = Field(
        default="gpt2",
        description="'gpt2' BPE via tiktoken (offline from <data>/gpt2/), or 'char' (sorted characters of the training text).",
    )
    context: int = Field(
        default=50, ge=1, description="Context length T: x = t[i:i+T], y = t[i+1:i+T+1], non-overlapping."
    )
    data_dir: str | None = Field(default=None, description="Data folder; default $PAIRGRAPH_DATA, else ../shared/data.")
    max_tokens: int | None = Field(
        default=None,
        ge=2,
        description="Keep at most this many tokens of each split (a prefix), for CPU runs; None keeps all.",
    )
    loss: LossKind = Field(default="ce", description=LOSS_DESCRIPTION)


class _LMDataset(Dataset):
    """Non-overlapping windows of a token stream: item i is (t[iT:iT+T], t[iT+1:iT+T+1])."""

    def __init__(self, tokens: np.ndarray, context: int):
        self.tokens = np.ascontiguousarray(tokens)  # native (uint16) dtype; int64 per item
        self.context = context
        self.n = max(0, (len(tokens) - 1) // context)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        i %= self.n
        t = torch.from_numpy(self.tokens[i * self.context : i * self.context + self.context + 1].astype(np.int64))
        return t[:-1], t[1:]


@TASKS.register("language_modeling")
class LanguageModelingTask(TokenTask):
    """Language modeling on a local text file or a Hugging Face text dataset."""

    name: ClassVar[str] = "language_modeling"
    Options: ClassVar[type[BaseModel]] = LanguageModelingOptions
    primary_metric: ClassVar[str] = "perplexity"
    higher_is_better: ClassVar[bool] = False
    pad_id = None

    @property
    def vocab_size(self) -> int:
        if self.options.tokenizer == "gpt2":
            return GPT2_VOCAB_SIZE
        return int(self._streams()["vocab_size"][0])

    @property
    def max_len(self) -> int:
        return self.options.context

    def model_kwargs(self) -> dict[str, Any]:
        v = self.vocab_size
        return {"vocab_size": v, "num_classes": v, "pad_id": None, "max_len": self.options.context}

    def example_input(self, batch_size: int, device: str | torch.device = "meta") -> Tensor:
        return torch.zeros((batch_size, self.options.context), dtype=torch.long, device=device)

    # -- data -----------------------------------------------------------------------------------
    def _local_path(self) -> Path:
        src = Path(self.options.source).expanduser()
        root = data_root(self.options.data_dir)
        if src.is_absolute():
            path = src
        elif (root / src).is_file():
            path = root / src
        elif src.is_file():
            path = src
        else:
            path = root / src
        if not path.is_file():
            raise PairgraphError(
                f"text file not found at {path}",
                f"{DATA_HINT}, or set task.source to an existing text file or 'hf:<name>[:<config>]'",
            )
        return path

    def char_vocab(self) -> list[str]:
        """Characters of the char vocabulary in id order (char tokenizer only)."""
        s = self._streams()
        return [chr(c) for c in s["vocab"].tolist()]

    def _streams(self) -> dict[str, np.ndarray]:
        """Token streams of the three splits (+ char vocabulary), cached as .npz under cache_dir()."""
        memo = getattr(self, "_streams_memo", None)
        if memo is not None:
            return memo
        path = None if self.options.source.startswith("hf:") else self._local_path()
        arrays = cached_arrays(self._stream_cache(path), lambda: self._tokenize(self._read_texts(path)))
        self._streams_memo = arrays
        return arrays

    def _stream_cache(self, path: Path | None) -> Path:
        """The .npz of the token streams of the local file ``path`` (None: the ``hf:`` source)."""
        tok = self.options.tokenizer
        if path is None:
            ident = f"hf|{self.options.source}"
            stem = hf.parse_source(self.options.source)[0].replace("/", "_")
        else:
            ident = f"file|{file_signature(path)}"
            stem = path.stem
        return cache_dir() / "lm" / f"{stem}-{tok}-{digest(ident, tok, CACHE_VERSION)}.npz"

    def _read_texts(self, path: Path | None) -> dict[str, list[str]]:
        """Split name → list of documents. Local files are one document (split later by tokens)."""
        if path is not None:
            return {"all": [_read_local_text(path)]}
        return _hf_split_texts(self.options.source)

    def _tokenize(self, texts: dict[str, list[str]]) -> dict[str, np.ndarray]:
        """Token streams of ``_read_texts``' documents: train/val/test, vocab_size (+ vocab for char)."""
        if "all" in texts:  # one local document: split 90/5/5 by position in the token stream
            return self._tokenize_document(texts["all"][0])
        if self.options.tokenizer == "char":
            out = _encode_char(texts)
        else:
            out = _encode_gpt2(texts, gpt2_encoding(self.options.data_dir))
        _carve_missing_splits(out)
        return out

    def _tokenize_document(self, text: str) -> dict[str, np.ndarray]:
        if self.options.tokenizer == "char":
            a, b = _cuts_90_5_5(len(text))
            return _encode_char({"train": [text[:a]], "val": [text[a:b]], "test": [text[b:]]})
        stream = np.asarray(gpt2_encoding(self.options.data_dir).encode_ordinary(text), dtype=np.uint16)
        a, b = _cuts_90_5_5(len(stream))
        return {"train": stream[:a], "val": stream[a:b], "test": stream[b:], "vocab_size": np.array([GPT2_VOCAB_SIZE])}

    def datasets(self, seed: int) -> dict[str, Dataset]:
        """Non-overlapping windows of each split's token stream (``seed`` is unused: data is fixed)."""
        s = self._streams()
        out: dict[str, Dataset] = {}
        for split in ("train", "val", "test"):
            stream = s[split]
            if self.options.max_tokens is not None:
                stream = stream[: self.options.max_tokens]
            if len(stream) < self.options.context + 1:
                raise PairgraphError(
                    f"the {split} split of {self.options.source} has {len(stream)} tokens, fewer than context+1 = "
                    f"{self.options.context + 1}",
                    "use a longer text, a larger task.max_tokens or a smaller task.context",
                )
            out[split] = _LMDataset(stream, self.options.context)
        return out

    # -- loss and metrics -----------------------------------------------------------------------
    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        self._check_positions(logits, y)
        flat = logits.reshape(-1, logits.shape[-1])
        self._check_outputs(flat, self.vocab_size)
        return class_loss(flat, y.reshape(-1).long(), self.options.loss)

    @torch.no_grad()
    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        """``loss``: summed token cross-entropy (whatever the training loss); ``accuracy``: next-token."""
        flat, target = logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1).long()
        ce = F.cross_entropy(flat, target, reduction="sum")
        right = flat.argmax(-1) == target
        return {"loss": (float(ce), int(target.numel())), "accuracy": (float(right.sum()), int(target.numel()))}

    def derived_metrics(self, agg: dict[str, float]) -> dict[str, float]:
        out = dict(agg)
        if "loss" in agg:
            out["perplexity"] = math.exp(agg["loss"]) if agg["loss"] < 700 else math.inf
        return out
